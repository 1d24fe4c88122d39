"""The verifier and the scheduler under probation rules, with in-process workers that sign
real attestations (the fakes of test_verification and test_scheduler): held answers,
refereed answers, faults that restart probation, trusted validators first, suspension
while a dispute is pending, one held job at a time."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import ResourceExhausted, Unavailable
from hyperinfer.gateway.ledger import Ledger, LedgerConfig
from hyperinfer.gateway.scheduler import Scheduler
from hyperinfer.gateway.store import open_store
from hyperinfer.gateway.verification import ResultRejected, Verifier, VerifyRequest
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.probation import Probation
from hyperinfer.verify.receipt import receipt_to_json, verify_receipt
from hyperinfer.verify.sampling import SamplingPolicy
from hyperinfer.verify.signing import public_bytes

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode does not put test dirs on sys.path
from test_scheduler import MANIFEST as SMANIFEST  # noqa: E402
from test_scheduler import X as SX  # noqa: E402
from test_scheduler import FakeClient, FakeRegistry, make_nodes  # noqa: E402
from test_verification import MANIFEST, FakeWorker, InProcessClient, Tamperer, referee  # noqa: E402


class Pool:
    def __init__(self, workers, k=2, quarantine_after=3, rate=0.0, referee_fn=referee):
        self.workers = workers
        self.quarantined: list[str] = []
        self.ledger = Ledger(open_store(":memory:"), LedgerConfig(probation_jobs=k, quarantine_after=quarantine_after),
                             on_quarantine=self.quarantined.append)
        self.probation = Probation(k)
        self.key = Ed25519PrivateKey.generate()
        self.verifier = Verifier(self.ledger, SamplingPolicy(default_rate=rate), referee_fn,
                                 InProcessClient(workers), self.key, background_workers=1,
                                 probation=self.probation)
        self.rng = np.random.default_rng(3)
        self.n = 0

    def request(self, primary, mode="auto", candidates=None):
        x = {"x": self.rng.standard_normal((4, 8)).astype(np.float32)}
        self.n += 1
        rid = f"req-{self.n}"
        others = [w.ref for w in (self.workers if candidates is None else candidates) if w is not primary]
        return self.verifier.verify(VerifyRequest(MANIFEST, x, primary.ref, rid, primary.infer(rid, x), others, mode))

    def audit(self, r):
        checks = verify_receipt(receipt_to_json(r), public_bytes(self.key))
        assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.fixture
def pools():
    made = []
    yield lambda *a, **kw: made.append(Pool(*a, **kw)) or made[-1]
    for p in made:
        p.verifier.close()


def test_new_node_held_until_agreed_then_sampled_normally(pools):
    a, b = FakeWorker("op1"), FakeWorker("op2")
    p = pools([a, b], k=2, rate=0.0)
    held = [p.request(a, "auto") for _ in range(2)]
    # auto mode, rate 0: still checked before the answer is returned, and the receipt says so
    assert [(r.status, r.probation) for r in held] == [(rc.AGREED, True)] * 2
    for r in held:
        p.audit(r)
    assert p.probation.trusted(a.node_id)
    r = p.request(a, "auto")
    assert (r.status, r.probation) == (rc.UNCHECKED, False)
    assert '"probation"' not in receipt_to_json(r)


def test_no_validator_referee_checks_it(pools):
    a = FakeWorker("op1")
    p = pools([a, FakeWorker("op1")], k=3)  # the only other node is of the same operator
    r = p.request(a)
    assert (r.status, r.probation) == (rc.REFEREED, True) and "ONNX Runtime referee" in r.detail
    assert r.validator_node_id is None
    p.audit(r)
    assert p.probation.streak(a.node_id) == 1


def test_cheater_on_probation_never_served_and_quarantined_at_threshold(pools):
    evil, h1, h2 = Tamperer("evil"), FakeWorker("op2"), FakeWorker("op3")
    p = pools([evil, h1, h2], k=2, quarantine_after=3)
    for _ in range(3):
        with pytest.raises(ResultRejected) as e:
            p.request(evil, "auto")
        assert e.value.receipt.status == rc.DISPUTED_LOST and e.value.receipt.probation
    assert p.quarantined == [evil.node_id]
    d = p.ledger.details(evil.node_id)
    assert d["faults"] == 3 and d["quarantined"]
    for h in (h1, h2):  # the honest validators came out right: nothing lost
        hd = p.ledger.details(h.node_id)
        assert hd["faults"] == 0 and hd["stake"] == 100.0
    assert not p.probation.suspended(evil.node_id)  # resumed after each verdict


def test_cheater_with_only_the_referee_is_rejected(pools):
    evil = Tamperer("evil")
    p = pools([evil], k=2)
    with pytest.raises(ResultRejected) as e:
        p.request(evil)
    assert e.value.receipt.status == rc.DISPUTED_LOST and "referee" in e.value.receipt.detail
    assert p.ledger.faults(evil.node_id)[0]["kind"] == "referee"


def test_referee_failure_means_not_served_and_nobody_slashed(pools):
    a = FakeWorker("op1")

    def broken(*args):
        raise RuntimeError("no session")

    p = pools([a], k=2, referee_fn=broken)
    with pytest.raises(ResultRejected):
        p.request(a)
    assert p.ledger.details(a.node_id)["faults"] == 0


def test_trusted_node_that_cheats_goes_back_on_probation(pools):
    class Turncoat(FakeWorker):
        cheat = False

        def compute(self, inputs):
            out = super().compute(inputs)
            if self.cheat:
                out["probs"] = out["probs"] + np.float32(0.05)
            return out

    t, h = Turncoat("op1"), FakeWorker("op2")
    p = pools([t, h], k=2, rate=1.0)
    for _ in range(2):
        assert p.request(t, "sync").status == rc.AGREED
    assert p.probation.trusted(t.node_id)
    t.cheat = True
    with pytest.raises(ResultRejected):  # sampled in sync mode: found out, not served
        p.request(t, "sync")
    assert p.probation.on_probation(t.node_id)
    with pytest.raises(ResultRejected) as e:  # now held even in auto mode
        p.request(t, "auto")
    assert e.value.receipt.probation


def test_validators_trusted_first(pools):
    new, trusted, primary = FakeWorker("op2"), FakeWorker("op3"), FakeWorker("op1")
    p = pools([primary, new, trusted], k=1)
    p.probation.passed(trusted.node_id)
    for _ in range(4):
        p.probation.fault(primary.node_id)
        r = p.request(primary)
        assert r.validator_node_id == trusted.node_id
    assert not new.calls


def test_dispute_suspends_both_nodes_until_verdict(pools):
    seen = []
    evil, h = Tamperer("evil"), FakeWorker("op2")

    def watching_referee(name, version, inputs):
        seen.append((p.probation.blocked(evil.node_id), p.probation.blocked(h.node_id)))
        return referee(name, version, inputs)

    p = pools([evil, h], k=1, referee_fn=watching_referee)
    p.probation.passed(h.node_id)
    with pytest.raises(ResultRejected):
        p.request(evil)
    assert seen == [(True, True)]
    assert not p.probation.blocked(h.node_id)


# ---------------------------------------------------------------- the scheduler's gate


def test_scheduler_gives_a_probation_node_one_held_job_at_a_time():
    (node,) = make_nodes(1)
    gate = Probation(2)
    s = Scheduler(FakeRegistry([node]), FakeClient(), gate=gate, call_timeout=0.3)
    r = s.run(SMANIFEST, SX, hold=True)
    assert r.node is node and gate.holding(node.node_id)
    with pytest.raises(ResourceExhausted):  # its held answer is not checked yet: no second job
        s.run(SMANIFEST, SX, hold=True)
    s.release_hold(node.node_id)
    assert s.run(SMANIFEST, SX).node is node and not gate.holding(node.node_id)  # no hold: released at once


def test_scheduler_waiting_request_gets_the_node_when_its_hold_ends():
    (node,) = make_nodes(1)
    gate = Probation(2)
    s = Scheduler(FakeRegistry([node]), FakeClient(), gate=gate, call_timeout=5)
    s.run(SMANIFEST, SX, hold=True)
    timer = threading.Timer(0.2, s.release_hold, args=(node.node_id,))
    timer.start()
    t0 = time.monotonic()
    assert s.run(SMANIFEST, SX, hold=True).node is node
    assert 0.15 < time.monotonic() - t0 < 2  # woken by the release, not by a poll timeout
    timer.join()


def test_scheduler_skips_nodes_with_a_dispute_pending_and_probation_nodes_that_hold_a_job():
    a, b, c = make_nodes(3)
    gate = Probation(1, seed=lambda n: 1 if n != c.node_id else 0)  # a, b trusted; c on probation
    s = Scheduler(FakeRegistry([a, b, c]), FakeClient(), gate=gate, rng=random.Random(1))
    gate.suspend([a.node_id])
    gate.admit(c.node_id)  # c holds a job
    assert {s.run(SMANIFEST, SX, hold=True).node.node_id for _ in range(20)} == {b.node_id}
    assert not gate.holding(b.node_id)  # trusted: nothing held
    gate.resume([a.node_id])
    assert a.node_id in {s.run(SMANIFEST, SX).node.node_id for _ in range(40)}


def test_scheduler_releases_the_hold_when_the_call_fails():
    (node,) = make_nodes(1)
    gate = Probation(2)
    client = FakeClient()
    client.behaviour[node.node_id] = Unavailable("down")
    s = Scheduler(FakeRegistry([node]), client, gate=gate, max_attempts=1)
    with pytest.raises(Unavailable):
        s.run(SMANIFEST, SX, hold=True)
    assert not gate.holding(node.node_id)

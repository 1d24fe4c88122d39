"""Bounded background checks (full queue: recorded ``skipped``, never dropped) and timeout faults
(a stalling node pays less than a cheat, and is quarantined after N timeouts)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import Code, HyperinferError
from hyperinfer.gateway.ledger import Ledger, LedgerConfig
from hyperinfer.gateway.scheduler import Scheduler
from hyperinfer.gateway.store import open_store
from hyperinfer.gateway.verification import Verifier, VerifyRequest
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.sampling import SamplingPolicy

sys.path.insert(0, str(Path(__file__).parent))
from test_scheduler import MANIFEST, X, FakeClient, FakeRegistry, make_nodes  # noqa: E402
from test_verification import MANIFEST as TOY, FakeWorker, referee  # noqa: E402


class GatedClient:
    """Validators block until released: background checks pile up."""

    def __init__(self, workers):
        self.workers = {w.node_id: w for w in workers}
        self.release = threading.Event()

    def infer(self, node, request_id, model_name, model_version, inputs, timeout=None):
        assert self.release.wait(30)
        return self.workers[node.node_id].infer(request_id, inputs)


def test_full_check_queue_records_skipped_never_drops():
    primary, validator = FakeWorker("op1"), FakeWorker("op2")
    ledger = Ledger(open_store(":memory:"), LedgerConfig(probation_jobs=0))
    client = GatedClient([primary, validator])
    v = Verifier(ledger, SamplingPolicy(default_rate=1.0), referee, client, Ed25519PrivateKey.generate(),
                 background_workers=1, max_pending_checks=3)
    try:
        statuses = []
        for i in range(5):
            x = {"x": np.full((4, 8), i, np.float32)}
            r = v.verify(VerifyRequest(TOY, x, primary.ref, f"r{i}", primary.infer(f"r{i}", x),
                                       [validator.ref], "auto"))
            statuses.append((r.status, r.detail))
        assert [s for s, _ in statuses] == [rc.PENDING] * 3 + [rc.SKIPPED] * 2
        assert all("check queue full" in d for s, d in statuses if s == rc.SKIPPED)
        assert ledger.details(primary.node_id)["skipped"] == 2
        # the stored receipts say so too: every sampled request has one
        assert ledger.receipt("r4").status == rc.SKIPPED
        client.release.set()
        assert v.wait(30)
        assert [ledger.receipt(f"r{i}").status for i in range(3)] == [rc.AGREED] * 3
    finally:
        client.release.set()
        v.close()


def test_timeouts_slash_less_than_faults_and_quarantine_after_n():
    quarantined = []
    ledger = Ledger(open_store(":memory:"),
                    LedgerConfig(slash_per_fault=10, timeout_slash=1, quarantine_after=3, quarantine_after_timeouts=4),
                    on_quarantine=quarantined.append)
    for i in range(3):
        assert ledger.record_timeout("slow", "no answer within 1 s", f"q{i}") is False
    d = ledger.details("slow")
    assert (d["stake"], d["slashed"], d["faults"], d["quarantined"]) == (97.0, 3.0, 0, False)
    assert ledger.timeouts("slow") == 3
    assert [f["kind"] for f in ledger.faults("slow")] == ["timeout"] * 3
    assert ledger.record_timeout("slow", "no answer within 1 s") is True
    assert quarantined == ["slow"] and ledger.details("slow")["quarantined"]
    # a wrong answer costs ten times as much
    ledger.record_fault("cheat", "bad attestation")
    assert ledger.details("cheat")["slashed"] == 10.0


def test_scheduler_reports_a_node_timeout_not_a_client_deadline():
    nodes = make_nodes(2)
    client = FakeClient()
    timeouts = []
    client.behaviour[nodes[0].node_id] = HyperinferError("deadline exceeded", Code.DEADLINE_EXCEEDED)
    client.behaviour[nodes[1].node_id] = HyperinferError("deadline exceeded", Code.DEADLINE_EXCEEDED)
    s = Scheduler(FakeRegistry(nodes), client, call_timeout=5,
                  on_timeout=lambda node_id, reason, rid: timeouts.append((node_id, reason, rid)))
    with pytest.raises(HyperinferError):
        s.run(MANIFEST, X)
    assert sorted(t[0] for t in timeouts) == sorted(n.node_id for n in nodes)
    assert all("within 5 s" in t[1] and len(t[2]) == 32 for t in timeouts)
    # the client's own deadline ran out: nobody is blamed
    import time

    def late():
        time.sleep(0.05)
        raise HyperinferError("deadline exceeded", Code.DEADLINE_EXCEEDED)

    timeouts.clear()
    client.behaviour = {n.node_id: late for n in nodes}
    s = Scheduler(FakeRegistry(nodes), client, call_timeout=5,
                  on_timeout=lambda node_id, reason, rid: timeouts.append((node_id, reason, rid)))
    with pytest.raises(HyperinferError) as ei:
        s.run(MANIFEST, X, deadline=time.monotonic() + 0.02)
    assert ei.value.code == Code.DEADLINE_EXCEEDED and timeouts == []

"""The verification orchestrator against in-process workers that run real numpy and sign
real attestations with real Ed25519 keys: honest, perturbed (another artifact), tampering,
cheaper (lower precision), replaying and bad-signature workers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import Unavailable
from hyperinfer.gateway.ledger import Ledger, LedgerConfig
from hyperinfer.gateway.store import open_store
from hyperinfer.gateway.verification import ResultRejected, Verifier, VerifyRequest, WorkerResult
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec, Tolerance
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.dispute import recheck
from hyperinfer.verify.receipt import receipt_to_json, verify_receipt
from hyperinfer.verify.sampling import Mode, NodeRef, SamplingPolicy
from hyperinfer.verify.signing import key_id, public_bytes

SHA_A = "a" * 64
SHA_B = "b" * 64
W = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)


def make_manifest() -> Manifest:
    return Manifest(
        name="toy", version=1, source_sha256="0" * 64, model_sha256="1" * 64,
        inputs=[TensorSpec("x", "float32", (4, 8))],
        outputs=[OutputSpec("probs", "float32", (4, 6), tolerance=Tolerance(1e-4, 1e-3)),
                 OutputSpec("label", "int64", (4,))],
        tvm_version="test",
        artifacts={"cpu-a": ArtifactInfo("cpu-a", {}, "artifacts/cpu-a.so", SHA_A, 1),
                   "cpu-b": ArtifactInfo("cpu-b", {}, "artifacts/cpu-b.so", SHA_B, 1)},
    )


MANIFEST = make_manifest()


def model32(x: np.ndarray) -> dict[str, np.ndarray]:
    """What an artifact computes (float32)."""
    z = np.tanh(x @ W)
    return {"probs": z.astype(np.float32), "label": np.argmax(z, axis=1).astype(np.int64)}


def referee(name: str, version: int, inputs) -> dict[str, np.ndarray]:
    """ONNX Runtime stand-in: the same function in float64."""
    z = np.tanh(inputs["x"].astype(np.float64) @ W.astype(np.float64))
    return {"probs": z.astype(np.float32), "label": np.argmax(z, axis=1).astype(np.int64)}


class FakeWorker:
    """An honest node: runs the model, signs what it returns."""

    def __init__(self, operator: str, target_id: str = "cpu-a", sha: str = SHA_A, noise: float = 0.0):
        self.key = Ed25519PrivateKey.generate()
        self.node_id = key_id(self.key)
        self.operator, self.target_id, self.sha, self.noise = operator, target_id, sha, noise
        self.rng = np.random.default_rng(abs(hash(self.node_id)) % 2**32)
        self.calls: list[str] = []

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.node_id, public_bytes(self.key), self.operator, f"inproc:{self.node_id[:6]}",
                       self.target_id, self.sha)

    def compute(self, inputs):
        out = model32(inputs["x"])
        if self.noise:  # another artifact: a different schedule rounds differently
            p = out["probs"]
            out["probs"] = (p * (1 + self.noise * self.rng.standard_normal(p.shape))).astype(np.float32)
        return out

    def sign(self, request_id, inputs, outputs, input_digest=None, key=None) -> WorkerResult:
        att = Attestation(
            request_id=request_id, model_name=MANIFEST.name, model_version=MANIFEST.version,
            target_id=self.target_id, artifact_sha256=self.sha,
            input_digest=input_digest or tensors_digest(["x"], inputs),
            output_digest=tensors_digest(["probs", "label"], outputs),
            node_id=self.node_id, timestamp_ms=int(time.time() * 1000),
        )
        data, sig = att.sign(key or self.key)
        return WorkerResult(outputs, data, sig)

    def infer(self, request_id, inputs) -> WorkerResult:
        self.calls.append(request_id)
        return self.sign(request_id, inputs, self.compute(inputs))


class Tamperer(FakeWorker):
    def compute(self, inputs):
        out = super().compute(inputs)
        out["probs"] = out["probs"] + np.float32(0.05)
        return out


class Cheaper(FakeWorker):
    """Runs a lower-precision variant: different bits, still within tolerance."""

    def compute(self, inputs):
        out = super().compute(inputs)
        out["probs"] = np.round(out["probs"], 5).astype(np.float32)
        return out


class BadSigner(FakeWorker):
    def infer(self, request_id, inputs):
        return self.sign(request_id, inputs, self.compute(inputs), key=Ed25519PrivateKey.generate())


class Replayer(FakeWorker):
    """Returns its first signed result again for every later request."""

    first = None

    def infer(self, request_id, inputs):
        if self.first is None:
            self.first = super().infer(request_id, inputs)
        return self.first


class LazyReplayer(FakeWorker):
    """Signs each new request id but returns the old answer and its old input digest."""

    old = None

    def infer(self, request_id, inputs):
        if self.old is None:
            self.old = (dict(inputs), self.compute(inputs))
        old_inputs, old_out = self.old
        return self.sign(request_id, inputs, old_out, input_digest=tensors_digest(["x"], old_inputs))


class Down(FakeWorker):
    def infer(self, request_id, inputs):
        raise Unavailable(f"node {self.node_id} is down")


class Broken(FakeWorker):
    def infer(self, request_id, inputs):
        raise RuntimeError("client bug")


class InProcessClient:
    def __init__(self, workers):
        self.workers = {w.node_id: w for w in workers}

    def infer(self, node, request_id, model_name, model_version, inputs, timeout=None):
        return self.workers[node.node_id].infer(request_id, inputs)


class Pool:
    def __init__(self, primary, others, config=None, policy=None, on_quarantine=None):
        self.primary, self.others = primary, others
        self.ledger = Ledger(open_store(":memory:"),
                             config or LedgerConfig(probation_jobs=0, quarantine_after=0),
                             on_quarantine=on_quarantine)
        self.gateway_key = Ed25519PrivateKey.generate()
        self.verifier = Verifier(self.ledger, policy or SamplingPolicy(default_rate=1.0), referee,
                                 InProcessClient([primary, *others]), self.gateway_key, background_workers=1)
        self.rng = np.random.default_rng(1)
        self.n = 0

    def request(self, mode="sync"):
        x = {"x": self.rng.standard_normal((4, 8)).astype(np.float32)}
        self.n += 1
        rid = f"req-{self.n}"
        result = self.primary.infer(rid, x)
        req = VerifyRequest(MANIFEST, x, self.primary.ref, rid, result, [w.ref for w in self.others], mode)
        return self.verifier.verify(req)

    def keys(self):
        return {w.node_id: public_bytes(w.key) for w in [self.primary, *self.others]}


@pytest.fixture
def closing():
    pools = []
    yield pools.append
    for p in pools:
        p.verifier.close()


def test_honest_same_artifact_agrees_and_receipt_verifies(closing):
    p = Pool(FakeWorker("op1"), [FakeWorker("op2")])
    closing(p)
    r = p.request("always")
    assert r.status == rc.AGREED and "digests equal" in r.detail
    checks = verify_receipt(receipt_to_json(r), public_bytes(p.gateway_key), p.keys())
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    # the validator saw a fresh request id, not the primary's
    (vid,) = p.others[0].calls
    assert vid != r.request_id and len(vid) == 32
    s = p.ledger.summary(p.primary.node_id)
    assert set(s) == {"jobs", "checks", "faults", "credits", "stake", "slashed", "reputation", "probation"}
    assert (s["jobs"], s["checks"], s["faults"]) == (1, 1, 0)
    assert p.ledger.summary(p.others[0].node_id)["credits"] == 1.0
    assert p.ledger.attestation_count() == 2


def test_validator_never_same_operator_skipped_is_not_a_pass(closing):
    p = Pool(FakeWorker("op1"), [FakeWorker("op1"), FakeWorker("op1")])
    closing(p)
    r = p.request("always")
    assert r.status == rc.SKIPPED and "no independent validator" in r.detail
    assert not any(w.calls for w in p.others)
    assert p.ledger.details(p.primary.node_id)["skipped"] == 1
    assert all(c.ok for c in verify_receipt(receipt_to_json(r), public_bytes(p.gateway_key)))


def test_failed_validator_replaced_by_another(closing):
    down, ok = Down("op2"), FakeWorker("op3")
    p = Pool(FakeWorker("op1"), [down, ok])
    closing(p)
    statuses = {p.request("always").status for _ in range(6)}
    assert statuses == {rc.AGREED}


def test_broken_validator_call_replaced_and_deadline_respected(closing):
    p = Pool(FakeWorker("op1"), [Broken("op2"), FakeWorker("op3")])
    closing(p)
    assert {p.request("always").status for _ in range(6)} == {rc.AGREED}
    x = {"x": np.ones((4, 8), dtype=np.float32)}
    req = VerifyRequest(MANIFEST, x, p.primary.ref, "late", p.primary.infer("late", x),
                        [w.ref for w in p.others], "always", deadline=time.monotonic() - 1)
    r = p.verifier.verify(req)
    assert r.status == rc.SKIPPED and "deadline" in r.detail


def test_sync_tamperer_rejected_with_evidence_that_rechecks(closing):
    p = Pool(Tamperer("evil"), [FakeWorker("op2")])
    closing(p)
    with pytest.raises(ResultRejected) as ei:
        p.request("sync")
    r = ei.value.receipt
    assert r.status == rc.DISPUTED_LOST and r.dispute_id
    assert ei.value.code.value == "UNAVAILABLE"
    d = p.ledger.evidence(r.dispute_id)
    assert d.verdict.faults == (p.primary.node_id,)
    checks = recheck(d)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    s = p.ledger.summary(p.primary.node_id)
    assert s["faults"] == 1 and s["slashed"] == 10.0 and s["stake"] == 90.0 and s["credits"] == 0.0
    assert p.ledger.summary(p.others[0].node_id)["faults"] == 0


def test_auto_mode_answers_pending_then_background_finishes(closing):
    p = Pool(Tamperer("evil"), [FakeWorker("op2")])
    closing(p)
    r = p.request("auto")  # never raises: the answer goes out before the check
    assert r.status == rc.PENDING
    assert p.verifier.wait(timeout=30)
    final = p.verifier.receipt(r.request_id)
    assert final.status == rc.DISPUTED_LOST
    assert all(c.ok for c in verify_receipt(receipt_to_json(final), public_bytes(p.gateway_key)))


def test_bad_signature_caught_on_every_request(closing):
    p = Pool(BadSigner("op1"), [FakeWorker("op2")], policy=SamplingPolicy(default_rate=0.0))
    closing(p)
    for _ in range(40):
        with pytest.raises(ResultRejected, match="signature"):
            p.request("auto")
    s = p.ledger.summary(p.primary.node_id)
    assert s["faults"] == 40 and s["jobs"] == 0 and s["credits"] == 0.0
    assert not p.others[0].calls


@pytest.mark.parametrize("cls, field", [(Replayer, "request_id"), (LazyReplayer, "input_digest")])
def test_replayed_results_caught(closing, cls, field):
    p = Pool(cls("op1"), [FakeWorker("op2")], policy=SamplingPolicy(default_rate=0.0))
    closing(p)
    assert p.request("auto").status == rc.UNCHECKED  # the first one is genuine
    for _ in range(5):
        with pytest.raises(ResultRejected, match=field):
            p.request("auto")
    assert p.ledger.summary(p.primary.node_id)["faults"] == 5


def test_attested_artifact_must_be_in_manifest(closing):
    w = FakeWorker("op1", target_id="cpu-a", sha="c" * 64)
    p = Pool(w, [FakeWorker("op2")])
    closing(p)
    with pytest.raises(ResultRejected, match="not in the manifest"):
        p.request()


def test_cheaper_variant_unresolved_without_tiebreaker_caught_with_one(closing):
    # two nodes, same artifact: the cheaper one stays within tolerance, so only a tiebreaker can tell
    p = Pool(Cheaper("cheap"), [FakeWorker("op2")])
    closing(p)
    r = p.request("always")
    assert r.status == rc.DISPUTED_UNRESOLVED
    assert p.ledger.summary(p.primary.node_id)["faults"] == 0
    assert p.ledger.summary(p.others[0].node_id)["faults"] == 0

    p2 = Pool(Cheaper("cheap"), [FakeWorker("op2"), FakeWorker("op3")])
    closing(p2)
    with pytest.raises(ResultRejected) as ei:
        p2.request("always")
    d = p2.ledger.evidence(ei.value.receipt.dispute_id)
    assert d.tiebreaker is not None and d.verdict.faults == (p2.primary.node_id,)
    assert all(c.ok for c in recheck(d))


def test_honest_primary_wins_against_cheating_validator(closing):
    cheat = Tamperer("evil")
    p = Pool(FakeWorker("op1"), [cheat])
    closing(p)
    r = p.request("always")
    assert r.status == rc.DISPUTED_WON
    assert p.ledger.summary(cheat.node_id)["faults"] == 1
    assert p.ledger.summary(p.primary.node_id)["faults"] == 0


def test_different_artifacts_tiny_noise_never_at_fault(closing):
    a = FakeWorker("op1", "cpu-a", SHA_A)
    b = FakeWorker("op2", "cpu-b", SHA_B, noise=1e-7)
    p = Pool(a, [b])
    closing(p)
    statuses = [p.request("always").status for _ in range(300)]
    assert set(statuses) <= {rc.AGREED, rc.DISPUTED_WON}
    for w in (a, b):
        s = p.ledger.summary(w.node_id)
        assert s["faults"] == 0 and s["checks"] == 300 and s["slashed"] == 0


def binomial_interval_99(n: int, p: float) -> tuple[int, int]:
    try:
        from scipy.stats import binom

        lo, hi = binom.interval(0.99, n, p)
        return int(lo), int(hi)
    except ImportError:  # exact, via the CDF
        cdf, lo, hi = 0.0, None, None
        for k in range(n + 1):
            cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
            if lo is None and cdf >= 0.005:
                lo = k
            if hi is None and cdf >= 0.995:
                hi = k
        return lo, hi


def test_detection_rate_matches_sample_rate(closing):
    n, rate = 400, 0.2
    p = Pool(Tamperer("evil"), [FakeWorker("op2"), FakeWorker("op3")],
             policy=SamplingPolicy(default_rate=rate, probation_rate=0.0))
    closing(p)
    detected = unchecked = 0
    for _ in range(n):
        try:
            r = p.request("sync")
            assert r.status == rc.UNCHECKED
            unchecked += 1
        except ResultRejected as e:
            assert e.receipt.status == rc.DISPUTED_LOST
            detected += 1
    lo, hi = binomial_interval_99(n, rate)
    assert lo <= detected <= hi, (detected, lo, hi)
    assert detected + unchecked == n
    s = p.ledger.summary(p.primary.node_id)
    assert s["faults"] == detected and s["checks"] == detected


def test_probation_and_quarantine_end_a_tamperer(closing):
    quarantined = []
    cfg = LedgerConfig(probation_jobs=5, quarantine_after=3, slash_per_fault=20.0, initial_stake=100.0)
    p = Pool(Tamperer("evil"), [FakeWorker("op2")], config=cfg,
             policy=SamplingPolicy(default_rate=0.0), on_quarantine=quarantined.append)
    closing(p)
    for _ in range(3):  # rate 0, but on probation every job is checked
        with pytest.raises(ResultRejected):
            p.request("sync")
    assert quarantined == [p.primary.node_id]
    d = p.ledger.details(p.primary.node_id)
    assert d["quarantined"] and d["faults"] == 3 and d["slashed"] == 60.0 and d["stake"] == 40.0
    assert d["probation"] and d["credits"] == 0.0
    with pytest.raises(ResultRejected):
        p.request("sync")
    assert quarantined == [p.primary.node_id]  # called once


def test_probation_checks_new_honest_node_then_rate_applies(closing):
    p = Pool(FakeWorker("op1"), [FakeWorker("op2")], config=LedgerConfig(probation_jobs=4, quarantine_after=0),
             policy=SamplingPolicy(default_rate=0.0))
    closing(p)
    statuses = [p.request("auto").status for _ in range(8)]
    # the node's first 4 jobs are on probation (checked at rate 1), then rate 0 applies
    assert statuses == [rc.PENDING] * 4 + [rc.UNCHECKED] * 4
    assert p.verifier.wait(30)
    assert p.ledger.details(p.primary.node_id)["agreements"] == 4


def test_mode_parse_names_field():
    assert Mode.parse(None) is Mode.AUTO and Mode.parse("SYNC") is Mode.SYNC
    with pytest.raises(Exception, match="hyperinfer.verify"):
        Mode.parse("later", "hyperinfer.verify")

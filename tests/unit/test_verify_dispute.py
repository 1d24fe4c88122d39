import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument
from hyperinfer.package import OutputSpec, Tolerance
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.dispute import Dispute, Execution, needs_tiebreaker, new_dispute, recheck, resolve
from hyperinfer.verify.signing import key_id, public_bytes

OUT = [OutputSpec("y", "float32", (3,), tolerance=Tolerance(1e-3, 0.0)), OutputSpec("k", "int64", (1,))]
X = {"x": np.array([1.0, 2.0], dtype=np.float32)}
REF = {"y": np.array([0.1, 0.2, 0.3], dtype=np.float32), "k": np.array([2])}


def run(role, y, request_id, target="cpu-a", sha="a" * 64, key=None):
    key = key or Ed25519PrivateKey.generate()
    out = {"y": np.array(y, dtype=np.float32), "k": np.array([2])}
    att = Attestation(request_id, "toy", 1, target, sha, tensors_digest(["x"], X),
                      tensors_digest(["y", "k"], out), key_id(key), 1)
    data, sig = att.sign(key)
    return Execution(role, key_id(key), public_bytes(key), data, sig, out)


HONEST = [0.1, 0.2, 0.3]
CLOSE = [0.1004, 0.2, 0.3]  # within atol 1e-3, other bits
FAR = [0.15, 0.2, 0.3]


def test_outside_tolerance_is_at_fault_both_can_be():
    p, v = run("primary", FAR, "r1"), run("validator", HONEST, "r2")
    verdict = resolve(p, v, REF, OUT, same_artifact=False)
    assert verdict.faults == (p.node_id,) and verdict.resolved
    assert verdict.outcome_for(p.node_id) == "disputed-lost"
    assert verdict.outcome_for(v.node_id) == "disputed-won"
    p, v = run("primary", FAR, "r1"), run("validator", [0.1, 0.2, 0.4], "r2")
    assert set(resolve(p, v, REF, OUT, False).faults) == {p.node_id, v.node_id}


def test_different_artifacts_both_within_no_fault():
    p, v = run("primary", CLOSE, "r1"), run("validator", [0.0996, 0.2, 0.3], "r2", "cpu-b", "b" * 64)
    verdict = resolve(p, v, REF, OUT, same_artifact=False)
    assert verdict.faults == () and verdict.resolved


def test_same_artifact_tie_needs_tiebreaker():
    p, v = run("primary", CLOSE, "r1"), run("validator", HONEST, "r2")
    assert needs_tiebreaker(p, v, REF, OUT, True)
    assert not needs_tiebreaker(p, v, REF, OUT, False)
    verdict = resolve(p, v, REF, OUT, True)
    assert not verdict.resolved and verdict.faults == ()
    assert verdict.outcome_for(p.node_id) == "disputed-unresolved"
    t = run("tiebreaker", HONEST, "r3")
    verdict = resolve(p, v, REF, OUT, True, t)
    assert verdict.faults == (p.node_id,) and verdict.resolved
    t = run("tiebreaker", [0.1, 0.2, 0.3001], "r3")
    assert not resolve(p, v, REF, OUT, True, t).resolved


def make_dispute():
    p, v = run("primary", FAR, "r1"), run("validator", HONEST, "r2")
    return new_dispute(dispute_id="d1", model_name="toy", model_version=1, created_ms=5, input_names=["x"],
                       outputs=OUT, inputs=X, primary=p, validator=v, referee_outputs=REF, same_artifact=True)


def test_roundtrip_and_recheck():
    d = make_dispute()
    d2 = Dispute.from_json(d.to_json())
    assert d2.to_json() == d.to_json()
    checks = recheck(d2)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize("path, value", [
    (("verdict", "faults"), []),  # verdict rewritten
    (("primary", "outputs", "y", "data"), None),  # stored output swapped for another
    (("inputs", "x", "data"), None),  # stored input swapped
])
def test_recheck_catches_edited_evidence(path, value):
    d = json.loads(make_dispute().to_json())
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    if value is None:  # replace tensor bytes by those of another tensor of the same size
        import base64
        raw = bytearray(base64.b64decode(obj[path[-1]]))
        raw[0] ^= 1
        value = base64.b64encode(bytes(raw)).decode()
    obj[path[-1]] = value
    checks = recheck(Dispute.from_json(json.dumps(d)))
    assert not all(c.ok for c in checks)


def test_recheck_catches_reused_request_id():
    p, v = run("primary", FAR, "same"), run("validator", HONEST, "same")
    d = new_dispute(dispute_id="d", model_name="toy", model_version=1, created_ms=1, input_names=["x"], outputs=OUT,
                    inputs=X, primary=p, validator=v, referee_outputs=REF, same_artifact=True)
    assert [c.name for c in recheck(d) if not c.ok] == ["every run had its own request id"]


def test_from_json_errors_name_field():
    with pytest.raises(InvalidArgument, match="evidence"):
        Dispute.from_json("[]")
    d = json.loads(make_dispute().to_json())
    del d["validator"]
    with pytest.raises(InvalidArgument, match="validator"):
        Dispute.from_json(json.dumps(d))

"""Probation rules (verify/probation.py) and the receipt's signed ``probation`` field."""

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.probation import Probation, initial_streak
from hyperinfer.verify.receipt import Receipt, receipt_from_json, receipt_to_json, sign_receipt, verify_receipt
from hyperinfer.verify.signing import key_id, public_bytes


def test_new_node_needs_k_consecutive_passes():
    p = Probation(3)
    assert p.on_probation("a") and p.streak("a") == 0
    p.passed("a")
    p.passed("a")
    assert p.on_probation("a") and p.streak("a") == 2
    p.passed("a")
    assert not p.on_probation("a") and p.trusted("a") and p.streak("a") == 3
    p.passed("a")
    assert p.streak("a") == 3  # capped at K


def test_a_fault_restarts_probation_and_the_count():
    p = Probation(2)
    p.passed("a"), p.passed("a")
    assert p.trusted("a")
    p.fault("a")
    assert p.on_probation("a") and p.streak("a") == 0
    p.passed("a")
    p.fault("a")  # consecutive: a fault in the middle resets
    p.passed("a")
    assert p.on_probation("a")
    p.passed("a")
    assert p.trusted("a")


def test_zero_jobs_disables_probation():
    p = Probation(0)
    assert not p.enabled and not p.on_probation("a")
    assert p.admit("a") and p.admit("a")  # no one-job limit
    p.fault("a")
    assert not p.on_probation("a")
    with pytest.raises(ValueError):
        Probation(-1)


def test_probation_node_gets_one_job_at_a_time():
    p = Probation(1)
    assert p.admit("a") and p.holding("a")
    assert p.blocked("a") and not p.admit("a")
    freed = []
    p.listeners.append(freed.append)
    p.release("a")
    assert freed == ["a"] and not p.blocked("a") and p.admit("a")
    p.release("a")
    p.passed("a")  # trusted now: no limit
    assert p.admit("a") and p.admit("a") and not p.holding("a")


def test_one_job_at_a_time_under_concurrent_admits():
    p = Probation(5)
    wins = []
    barrier = threading.Barrier(8)

    def grab():
        barrier.wait()
        wins.append(p.admit("a"))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(wins) == [False] * 7 + [True]


def test_dispute_pending_suspends_any_node_until_verdict():
    p = Probation(2)
    p.passed("t"), p.passed("t")
    assert p.trusted("t") and p.admit("t")
    p.suspend(["t", "v"])
    p.suspend(["t"])  # two disputes pending on t
    assert p.blocked("t") and not p.admit("t") and p.suspended("v")
    p.resume(["t", "v"])
    assert p.blocked("t") and not p.suspended("v")
    p.resume(["t"])
    assert not p.blocked("t") and p.admit("t")


def test_validators_trusted_first():
    p = Probation(1, seed=lambda n: 1 if n.startswith("t") else 0)

    class N:
        def __init__(self, node_id):
            self.node_id = node_id

    nodes = [N("new1"), N("t1"), N("new2"), N("t2")]
    assert [n.node_id for n in p.prefer_trusted(nodes)] == ["t1", "t2"]
    only_new = [N("new1"), N("new2")]
    assert p.prefer_trusted(only_new) == only_new  # nobody trusted: probation validators rather than none


def test_seed_from_ledger_record():
    assert initial_streak({"faults": 0, "agreements": 12}, 10) == 10
    assert initial_streak({"faults": 1, "agreements": 500}, 10) == 0  # faults on record: prove it again
    assert initial_streak({"faults": 0, "agreements": 3}, 10) == 0
    assert initial_streak(None, 10) == 0
    records = {"old": {"faults": 0, "agreements": 40}, "bad": {"faults": 2, "agreements": 40}}
    p = Probation(10, seed=lambda n: initial_streak(records.get(n), 10))
    assert p.trusted("old") and p.on_probation("bad") and p.on_probation("stranger")

    def broken(node_id):
        raise RuntimeError("db down")

    assert Probation(3, seed=broken).on_probation("x")  # no record to go by: probation


# ---------------------------------------------------------------- receipts

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
Y = {"y": np.ones(2, dtype=np.float32)}


def _receipt(status, probation, validator=True):
    gw, node, val = KEYS
    def att(key, rid):
        return Attestation(rid, "toy", 1, "cpu-a", "a" * 64, tensors_digest(["x"], X), tensors_digest(["y"], Y),
                           key_id(key), 1_700_000_000_000).sign(key)
    a, s = att(node, "r1")
    va, vs = att(val, "r2") if validator else (None, None)
    r = Receipt("r1", "toy", 1, key_id(node), public_bytes(node), a, s, status, "", 1, "d",
                key_id(val) if validator else None, public_bytes(val) if validator else None, va, vs,
                probation=probation)
    return sign_receipt(gw, r)


KEYS = (Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())


@pytest.mark.parametrize("status,validator", [(rc.AGREED, True), (rc.DISPUTED_WON, True), (rc.REFEREED, False)])
def test_probation_receipt_signed_and_verified(status, validator):
    r = _receipt(status, True, validator)
    text = receipt_to_json(r)
    assert json.loads(text)["probation"] is True
    assert receipt_from_json(text) == r
    checks = verify_receipt(text, public_bytes(KEYS[0]))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert any("probation answer was checked" in c.name for c in checks)
    # the field is signed: dropping it breaks the gateway signature
    d = json.loads(text)
    del d["probation"]
    bad = verify_receipt(json.dumps(d), public_bytes(KEYS[0]))
    assert not all(c.ok for c in bad)


def test_receipt_without_probation_omits_the_field_and_parses():
    r = _receipt(rc.AGREED, False)
    d = json.loads(receipt_to_json(r))
    assert "probation" not in d  # receipts from before the field keep their signatures
    assert receipt_from_json(json.dumps(d)).probation is False
    d["probation"] = True  # added afterwards: the signature no longer holds
    assert not all(c.ok for c in verify_receipt(json.dumps(d), public_bytes(KEYS[0])))
    d["probation"] = False
    with pytest.raises(InvalidArgument, match="probation"):
        receipt_from_json(json.dumps(d))


def test_probation_receipt_that_was_not_checked_fails_audit():
    r = _receipt(rc.UNCHECKED, True, validator=False)
    checks = verify_receipt(receipt_to_json(r), public_bytes(KEYS[0]))
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == ["probation answer was checked before it was served"]
    assert replace(r, probation=False).probation is False

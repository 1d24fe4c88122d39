import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.receipt import (RECEIPT_PARAMETER, Receipt, receipt_from_json, receipt_to_json,
                                       sign_receipt, verify_receipt)
from hyperinfer.verify.signing import key_id, public_bytes

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
Y = {"y": np.ones(2, dtype=np.float32)}


def attest(key, request_id):
    att = Attestation(request_id, "toy", 3, "cpu-a", "a" * 64, tensors_digest(["x"], X),
                      tensors_digest(["y"], Y), key_id(key), 1_700_000_000_000)
    return att.sign(key)


@pytest.fixture(scope="module")
def parties():
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def make(parties, status=rc.AGREED):
    gw, node, val = parties
    a, s = attest(node, "r1")
    checked = status in rc.CHECKED_STATUSES
    va, vs = attest(val, "r2") if checked else (None, None)
    r = Receipt("r1", "toy", 3, key_id(node), public_bytes(node), a, s, status, "", 123, "detail",
                key_id(val) if checked else None, public_bytes(val) if checked else None, va, vs,
                "d1" if status.startswith("disputed") else "")
    return sign_receipt(gw, r)


def test_parameter_name():
    assert RECEIPT_PARAMETER == "hyperinfer.receipt"


@pytest.mark.parametrize("status", rc.STATUSES)
def test_roundtrip_and_verify(parties, status):
    gw, node, val = parties
    r = make(parties, status)
    text = receipt_to_json(r)
    assert receipt_from_json(text) == r
    checks = verify_receipt(text, public_bytes(gw), {key_id(node): public_bytes(node), key_id(val): public_bytes(val)})
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert r.gateway_id == key_id(gw)


def test_any_one_byte_change_fails(parties):
    gw = parties[0]
    text = receipt_to_json(make(parties)).encode()
    assert all(c.ok for c in verify_receipt(text, public_bytes(gw)))
    for i in range(len(text)):
        for flip in (0x01, 0x20):
            changed = bytearray(text)
            changed[i] ^= flip
            try:
                checks = verify_receipt(bytes(changed), public_bytes(gw))
            except Exception as e:  # verify_receipt must never raise on bad input
                pytest.fail(f"byte {i}: raised {type(e).__name__}: {e}")
            assert not all(c.ok for c in checks), f"byte {i} ^ {flip:#x} ({chr(text[i])!r}) still verifies"


def test_wrong_keys_fail(parties):
    gw, node, val = parties
    text = receipt_to_json(make(parties))
    other = Ed25519PrivateKey.generate()
    assert not all(c.ok for c in verify_receipt(text, public_bytes(other)))
    assert not all(c.ok for c in verify_receipt(text, None))
    bad = verify_receipt(text, public_bytes(gw), {key_id(node): public_bytes(other)})
    assert [c.name for c in bad if not c.ok] == ["node: public key matches the key you supplied"]


def test_attestation_must_match_receipt(parties):
    gw, node, val = parties
    a, s = attest(node, "another-request")
    r = sign_receipt(gw, Receipt("r1", "toy", 3, key_id(node), public_bytes(node), a, s, rc.UNCHECKED, "", 1))
    failed = [c.name for c in verify_receipt(receipt_to_json(r), public_bytes(gw)) if not c.ok]
    assert failed == ["attestation request id matches the receipt"]


def test_checked_status_without_validator_fails(parties):
    gw, node, _ = parties
    a, s = attest(node, "r1")
    r = sign_receipt(gw, Receipt("r1", "toy", 3, key_id(node), public_bytes(node), a, s, rc.AGREED, "", 1))
    assert not all(c.ok for c in verify_receipt(receipt_to_json(r), public_bytes(gw)))


def test_from_json_names_field(parties):
    d = json.loads(receipt_to_json(make(parties)))
    del d["status"]
    with pytest.raises(InvalidArgument, match="'status'"):
        receipt_from_json(json.dumps(d))
    d = json.loads(receipt_to_json(make(parties)))
    d["node_signature"] = "***"
    with pytest.raises(InvalidArgument, match="node_signature"):
        receipt_from_json(json.dumps(d))
    with pytest.raises(InvalidArgument, match="status"):
        sign_receipt(parties[0], Receipt("r", "m", 1, "n", b"k" * 32, b"a", b"s", "maybe", "", 1))

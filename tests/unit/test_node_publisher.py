"""manifest.sig: sign, verify, and every way a signature is refused."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import PermissionDenied
from hyperinfer.node.dataplane import TrustPolicy
from hyperinfer.verify.publisher import parse_manifest_signature, sign_manifest, verify_manifest_signature
from hyperinfer.verify.signing import key_id, public_bytes

MANIFEST = b'{"name": "mlp", "version": 1, "artifacts": {}}\n'


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


def test_sign_and_verify(key):
    sig = sign_manifest(key, MANIFEST)
    d = json.loads(sig)
    assert set(d) == {"publisher_id", "public_key", "signature"}
    assert d["publisher_id"] == key_id(key)
    assert verify_manifest_signature(sig, MANIFEST, [public_bytes(key)]) == key_id(key)


def test_altered_manifest_is_refused(key):
    sig = sign_manifest(key, MANIFEST)
    with pytest.raises(PermissionDenied, match="altered"):
        verify_manifest_signature(sig, MANIFEST.replace(b"1", b"2"), [public_bytes(key)])


def test_untrusted_publisher_is_refused_with_hint(key):
    other = Ed25519PrivateKey.generate()
    sig = sign_manifest(other, MANIFEST)
    with pytest.raises(PermissionDenied, match="not trusted.*--trust-publisher"):
        verify_manifest_signature(sig, MANIFEST, [public_bytes(key)])


def test_substituted_public_key_is_refused(key):
    """A forger who swaps in their own key also has to match publisher_id; and then it is untrusted."""
    forger = Ed25519PrivateKey.generate()
    d = json.loads(sign_manifest(forger, MANIFEST))
    d["publisher_id"] = key_id(key)
    with pytest.raises(PermissionDenied, match="fingerprint"):
        verify_manifest_signature(json.dumps(d).encode(), MANIFEST, [public_bytes(key)])


@pytest.mark.parametrize("sig", [b"", b"not json", b"[]", b'{"publisher_id": "x"}',
                                 b'{"publisher_id": "x", "public_key": "zz", "signature": "00"}'])
def test_malformed_or_missing(sig, key):
    with pytest.raises(PermissionDenied):
        verify_manifest_signature(sig, MANIFEST, [public_bytes(key)])


def test_one_flipped_signature_byte_is_refused(key):
    d = json.loads(sign_manifest(key, MANIFEST))
    s = bytearray.fromhex(d["signature"])
    s[10] ^= 1
    d["signature"] = s.hex()
    with pytest.raises(PermissionDenied, match="does not verify"):
        verify_manifest_signature(json.dumps(d).encode(), MANIFEST, [public_bytes(key)])


def test_trust_policy(key, caplog, tmp_path):
    sig = sign_manifest(key, MANIFEST)
    strict = TrustPolicy([public_bytes(key)])
    assert strict.check(MANIFEST, sig) == key_id(key)
    with pytest.raises(PermissionDenied, match="unsigned.*--allow-unsigned"):
        strict.check(MANIFEST, b"")
    with pytest.raises(PermissionDenied, match="not trusted"):
        TrustPolicy([]).check(MANIFEST, sig)

    local = tmp_path / "repo"
    (local / "mlp" / "1").mkdir(parents=True)
    (local / "mlp" / "1" / "manifest.json").write_bytes(MANIFEST)
    lax = TrustPolicy([], allow_unsigned=local)
    assert lax.check(MANIFEST, b"") is None
    assert "local repository" in caplog.text
    assert lax.check(MANIFEST, sig) is None  # untrusted signer vouches for nothing: same as unsigned
    # a trusted key whose signature does not verify means tampering: refused even when lax
    lax_trusting = TrustPolicy([public_bytes(key)], allow_unsigned=local)
    with pytest.raises(PermissionDenied, match="altered"):
        lax_trusting.check(MANIFEST + b" ", sig)
    with pytest.raises(PermissionDenied, match="malformed"):
        lax.check(MANIFEST, b"garbage")


def test_parse_round_trip(key):
    ms = parse_manifest_signature(sign_manifest(key, MANIFEST))
    assert ms.public_key == public_bytes(key) and len(ms.signature) == 64


def test_verify_package_imports_no_grpc_or_tvm():
    import subprocess
    import sys

    code = ("import sys, hyperinfer.verify.publisher, hyperinfer.verify.attestation; "
            "bad = [m for m in ('grpc', 'tvm') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_allow_unsigned_loads_only_what_the_local_repository_holds(tmp_path):
    """Attack: a malicious gateway offers its own unsigned package (native code) to a node that
    runs --allow-unsigned. It used to be loaded; now only a package the node's local repository
    holds byte for byte is."""
    local = tmp_path / "repo"
    (local / "mlp" / "1").mkdir(parents=True)
    (local / "mlp" / "1" / "manifest.json").write_bytes(MANIFEST)
    policy = TrustPolicy([], allow_unsigned=local)
    stranger = MANIFEST.replace(b'"artifacts": {}', b'"artifacts": {"x": 1}')
    with pytest.raises(PermissionDenied, match="differs from"):
        policy.check(stranger, b"")
    with pytest.raises(PermissionDenied, match="not in the local repository"):
        policy.check(MANIFEST.replace(b'"mlp"', b'"evil"'), b"")
    with pytest.raises(PermissionDenied, match="--allow-unsigned DIR"):
        TrustPolicy([], allow_unsigned=True).check(MANIFEST, b"")  # the old switch names no directory


def test_rollback_to_an_older_build_is_refused(tmp_path):
    from hyperinfer.node.models import VersionLog
    from hyperinfer.package import Manifest

    def manifest(created):
        return Manifest(name="mlp", version=1, source_sha256="0" * 64, model_sha256="1" * 64, inputs=[],
                        outputs=[], tvm_version="t", created=created)

    log = VersionLog(tmp_path / "loaded-versions.json")
    log.check(manifest("2026-01-02T00:00:00+00:00"), "mlp/1")
    log.record(manifest("2026-01-02T00:00:00+00:00"))
    log.check(manifest("2026-01-03T00:00:00+00:00"), "mlp/1")  # newer: fine
    again = VersionLog(tmp_path / "loaded-versions.json")  # persisted across restarts
    for old in ("2026-01-01T00:00:00+00:00", ""):
        with pytest.raises(PermissionDenied, match="rollback"):
            again.check(manifest(old), "mlp/1")

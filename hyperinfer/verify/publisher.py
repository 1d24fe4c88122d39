"""Publisher signatures over a package's manifest (``manifest.sig``, design §7).

An artifact is native code, so a node loads a package only if its manifest is
signed by a publisher key the node's operator trusts. The manifest pins every
artifact by sha256, so signing the manifest's exact bytes covers the artifacts.

``manifest.sig`` is JSON::

    {"publisher_id": "<fingerprint>", "public_key": "<hex>", "signature": "<hex>"}

where the signature is Ed25519 over ``payloads.manifest_signature_payload(manifest_bytes)``.
Pure: no files, no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import PermissionDenied
from hyperinfer.verify.payloads import manifest_signature_payload
from hyperinfer.verify.signing import fingerprint, public_bytes, sign, verify_signature


@dataclass(frozen=True)
class ManifestSignature:
    publisher_id: str
    public_key: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return (json.dumps({
            "publisher_id": self.publisher_id,
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }, indent=2, sort_keys=True) + "\n").encode()


def sign_manifest(key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The ``manifest.sig`` bytes for ``manifest_bytes`` signed with a publisher key."""
    pub = public_bytes(key)
    return ManifestSignature(fingerprint(pub), pub, sign(key, manifest_signature_payload(manifest_bytes))).to_bytes()


def parse_manifest_signature(sig_bytes: bytes) -> ManifestSignature:
    """Parse ``manifest.sig``; raise PermissionDenied (the package cannot be trusted) if malformed."""
    try:
        d = json.loads(sig_bytes)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        pub = bytes.fromhex(d["public_key"])
        sig = bytes.fromhex(d["signature"])
        pid = str(d["publisher_id"])
        if len(pub) != 32 or len(sig) != 64:
            raise ValueError("public_key must be 32 bytes and signature 64 bytes")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise PermissionDenied(f"manifest.sig is malformed: {e}") from None
    if fingerprint(pub) != pid:
        raise PermissionDenied("manifest.sig: publisher_id is not the fingerprint of its public_key")
    return ManifestSignature(pid, pub, sig)


def verify_manifest_signature(
    sig_bytes: bytes, manifest_bytes: bytes, trusted_public_keys: Iterable[bytes]
) -> str:
    """Return the publisher id if ``sig_bytes`` is a valid signature of ``manifest_bytes`` by a
    trusted key; raise PermissionDenied saying why not otherwise."""
    if not sig_bytes:
        raise PermissionDenied("package is unsigned (no manifest.sig)")
    ms = parse_manifest_signature(sig_bytes)
    trusted = {bytes(k) for k in trusted_public_keys}
    if ms.public_key not in trusted:
        raise PermissionDenied(
            f"package is signed by publisher {ms.publisher_id}, which is not trusted "
            f"(trust it with --trust-publisher {ms.public_key.hex()})"
        )
    if not verify_signature(ms.public_key, manifest_signature_payload(manifest_bytes), ms.signature):
        raise PermissionDenied(
            f"manifest signature by publisher {ms.publisher_id} does not verify: the manifest was altered"
        )
    return ms.publisher_id

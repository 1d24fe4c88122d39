"""Signed attestations of one node computation (design §5).

The signed bytes are a fixed prefix plus canonical JSON (sorted keys, no
whitespace), so any party can rebuild and check them without protobuf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.verify.signing import sign, verify_signature

FORMAT_VERSION = 1
_PREFIX = b"hyperinfer-attestation-v1\n"


class AttestationError(ValueError):
    """Attestation bytes that do not parse or do not match what was asked."""


@dataclass(frozen=True)
class Attestation:
    request_id: str
    model_name: str
    model_version: int
    target_id: str
    artifact_sha256: str
    input_digest: str
    output_digest: str
    node_id: str
    timestamp_ms: int
    format_version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        d = {name: getattr(self, name) for name in _FIELDS}  # flat and immutable: asdict's deep copy is slow
        return _PREFIX + json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Attestation":
        if not data.startswith(_PREFIX):
            raise AttestationError("not a hyperinfer attestation (bad prefix)")
        try:
            d = json.loads(data[len(_PREFIX):])
        except ValueError as e:
            raise AttestationError(f"attestation is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.keys() != _FIELD_SET:
            raise AttestationError("attestation fields do not match format version 1")
        if d["format_version"] != FORMAT_VERSION:
            raise AttestationError(f"unsupported attestation format {d['format_version']!r}")
        att = cls(**d)
        if att.to_bytes() != data:
            raise AttestationError("attestation bytes are not canonical")
        return att

    def sign(self, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
        """Return (attestation bytes, signature)."""
        data = self.to_bytes()
        return data, sign(key, data)


_FIELDS = tuple(f.name for f in fields(Attestation))
_FIELD_SET = frozenset(_FIELDS)


def verify_attestation(public_key: bytes, data: bytes, signature: bytes) -> Attestation:
    """Parse and check a signed attestation; raise AttestationError if it is not valid."""
    if not verify_signature(public_key, data, signature):
        raise AttestationError("attestation signature does not verify with the node's key")
    return Attestation.from_bytes(data)

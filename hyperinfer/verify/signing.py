"""Ed25519 signatures and key fingerprints over bytes; no key files here."""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@functools.lru_cache(maxsize=4096)  # pure; called for every result the gateway checks
def fingerprint(public_key: bytes) -> str:
    """Stable id of a public key (node id, gateway id, publisher id): 32 hex chars."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(b"hyperinfer-key-v1\0" + public_key).hexdigest()[:32]


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return fingerprint(public_bytes(key))


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


@functools.lru_cache(maxsize=4096)  # the pool's node keys, decoded once each
def _public_key(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    try:
        _public_key(bytes(public_key)).verify(signature, data)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False

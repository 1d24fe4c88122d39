"""Ed25519 key files: generated on first use, kept with mode 0600, reused after."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hyperinfer.errors import InvalidArgument, NotFound, PermissionDenied
from hyperinfer.verify.signing import key_id, public_bytes


def load_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"key file {p} not found")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"{p} is not a PEM Ed25519 private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        raise PermissionDenied(f"key file {p} is readable by others; run: chmod 600 {p}")
    return key


def load_or_create_key(path: str | os.PathLike) -> tuple[Ed25519PrivateKey, bool]:
    """Return (key, created)."""
    p = Path(path)
    if p.exists():
        return load_key(p), False
    p.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # create with 0600 from the start: never a moment where the key is world-readable
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key, True


def load_public_key(value: str | os.PathLike) -> bytes:
    """A public key from a hex string, a PEM public key file or a private key file."""
    s = str(value)
    if len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s):
        return bytes.fromhex(s)
    p = Path(s)
    if not p.is_file():
        raise NotFound(f"public key {s!r} is neither 64 hex characters nor a file")
    data = p.read_bytes()
    try:
        pub = serialization.load_pem_public_key(data)
        if isinstance(pub, Ed25519PublicKey):
            return public_bytes(pub)
    except ValueError:
        pass
    return public_bytes(load_key(p))


def describe(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"id": key_id(key), "public_key": public_bytes(key).hex()}

"""Worker-call sessions: an HMAC key per (gateway, node) instead of an Ed25519 signature per call.

The gateway authenticates every ``Worker.Infer``/``Info`` call it makes. Signing each
one with Ed25519 (:func:`hyperinfer.verify.operators.sign_call`) costs the gateway
about 0.1 ms and the node about 0.3 ms per request, on the request path. Caller
authentication needs no signature anyone can check, only a proof the node can
check, so after the join both sides share a key and a call carries an HMAC-SHA256
over the same bytes a signature would cover
(:func:`hyperinfer.verify.operators.call_payload`: method, node id, timestamp,
nonce, request id, model and version), checked with the same timestamp window
and the same single-use rule.

Key agreement, at join (X25519 + HKDF-SHA256):

* the node makes a fresh X25519 key for each join and sends its public half in
  the ``JoinRequest`` with an Ed25519 signature by the node key over
  :func:`node_kx_payload` (the join nonce, gateway id, node id, the X25519 key),
  so the key is bound to the node's identity and to this join;
* the gateway answers with its X25519 public key and its Ed25519 signature over
  :func:`gateway_kx_payload` (gateway id, X25519 key), checked by the node against
  the gateway key it pinned. The gateway's X25519 key is derived from its Ed25519
  private key (:func:`gateway_kx_key`), so every worker process of
  ``gateway --workers N`` (one key file) computes the same one, and no secret is
  written to the store: the store keeps only the node's public X25519 key;
* both compute the X25519 shared secret and :func:`derive_session` (HKDF-SHA256,
  salt: both public keys, info: gateway id and node id) -> the MAC key and a
  session id (a public label the node looks the key up by).

A re-join makes a new node X25519 key, hence a new session; the node forgets the
old one. Nothing here logs or prints a key. No gRPC, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hyperinfer.errors import InvalidArgument, Unauthenticated
from hyperinfer.verify.operators import CALL_WINDOW_S, NONCE_HEADER, TS_HEADER, call_payload
from hyperinfer.verify.payloads import canonical
from hyperinfer.verify.signing import fingerprint, public_bytes, sign, verify_signature

SESSION_HEADER = "x-hyperinfer-session"  # hex session id (public label of the MAC key)
MAC_HEADER = "x-hyperinfer-mac"  # hex HMAC-SHA256 over call_payload(...)
KX_BYTES = 32  # raw X25519 public key
_SESSION_ID_BYTES = 16


# ----------------------------------------------------------------- key agreement

def new_kx_key() -> X25519PrivateKey:
    """A fresh X25519 key (the node makes one per join)."""
    return X25519PrivateKey.generate()


def gateway_kx_key(signing_key: Ed25519PrivateKey) -> X25519PrivateKey:
    """The gateway's X25519 key, derived from its Ed25519 private key (HKDF, own domain): every
    process holding the gateway's key file has it, nothing else needs to be kept."""
    raw = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    seed = HKDF(hashes.SHA256(), 32, salt=None, info=b"hyperinfer-gateway-kx-v1").derive(raw)
    return X25519PrivateKey.from_private_bytes(seed)


def kx_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def gateway_kx_offer(signing_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """The gateway's X25519 public key and its signature over :func:`gateway_kx_payload`."""
    pub = kx_public(gateway_kx_key(signing_key))
    return pub, sign(signing_key, gateway_kx_payload(gateway_id=fingerprint(public_bytes(signing_key)),
                                                      kx_public_key=pub))


def node_kx_payload(*, nonce: bytes, gateway_id: str, node_id: str, kx_public_key: bytes) -> bytes:
    """What a node signs to bind its join's X25519 key to its identity and to this join."""
    return canonical("node-kx", {"nonce": bytes(nonce).hex(), "gateway_id": gateway_id, "node_id": node_id,
                                 "kx_public_key": bytes(kx_public_key).hex()})


def gateway_kx_payload(*, gateway_id: str, kx_public_key: bytes) -> bytes:
    """What a gateway signs for its X25519 key."""
    return canonical("gateway-kx", {"gateway_id": gateway_id, "kx_public_key": bytes(kx_public_key).hex()})


def sign_node_kx(node_key: Ed25519PrivateKey, kx_public_key: bytes, *, nonce: bytes, gateway_id: str) -> bytes:
    return sign(node_key, node_kx_payload(nonce=nonce, gateway_id=gateway_id, node_id=fingerprint(
        public_bytes(node_key)), kx_public_key=kx_public_key))


def check_node_kx(node_public_key: bytes, kx_public_key: bytes, signature: bytes, *, nonce: bytes,
                  gateway_id: str) -> None:
    """Raise unless the node key signed this X25519 key for this join (gateway side)."""
    if len(kx_public_key) != KX_BYTES:
        raise InvalidArgument(f"kx_public_key: expected {KX_BYTES} bytes (raw X25519), got {len(kx_public_key)}")
    payload = node_kx_payload(nonce=nonce, gateway_id=gateway_id, node_id=fingerprint(bytes(node_public_key)),
                              kx_public_key=kx_public_key)
    if not verify_signature(node_public_key, payload, signature):
        raise Unauthenticated("kx_signature does not verify with public_key (it must sign "
                              "verify.session.node_kx_payload over this nonce, gateway id and kx_public_key)")


def check_gateway_kx(gateway_public_key: bytes, kx_public_key: bytes, signature: bytes) -> None:
    """Raise unless the gateway key signed this X25519 key (node side, against the pinned key)."""
    if len(kx_public_key) != KX_BYTES:
        raise Unauthenticated(f"gateway_kx_public_key: expected {KX_BYTES} bytes, got {len(kx_public_key)}")
    payload = gateway_kx_payload(gateway_id=fingerprint(bytes(gateway_public_key)), kx_public_key=kx_public_key)
    if not verify_signature(gateway_public_key, payload, signature):
        raise Unauthenticated("gateway_kx_signature does not verify with the gateway's key")


@dataclass(frozen=True)
class Session:
    """A Worker-call MAC key between one gateway and one node. ``repr`` never shows the key."""

    session_id: str
    gateway_id: str
    node_id: str
    key: bytes

    def __repr__(self) -> str:
        return f"Session(id={self.session_id}, gateway={self.gateway_id[:12]}, node={self.node_id[:12]})"


def derive_session(own: X25519PrivateKey, peer_public_key: bytes, *, gateway_id: str, node_id: str,
                   node_kx_public_key: bytes, gateway_kx_public_key: bytes) -> Session:
    """Both sides compute the same session: X25519(own, peer) -> HKDF-SHA256 (salt: the node's then
    the gateway's X25519 public keys; info: gateway id and node id) -> 32-byte MAC key + id."""
    if len(peer_public_key) != KX_BYTES:
        raise InvalidArgument(f"X25519 public key: expected {KX_BYTES} bytes, got {len(peer_public_key)}")
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public_key)))
    except ValueError as e:  # a low-order point gives an all-zero secret: cryptography refuses it
        raise Unauthenticated(f"X25519 key agreement failed ({e})") from None
    okm = HKDF(hashes.SHA256(), 32 + _SESSION_ID_BYTES, salt=bytes(node_kx_public_key) + bytes(gateway_kx_public_key),
               info=b"hyperinfer-worker-call-v1\0" + gateway_id.encode() + b"\0" + node_id.encode()).derive(shared)
    return Session(okm[32:].hex(), gateway_id, node_id, okm[:32])


def gateway_session(signing_key: Ed25519PrivateKey, node_id: str, node_kx_public_key: bytes,
                    kx: X25519PrivateKey | None = None) -> Session:
    """The gateway's side of the session with a node, from the node's stored X25519 key (``kx``: the
    gateway's X25519 key if already derived)."""
    kx = kx or gateway_kx_key(signing_key)
    return derive_session(kx, node_kx_public_key, gateway_id=fingerprint(public_bytes(signing_key)),
                          node_id=node_id, node_kx_public_key=node_kx_public_key,
                          gateway_kx_public_key=kx_public(kx))


# ----------------------------------------------------------------- MAC'd calls

def mac_call(session: Session, method: str, fields: Mapping[str, Any] | None = None,
             timestamp_ms: int | None = None) -> list[tuple[str, str]]:
    """gRPC metadata that proves the session's gateway made this call to the session's node
    (the HMAC counterpart of :func:`hyperinfer.verify.operators.sign_call`)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    nonce = secrets.token_hex(8)
    mac = hmac.new(session.key, call_payload(method, session.node_id, ts, fields, nonce), hashlib.sha256).digest()
    return [(SESSION_HEADER, session.session_id), (TS_HEADER, str(ts)), (NONCE_HEADER, nonce),
            (MAC_HEADER, mac.hex())]


@dataclass(frozen=True)
class MacCaller:
    session_id: str
    timestamp_ms: int
    mac: bytes
    nonce: str = ""

    @property
    def signature(self) -> bytes:  # what the replay guard keys on
        return self.mac


def mac_caller_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> MacCaller | None:
    """The session headers of a request, or None when it carries none."""
    md = {k: v for k, v in (metadata or ())}
    if SESSION_HEADER not in md:
        return None
    sid = str(md[SESSION_HEADER])
    nonce = str(md.get(NONCE_HEADER, ""))
    try:
        ts = int(str(md.get(TS_HEADER, "")))
        mac = bytes.fromhex(str(md.get(MAC_HEADER, "")))
        bytes.fromhex(sid)
    except ValueError:
        raise Unauthenticated("session call: malformed x-hyperinfer-* headers") from None
    if len(sid) != 2 * _SESSION_ID_BYTES or len(mac) != 32 or len(nonce) > 64:
        raise Unauthenticated("session call: malformed x-hyperinfer-* headers")
    return MacCaller(sid, ts, mac, nonce)


def check_mac(caller: MacCaller, session: Session, method: str, fields: Mapping[str, Any] | None = None,
              now_ms: int | None = None, window_s: float = CALL_WINDOW_S) -> MacCaller:
    """The caller, if its MAC over this call (to ``session.node_id``) verifies and is fresh;
    Unauthenticated otherwise (same window and messages as a signed call)."""
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if abs(now - caller.timestamp_ms) > window_s * 1000:
        raise Unauthenticated(f"{method}: signed call timestamp is {abs(now - caller.timestamp_ms) / 1000:.0f} s "
                              f"off this clock (at most {window_s:.0f} s)")
    want = hmac.new(session.key, call_payload(method, session.node_id, caller.timestamp_ms, fields, caller.nonce),
                    hashlib.sha256).digest()
    if not hmac.compare_digest(want, caller.mac):
        raise Unauthenticated(f"{method}: call MAC does not verify")
    return caller

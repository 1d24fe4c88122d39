"""Operator certificates and signed calls between pool members (pure logic, no I/O).

An *operator* runs nodes. It has its own Ed25519 key; the gateway operator
admits it (``hyperinfer operators add``) with a bond. Each node of the operator
carries a certificate: the operator key's signature over the node's public key
(``hyperinfer operators certify``). The gateway files the node under the
operator's id, so nodes of one operator share its bond, its faults and its
quarantine, and are never each other's validators. A fresh node key under the
same operator therefore washes nothing away.

Signed calls: a caller proves who it is on an RPC by signing
:func:`call_payload` (method, audience, timestamp, the request fields that
matter) and sending key, timestamp and signature as gRPC metadata
(:data:`KEY_HEADER`, :data:`TS_HEADER`, :data:`SIG_HEADER`). The gateway signs
``Worker.Infer``/``Info`` this way (a node serves only its gateways); nodes
sign ``Pool.FetchArtifact`` and admins sign ``Pool.Status``. A
:class:`ReplayGuard` refuses a signature seen before within the window.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hyperinfer.errors import InvalidArgument, PermissionDenied, Unauthenticated
from hyperinfer.verify.payloads import canonical
from hyperinfer.verify.signing import fingerprint, public_bytes, sign, verify_signature

CERT_FORMAT = "hyperinfer-operator-cert-v1"
MAX_CERT_BYTES = 4096

KEY_HEADER = "x-hyperinfer-key"  # hex raw Ed25519 public key of the caller
TS_HEADER = "x-hyperinfer-ts"  # caller's unix ms
SIG_HEADER = "x-hyperinfer-sig"  # hex signature over call_payload(...)
NONCE_HEADER = "x-hyperinfer-nonce"  # random hex: two calls in one millisecond still sign different bytes
CALL_WINDOW_S = 120.0  # a signed call older or newer than this is refused (clock skew + transit)


# ----------------------------------------------------------------- certificates

@dataclass(frozen=True)
class OperatorCert:
    operator_public_key: bytes
    node_public_key: bytes
    issued_ms: int
    signature: bytes
    name: str = ""  # the operator's name as it certified (informational; the id is what counts)

    @property
    def operator_id(self) -> str:
        return fingerprint(self.operator_public_key)

    @property
    def node_id(self) -> str:
        return fingerprint(self.node_public_key)

    def signed_bytes(self) -> bytes:
        return cert_payload(self.operator_public_key, self.node_public_key, self.issued_ms, self.name)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": CERT_FORMAT, "operator_id": self.operator_id,
            "operator_public_key": self.operator_public_key.hex(), "node_id": self.node_id,
            "node_public_key": self.node_public_key.hex(), "issued_ms": int(self.issued_ms), "name": self.name,
            "signature": base64.b64encode(self.signature).decode(),
        }, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "OperatorCert":
        """Parse (not verify) a certificate; InvalidArgument naming what is wrong."""
        if len(data) > MAX_CERT_BYTES:
            raise InvalidArgument(f"operator_cert: {len(data)} bytes, at most {MAX_CERT_BYTES}")
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != CERT_FORMAT:
                raise ValueError(f"format is not {CERT_FORMAT}")
            cert = cls(bytes.fromhex(d["operator_public_key"]), bytes.fromhex(d["node_public_key"]),
                       int(d["issued_ms"]), base64.b64decode(d["signature"], validate=True), str(d.get("name", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"operator_cert: not a hyperinfer operator certificate ({e})") from None
        if len(cert.operator_public_key) != 32 or len(cert.node_public_key) != 32:
            raise InvalidArgument("operator_cert: keys must be 32-byte Ed25519 public keys")
        return cert


def cert_payload(operator_public_key: bytes, node_public_key: bytes, issued_ms: int, name: str = "") -> bytes:
    return canonical("operator-cert", {
        "operator_id": fingerprint(operator_public_key), "operator_public_key": operator_public_key.hex(),
        "node_id": fingerprint(node_public_key), "node_public_key": node_public_key.hex(),
        "issued_ms": int(issued_ms), "name": name,
    })


def certify(operator_key: Any, node_public_key: bytes, name: str = "", issued_ms: int | None = None) -> OperatorCert:
    """The operator's certificate for one node key."""
    if len(node_public_key) != 32:
        raise InvalidArgument("node public key: expected 32 bytes (raw Ed25519)")
    op_pub = public_bytes(operator_key)
    ts = int(time.time() * 1000) if issued_ms is None else int(issued_ms)
    return OperatorCert(op_pub, bytes(node_public_key), ts,
                        sign(operator_key, cert_payload(op_pub, node_public_key, ts, name)), name)


def verify_cert(data: bytes, node_public_key: bytes) -> OperatorCert:
    """The parsed certificate if it is the operator key's signature over exactly this node key."""
    cert = OperatorCert.from_bytes(data)
    if cert.node_public_key != bytes(node_public_key):
        raise PermissionDenied(f"operator_cert: certifies node {cert.node_id[:12]}, not this node "
                               f"({fingerprint(bytes(node_public_key))[:12]})")
    if not verify_signature(cert.operator_public_key, cert.signed_bytes(), cert.signature):
        raise Unauthenticated("operator_cert: the operator's signature does not verify")
    return cert


# ----------------------------------------------------------------- signed calls

def call_payload(method: str, audience: str, timestamp_ms: int, fields: Mapping[str, Any] | None = None,
                 nonce: str = "") -> bytes:
    """What a caller signs for one RPC: the method, who it is meant for (a node or gateway id),
    the time, a random nonce, and the request fields that decide what is done."""
    return canonical("call", {"method": method, "audience": audience, "timestamp_ms": int(timestamp_ms),
                              "nonce": nonce, "fields": dict(fields or {})})


def infer_fields(request_id: str, model_name: str, model_version: int) -> dict[str, Any]:
    """What a gateway signs on ``Worker.Infer``."""
    return {"request_id": request_id, "model_name": model_name, "model_version": int(model_version)}


def fetch_fields(model_name: str, model_version: int, target_id: str, sha256: str, offset: int) -> dict[str, Any]:
    """What a node signs on ``Pool.FetchArtifact``."""
    return {"model_name": model_name, "model_version": int(model_version), "target_id": target_id,
            "sha256": sha256, "offset": int(offset)}


def sign_call(key: Any, method: str, audience: str, fields: Mapping[str, Any] | None = None,
              timestamp_ms: int | None = None) -> list[tuple[str, str]]:
    """gRPC metadata that proves ``key`` made this call."""
    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    nonce = secrets.token_hex(8)
    sig = sign(key, call_payload(method, audience, ts, fields, nonce))
    return [(KEY_HEADER, public_bytes(key).hex()), (TS_HEADER, str(ts)), (NONCE_HEADER, nonce),
            (SIG_HEADER, sig.hex())]


@dataclass(frozen=True)
class Caller:
    public_key: bytes
    timestamp_ms: int
    signature: bytes
    nonce: str = ""

    @property
    def key_id(self) -> str:
        return fingerprint(self.public_key)


def caller_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> Caller | None:
    """The signed-call headers of a request, or None when it carries none (a stranger)."""
    md = {k: v for k, v in (metadata or ())}
    if KEY_HEADER not in md:
        return None
    try:
        key = bytes.fromhex(str(md[KEY_HEADER]))
        ts = int(str(md.get(TS_HEADER, "")))
        sig = bytes.fromhex(str(md.get(SIG_HEADER, "")))
    except ValueError:
        raise Unauthenticated("signed call: malformed x-hyperinfer-* headers") from None
    nonce = str(md.get(NONCE_HEADER, ""))
    if len(key) != 32 or len(sig) != 64 or len(nonce) > 64:
        raise Unauthenticated("signed call: malformed x-hyperinfer-* headers")
    return Caller(key, ts, sig, nonce)


def check_call(caller: Caller | None, method: str, audience: str, fields: Mapping[str, Any] | None = None,
               now_ms: int | None = None, window_s: float = CALL_WINDOW_S) -> Caller:
    """The caller, if its signature over this call verifies and is fresh; Unauthenticated otherwise."""
    if caller is None:
        raise Unauthenticated(f"{method}: this call must be signed (x-hyperinfer-key/-ts/-sig metadata)")
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if abs(now - caller.timestamp_ms) > window_s * 1000:
        raise Unauthenticated(f"{method}: signed call timestamp is {abs(now - caller.timestamp_ms) / 1000:.0f} s "
                              f"off this clock (at most {window_s:.0f} s)")
    if not verify_signature(caller.public_key, call_payload(method, audience, caller.timestamp_ms, fields,
                                                            caller.nonce), caller.signature):
        raise Unauthenticated(f"{method}: call signature does not verify")
    return caller


class ReplayGuard:
    """Refuses a signature seen within the window (a captured signed call cannot be sent again).
    Bounded: entries older than the window are dropped, and at most ``max_entries`` are kept."""

    def __init__(self, window_s: float = CALL_WINDOW_S, max_entries: int = 200_000):
        self.window_ms = int(2 * window_s * 1000)  # a timestamp may be up to window_s in the future
        self.max_entries = max_entries
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def check(self, caller: Caller, now_ms: int | None = None) -> None:
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        with self._lock:
            if caller.signature in self._seen:
                raise Unauthenticated("signed call replayed (this signature was already used)")
            if len(self._seen) >= self.max_entries:
                cutoff = now - self.window_ms
                self._seen = {s: t for s, t in self._seen.items() if t >= cutoff}
                if len(self._seen) >= self.max_entries:
                    # dicts keep insertion order: drop the oldest half
                    for s in list(self._seen)[: self.max_entries // 2]:
                        del self._seen[s]
            self._seen[caller.signature] = now

"""A node works only for its gateway: which keys may call ``Worker.Infer``/``Info``.

The node pins the key of the gateway it joins (from the Challenge, checked against
the gateway id; or given up front with ``--gateway-key``). A re-join that presents
another key is refused, so a stranger who takes over the gateway's address gets
nothing. The pinned gateway vouches for the other gateways of its pool (several
share a PostgreSQL store): their keys come in the Join and Heartbeat answers and
are accepted too, while the pinned gateway keeps announcing them.

Every Worker call must carry a proof over
:func:`hyperinfer.verify.operators.call_payload` (method, this node's id, the
request id and model), fresh and used once: an HMAC with a session key
(:mod:`hyperinfer.verify.session`, the fast path), or an Ed25519 signature by
one of these keys (gateways without a session with this node). Sessions are
agreed from the X25519 key the node sent in its last join: with the joined
gateway at once, with the pool's other gateways when the pinned gateway
announces their signed X25519 keys. A session call counts only while its
gateway's key is still pinned or announced.
Strangers get UNAUTHENTICATED (no, bad or unknown-session proof) or
PERMISSION_DENIED (a key that is not the pool's), before any model runs and
before ``Info`` says anything.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from hyperinfer.errors import HyperinferError, PermissionDenied, Unauthenticated
from hyperinfer.verify.operators import ReplayGuard, caller_from_metadata, check_call, infer_fields  # noqa: F401
from hyperinfer.verify.session import Session, check_gateway_kx, check_mac, derive_session, mac_caller_from_metadata
from hyperinfer.verify.signing import fingerprint

log = logging.getLogger("hyperinfer.node")


class Gatekeeper:
    """``pin_file``: where the pinned key is kept (in the node's cache), so a restarted node
    still refuses a gateway with another key; ``pinned`` (``--gateway-key``) overrides it."""

    def __init__(self, node_id: str, pinned: bytes | None = None, pin_file: "os.PathLike | str | None" = None):
        self.node_id = node_id
        self.pin_file = Path(pin_file) if pin_file is not None else None
        if not pinned and self.pin_file is not None and self.pin_file.is_file():
            try:
                pinned = bytes.fromhex(self.pin_file.read_text().strip())
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s", self.pin_file)
                pinned = None
        self._pinned: bytes | None = bytes(pinned) if pinned and len(pinned) == 32 else None
        self._pool: set[bytes] = set()
        self._lock = threading.Lock()
        self._replay = ReplayGuard()
        # Worker-call sessions, all made with the X25519 key of the node's last join:
        # session id -> (gateway key, session), one per gateway; gateway key -> its X25519 key
        self._sessions: dict[str, tuple[bytes, Session]] = {}
        self._kx_seen: dict[bytes, bytes] = {}
        self._node_kx: tuple[Any, bytes] | None = None
        self.accepted = {"session": 0, "signed": 0}  # Worker calls let through, by proof

    @property
    def pinned(self) -> bytes | None:
        return self._pinned

    def pin(self, gateway_key: bytes, gateway_id: str = "") -> None:
        """The key of the gateway being joined; refuse a different one than pinned before."""
        key = bytes(gateway_key)
        if len(key) != 32:
            raise Unauthenticated("the gateway sent no valid public key; refusing to join it")
        if gateway_id and fingerprint(key) != gateway_id:
            raise Unauthenticated("gateway id does not match the gateway's public key")
        with self._lock:
            if self._pinned is not None and self._pinned != key:
                raise Unauthenticated(
                    f"the gateway now presents key {fingerprint(key)[:12]}, not the pinned "
                    f"{fingerprint(self._pinned)[:12]}; refusing to join it (restart the node with --gateway-key to "
                    "trust another gateway" + (f", or remove {self.pin_file}" if self.pin_file else "") + ")")
            self._pinned = key
        if self.pin_file is not None:
            try:
                if not (self.pin_file.is_file() and self.pin_file.read_text().strip() == key.hex()):
                    self.pin_file.parent.mkdir(parents=True, exist_ok=True)
                    self.pin_file.write_text(key.hex() + "\n")
            except OSError as e:
                log.warning("could not keep the pinned gateway key in %s: %s", self.pin_file, e)

    def announce(self, keys: Iterable[bytes]) -> None:
        """The pinned gateway's list of its pool's gateways (replaces the previous list)."""
        pool = {bytes(k) for k in keys if len(bytes(k)) == 32}
        with self._lock:
            if pool != self._pool:
                log.info("pool gateways: %s", ", ".join(sorted(fingerprint(k)[:12] for k in pool)) or "none")
            self._pool = pool

    def allowed(self) -> set[bytes]:
        with self._lock:
            return ({self._pinned} if self._pinned else set()) | self._pool

    def establish(self, gateway_key: bytes, gateway_kx_public_key: bytes, gateway_kx_signature: bytes,
                  node_kx: Any, node_kx_public_key: bytes) -> Session:
        """After a join: the node's new X25519 key (``node_kx``) replaces the old one and every session
        made with it (a re-join rotates them all), and the joined gateway's X25519 key, which must
        carry its signature, gives the first session. Other gateways' come with :meth:`learn`."""
        key = bytes(gateway_key)
        if key not in self.allowed():
            raise Unauthenticated(f"gateway {fingerprint(key)[:12]} is not pinned or announced; no session with it")
        check_gateway_kx(key, bytes(gateway_kx_public_key), bytes(gateway_kx_signature))
        session = derive_session(node_kx, bytes(gateway_kx_public_key), gateway_id=fingerprint(key),
                                 node_id=self.node_id, node_kx_public_key=bytes(node_kx_public_key),
                                 gateway_kx_public_key=bytes(gateway_kx_public_key))
        with self._lock:
            self._node_kx = (node_kx, bytes(node_kx_public_key))
            self._sessions = {session.session_id: (key, session)}
            self._kx_seen = {key: bytes(gateway_kx_public_key)}
        log.info("worker-call session with gateway %s established", fingerprint(key)[:12])
        return session

    def learn(self, entries: Iterable[tuple[bytes, bytes, bytes]]) -> int:
        """Sessions with the pool's other gateways: ``entries`` are (Ed25519 key, X25519 key, signature)
        as the pinned gateway announces them (from the shared store). One whose key is not pinned or
        announced, or whose X25519 key does not carry its signature, is skipped. Returns how many
        sessions were added."""
        with self._lock:
            node_kx, seen = self._node_kx, dict(self._kx_seen)
        if node_kx is None:
            return 0
        allowed, added = self.allowed(), []
        for gateway_key, kx_pub, sig in entries:
            key, kx_pub = bytes(gateway_key), bytes(kx_pub)
            if key not in allowed or seen.get(key) == kx_pub:
                continue
            try:
                check_gateway_kx(key, kx_pub, bytes(sig))
                session = derive_session(node_kx[0], kx_pub, gateway_id=fingerprint(key), node_id=self.node_id,
                                         node_kx_public_key=node_kx[1], gateway_kx_public_key=kx_pub)
            except HyperinferError as e:
                log.warning("no worker-call session with gateway %s: %s", fingerprint(key)[:12], e)
                continue
            seen[key] = kx_pub
            added.append((key, session))
        if added:
            with self._lock:
                if self._node_kx is not node_kx:
                    return 0  # re-joined meanwhile: these belong to the old key
                sessions = {sid: v for sid, v in self._sessions.items() if v[0] not in {k for k, _ in added}}
                sessions.update({s.session_id: (k, s) for k, s in added})
                self._sessions, self._kx_seen = sessions, seen
            log.info("worker-call sessions with gateways %s", ", ".join(fingerprint(k)[:12] for k, _ in added))
        return len(added)

    def forget_sessions(self) -> None:
        """Drop every session (the node re-joined a gateway that agreed none: it signs its calls)."""
        with self._lock:
            self._sessions, self._kx_seen, self._node_kx = {}, {}, None

    def session_count(self) -> int:
        return len(self._sessions)

    def check(self, metadata: Any, method: str, fields: Mapping[str, Any] | None = None) -> None:
        """Raise unless one of the pool's gateways made this call (session HMAC or signature)."""
        mac_caller = mac_caller_from_metadata(metadata)
        if mac_caller is not None:
            entry = self._sessions.get(mac_caller.session_id)  # dict read is atomic; replaced, never mutated
            if entry is None:
                raise Unauthenticated(f"{method}: unknown worker-call session (the node re-joined or restarted; "
                                      "sign the call instead)")
            if entry[0] not in self.allowed():
                raise PermissionDenied(f"{method}: key {fingerprint(entry[0])[:12]} is not a gateway of this "
                                       "node's pool")
            check_mac(mac_caller, entry[1], method, fields)
            self._replay.check(mac_caller)  # type: ignore[arg-type] - keyed on the MAC bytes
            with self._lock:
                self.accepted["session"] += 1
            return
        caller = caller_from_metadata(metadata)
        if caller is None:
            raise Unauthenticated(f"{method}: this node serves only its pool's gateways (unsigned call)")
        allowed = self.allowed()
        if not allowed:
            raise Unauthenticated(f"{method}: this node has not joined a gateway yet")
        if caller.public_key not in allowed:
            raise PermissionDenied(f"{method}: key {caller.key_id[:12]} is not a gateway of this node's pool")
        check_call(caller, method, self.node_id, fields)
        self._replay.check(caller)
        with self._lock:
            self.accepted["signed"] += 1

"""The node registry: who is in the pool, whether they are alive, what they serve (design §7).

Plain Python, no gRPC. The Pool servicer calls :meth:`Registry.challenge`,
:meth:`~Registry.join`, :meth:`~Registry.heartbeat` and :meth:`~Registry.leave`;
the scheduler calls :meth:`~Registry.schedulable_nodes` and
:meth:`~Registry.report_failure`; the ledger calls :meth:`~Registry.set_state`
to quarantine a node.

Join protocol::

    node -> Challenge(public_key)         gateway: a 32-byte nonce, single use, 60 s, bound to the key
    node -> Join(public_key, nonce, signature over verify.payloads.join_payload(...), declaration)
                                          gateway: node_id = fingerprint(public_key)

Challenges are stateless: the nonce is ``expires (8 bytes) | random (8) | HMAC-SHA256(pool
secret, public key | expires | random)[:16]``, the secret kept in the store (``pool_secrets``,
shared by every gateway of a shared store). Issuing one writes nothing, so a flood of
Challenge calls costs a hash each and cannot fill a table or block joins; a nonce is
written (to ``challenges``, until it expires) only when a join with a valid signature uses it.

States (stored): ``healthy``, ``stale``, ``left``, ``quarantined``. A healthy
node whose last heartbeat is older than ``3 * heartbeat_interval`` is
``stale`` (computed on every read, and written back by :meth:`sweep`). A node
reported failed by the scheduler keeps its state but is not schedulable until
its next heartbeat. Quarantine outlives re-joins, heartbeats and restarts;
only ``set_state(node_id, "healthy")`` lifts it. After a gateway restart every
node is ``stale`` until it heartbeats again.

Several gateways on one shared store (PostgreSQL, ``store.shared``): a node
joins and heartbeats one of them; every gateway reads the nodes table (cached
for ``cache_ttl`` seconds, 0.5 s by default) and so schedules it too. Writes that
could race another gateway are conditional in the store: a heartbeat or re-join
never overwrites a quarantine, the sweep marks a node stale only if its stored
last heartbeat is still old, a nonce is claimed once. A restart does not mark
nodes stale there (the other gateways are still receiving their heartbeats);
liveness is computed from the stored last heartbeat, so gateway clocks should
agree within a heartbeat interval (NTP). ``report_failure`` marks stay per
gateway (a node unreachable from one may be fine from another).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from hyperinfer.errors import (
    InvalidArgument, NotFound, PermissionDenied, Unauthenticated,
)
from hyperinfer.gateway.store import NodeRecord, Store
from hyperinfer.verify import payloads
from hyperinfer.verify.signing import fingerprint, verify_signature

log = logging.getLogger("hyperinfer.gateway")

HEALTHY, STALE, LEFT, QUARANTINED = "healthy", "stale", "left", "quarantined"
STATES = (HEALTHY, STALE, LEFT, QUARANTINED)

NONCE_BYTES = 32
CHALLENGE_TTL_S = 60.0
MAX_CLOCK_SKEW_S = 300.0
STALE_AFTER_INTERVALS = 3
_CHALLENGE_SECRET = "join-challenge"

_TARGET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_MAX_TARGETS = 64
_MAX_LOADED = 1024
_MAX_DEVICES = 64
_MAX_TEXT = 256


class ArtifactIndex(Protocol):
    """What the registry needs from the catalog: the manifest's digest for a target."""

    def artifact_sha256(self, name: str, version: int, target_id: str) -> str | None: ...

    def versions(self, name: str) -> list[int]: ...


@dataclass(frozen=True)
class NodeInfo:
    """A node as the scheduler and status see it. ``state`` includes liveness (stale)."""

    node_id: str
    public_key: bytes
    operator: str
    address: str
    targets: tuple[str, ...]
    # (model name, version) -> (target id, artifact sha256), as the node last reported
    loaded: Mapping[tuple[str, int], tuple[str, str]]
    outstanding: int
    capacity: int
    state: str
    last_heartbeat: float  # unix seconds, gateway clock
    joined_at: float = 0.0
    devices: tuple[dict[str, Any], ...] = ()
    failed: bool = False  # reported failed by the scheduler since its last heartbeat
    software_version: str = ""
    kx_public_key: bytes = b""  # X25519 key of its last join (verify.session)
    kx_gateway: str = ""  # the gateway that agreed a Worker-call session with it ("" none)

    @property
    def schedulable(self) -> bool:
        return self.state == HEALTHY and not self.failed

    def __hash__(self) -> int:  # `loaded` is a dict; hash by identity of the node
        return hash(self.node_id)


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires: float  # unix seconds


@dataclass(frozen=True)
class JoinRequest:
    public_key: bytes
    nonce: bytes
    signature: bytes
    operator: str
    listen_address: str
    targets: Sequence[str]
    max_concurrency: int
    devices: Sequence[dict[str, Any]] = field(default_factory=tuple)
    software_version: str = ""
    operator_cert: bytes = b""  # hyperinfer.verify.operators certificate (closed pools need one)
    kx_public_key: bytes = b""  # X25519 key for the Worker-call session (verify.session); b"": none
    kx_signature: bytes = b""  # the node key's signature over verify.session.node_kx_payload


@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    timestamp_ms: int
    outstanding: int
    capacity: int
    loaded: Sequence[tuple[str, int, str, str]]  # (name, version, target id, artifact sha256)
    signature: bytes


def validate_address(address: str) -> str:
    """``host:port`` or ``[v6]:port`` a gateway can dial; raise InvalidArgument naming the field."""
    where = f"listen_address {address!r}"
    if not address or len(address) > _MAX_TEXT:
        raise InvalidArgument(f"{where}: expected host:port")
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"{where}: expected host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{where}: port must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"{where}: {host} is not an IPv6 address") from None
    elif not _HOST_RE.match(host):
        raise InvalidArgument(f"{where}: {host!r} is not a host name or IPv4 address")
    if host in ("0.0.0.0", "[::]"):
        raise InvalidArgument(f"{where}: a wildcard address cannot be dialled; give the node's reachable address")
    return address


def validate_targets(targets: Iterable[str]) -> tuple[str, ...]:
    out = tuple(targets)
    if not out:
        raise InvalidArgument("targets: empty; a node must declare at least one target id it can run")
    if len(out) > _MAX_TARGETS:
        raise InvalidArgument(f"targets: {len(out)} given, at most {_MAX_TARGETS}")
    for t in out:
        if not _TARGET_RE.match(t):
            raise InvalidArgument(f"targets: invalid target id {t!r} (expected e.g. cpu-x86_64, cuda-sm90)")
    if len(set(out)) != len(out):
        raise InvalidArgument("targets: duplicate target ids")
    return out


def _check_text(field_name: str, value: str, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field_name}: must not be empty")
    if len(value) > _MAX_TEXT or not value.isprintable():
        raise InvalidArgument(f"{field_name}: at most {_MAX_TEXT} printable characters")
    return value


def _check_public_key(public_key: bytes) -> None:
    if len(public_key) != 32:
        raise InvalidArgument(f"public_key: expected 32 bytes (raw Ed25519), got {len(public_key)}")


def short(node_id: str) -> str:
    return node_id[:12]


class Registry:
    """Node registry on top of a :class:`Store`. Thread-safe.

    ``clock`` returns unix seconds (inject one in tests); ``catalog`` tells
    which artifact digest each model's manifest lists for each target.
    """

    def __init__(
        self, store: Store, *, gateway_id: str, catalog: ArtifactIndex | None = None,
        heartbeat_interval: float = 5.0, clock: Callable[[], float] = time.time,
        cache_ttl: float = 0.5, operators: Any = None, open_pool: bool = True,
    ):
        if heartbeat_interval <= 0:
            raise InvalidArgument(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        self.store = store
        self.gateway_id = gateway_id
        # admission (gateway.admission): with an OperatorBook a node is filed under its operator's
        # id; without one (unit tests of the registry alone) under the operator name it declares
        self.operators = operators
        self.open_pool = bool(open_pool)
        self.catalog = catalog
        self.heartbeat_interval = float(heartbeat_interval)
        self.clock = clock
        self._lock = threading.RLock()
        # node id -> its last heartbeat (ms) when it was reported failed; a newer heartbeat
        # clears the mark (on a shared store: one another gateway recorded)
        self._failed: dict[str, int] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []
        # write-through cache of the nodes table: the scheduler reads it on every request.
        # With one gateway per store it is always current; on a shared store other gateways
        # write too, so it is re-read when older than cache_ttl (monotonic seconds).
        self._records: dict[str, NodeRecord] = {}
        self._infos: dict[str, tuple[NodeRecord, NodeInfo]] = {}  # node id -> (record, its NodeInfo)
        self._secret: bytes | None = None  # HMAC key of join challenges (pool_secrets), read once
        self.shared = bool(getattr(store, "shared", False))
        self.cache_ttl = float(cache_ttl)
        self._read_at = time.monotonic()
        if self.shared:
            self._records = {r.node_id: r for r in store.list_nodes()}
        else:
            self._restart_marks_stale()

    @property
    def stale_after(self) -> float:
        return STALE_AFTER_INTERVALS * self.heartbeat_interval

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _restart_marks_stale(self) -> None:
        # what a previous gateway process believed about liveness is not evidence now
        for rec in self.store.list_nodes():
            if rec.state == HEALTHY:
                self.store.set_node_state(rec.node_id, STALE)
                rec = replace(rec, state=STALE)
            self._records[rec.node_id] = rec

    def _refresh(self, force: bool = False) -> None:
        """On a shared store, re-read the nodes other gateways wrote (at most every cache_ttl)."""
        if not self.shared or (not force and time.monotonic() - self._read_at < self.cache_ttl):
            return
        changed = []
        with self._lock:  # read under the lock: a write this registry makes meanwhile is not undone
            if not force and time.monotonic() - self._read_at < self.cache_ttl:
                return  # another thread just read
            records = {r.node_id: r for r in self.store.list_nodes()}
            self._read_at = time.monotonic()
            for node_id, rec in records.items():
                old = self._records.get(node_id)
                if old is not None and old.state != rec.state:
                    changed.append((node_id, old.state, rec.state))
                if self._failed.get(node_id, rec.last_heartbeat_ms) < rec.last_heartbeat_ms:
                    del self._failed[node_id]  # alive again: it heartbeated (to another gateway)
            self._records = records
        for node_id, old, new in changed:
            self._changed(node_id, old, new, "seen in the shared store")

    def reload(self) -> None:
        """Re-read the nodes table now (shared store): the ledger calls this when it finds a node
        it faults already quarantined by another gateway."""
        self._refresh(force=True)

    def on_state_change(self, listener: Callable[[str, str, str], None]) -> None:
        """Call ``listener(node_id, old_state, new_state)`` after each state change."""
        self._listeners.append(listener)

    def _changed(self, node_id: str, old: str, new: str, why: str) -> None:
        if old == new:
            return
        log.info("node %s: %s -> %s (%s)", short(node_id), old or "new", new, why)
        for fn in list(self._listeners):
            try:
                fn(node_id, old, new)
            except Exception:  # noqa: BLE001 - a listener bug must not break the registry
                log.exception("state listener failed for node %s", short(node_id))

    # ------------------------------------------------------------- challenge

    def _mac(self, public_key: bytes, head: bytes) -> bytes:
        if self._secret is None:
            self._secret = self.store.pool_secret(_CHALLENGE_SECRET)
        return hmac.new(self._secret, b"hyperinfer-join-challenge\0" + public_key + head, hashlib.sha256).digest()[:16]

    def challenge(self, public_key: bytes) -> Challenge:
        """A nonce for ``public_key``: stateless (nothing is stored until a join uses it)."""
        _check_public_key(public_key)
        expires_ms = self._now_ms() + int(CHALLENGE_TTL_S * 1000)
        head = expires_ms.to_bytes(8, "big") + secrets.token_bytes(8)
        return Challenge(head + self._mac(public_key, head), expires_ms / 1000)

    def _consume_nonce(self, nonce: bytes, public_key: bytes) -> None:
        head, mac = nonce[:16], nonce[16:]
        if not hmac.compare_digest(mac, self._mac(public_key, head)):
            raise Unauthenticated("join nonce is unknown (not issued by this pool, or issued to a different "
                                  "public key); call Challenge again")
        expires_ms = int.from_bytes(head[:8], "big")
        if expires_ms < self._now_ms():
            raise Unauthenticated("join nonce expired; call Challenge again and join within "
                                  f"{int(CHALLENGE_TTL_S)} s")
        if not self.store.claim_nonce(nonce, public_key, expires_ms):
            raise Unauthenticated("join nonce was already used (replayed join); call Challenge for a fresh one")

    # ------------------------------------------------------------------ join

    def join(self, req: JoinRequest) -> NodeInfo:
        _check_public_key(req.public_key)
        if len(req.nonce) != NONCE_BYTES:
            raise InvalidArgument(f"nonce: expected {NONCE_BYTES} bytes, got {len(req.nonce)}")
        operator = _check_text("operator", req.operator, required=True)
        address = validate_address(req.listen_address)
        targets = validate_targets(req.targets)
        if not 0 < req.max_concurrency <= 65535:
            raise InvalidArgument(f"max_concurrency: must be 1-65535, got {req.max_concurrency}")
        if len(req.devices) > _MAX_DEVICES:
            raise InvalidArgument(f"devices: {len(req.devices)} given, at most {_MAX_DEVICES}")
        software_version = _check_text("software_version", req.software_version)
        node_id = fingerprint(req.public_key)

        signed = payloads.join_payload(
            nonce=req.nonce, gateway_id=self.gateway_id, node_id=node_id, operator=req.operator,
            listen_address=req.listen_address, targets=list(req.targets), max_concurrency=req.max_concurrency,
        )
        if not verify_signature(req.public_key, signed, req.signature):
            raise Unauthenticated(
                "join signature does not verify with public_key (it must sign "
                "verify.payloads.join_payload over this nonce, gateway id and declaration)"
            )
        if req.kx_public_key or req.kx_signature:
            from hyperinfer.verify.session import check_node_kx

            check_node_kx(req.public_key, bytes(req.kx_public_key), bytes(req.kx_signature), nonce=req.nonce,
                          gateway_id=self.gateway_id)
        self._consume_nonce(req.nonce, req.public_key)
        op, operator_id = None, operator
        if self.operators is not None:
            from hyperinfer.gateway.admission import admit

            op = admit(self.operators, open_pool=self.open_pool, node_public_key=req.public_key,
                       cert=bytes(req.operator_cert), declared_name=operator)
            operator_id = op.operator_id  # the identity the verifier keeps apart, not the declared name

        with self._lock:
            now_ms = self._now_ms()
            old = self.store.get_node(node_id) if self.shared else self._records.get(node_id)
            # quarantine is a verdict of the ledger: re-joining does not lift it
            state = QUARANTINED if old is not None and old.state == QUARANTINED else HEALTHY
            if op is not None and op.state == QUARANTINED:
                state = QUARANTINED  # the operator's verdict covers every node key it brings
            rec = NodeRecord(
                node_id=node_id, public_key=req.public_key, operator=operator_id, address=address,
                targets=targets, devices=tuple(dict(d) for d in req.devices), capacity=req.max_concurrency,
                state=state, joined_at_ms=now_ms, last_heartbeat_ms=now_ms,
                heartbeat_ts_ms=old.heartbeat_ts_ms if old is not None else 0,
                outstanding=0, loaded=(), software_version=software_version,
                # a re-join replaces the session key (none if this join brought no X25519 key)
                kx_public_key=bytes(req.kx_public_key), kx_gateway=self.gateway_id if req.kx_public_key else "",
            )
            stored = self.store.put_node(rec, keep_quarantine=True)
            if stored != state:  # quarantined by another gateway meanwhile
                rec, state = replace(rec, state=stored), stored
            self._records[node_id] = rec
            self._failed.pop(node_id, None)
        log.info("node %s joined: operator=%s%s address=%s targets=%s capacity=%d%s",
                 short(node_id), op.name if op is not None else operator,
                 f" ({op.admission} {short(op.operator_id)})" if op is not None else "",
                 address, ",".join(targets), req.max_concurrency,
                 " (re-join)" if old is not None else "")
        self._changed(node_id, old.state if old is not None else "", state, "join")
        return self._info(rec)

    # ------------------------------------------------------------- heartbeat

    def _known(self, node_id: str) -> NodeRecord:
        rec = self._records.get(node_id)
        if self.shared and (rec is None or rec.state == LEFT):
            self._refresh(force=True)  # joined (again) at another gateway a moment ago
            rec = self._records.get(node_id)
        if rec is None:
            raise NotFound(f"unknown node {node_id!r}; join first")
        if rec.state == LEFT:
            raise NotFound(f"node {node_id!r} has left the pool; join again")
        return rec

    def _check_timestamp(self, rec: NodeRecord, timestamp_ms: int, what: str) -> None:
        skew = abs(timestamp_ms - self._now_ms()) / 1000
        if skew > MAX_CLOCK_SKEW_S:
            raise InvalidArgument(
                f"{what} timestamp_ms {timestamp_ms} is {skew:.0f} s away from the gateway's clock "
                f"(max {int(MAX_CLOCK_SKEW_S)} s); check the node's clock"
            )
        if timestamp_ms <= rec.heartbeat_ts_ms:
            raise InvalidArgument(
                f"{what} timestamp_ms {timestamp_ms} is not newer than the last one ({rec.heartbeat_ts_ms}); "
                "replayed or out of order"
            )

    def heartbeat(self, hb: Heartbeat) -> NodeInfo:
        rec = self._known(hb.node_id)
        if not 0 <= hb.outstanding <= 1_000_000:
            raise InvalidArgument(f"outstanding: must be >= 0, got {hb.outstanding}")
        if not 0 < hb.capacity <= 65535:
            raise InvalidArgument(f"capacity: must be 1-65535, got {hb.capacity}")
        if len(hb.loaded) > _MAX_LOADED:
            raise InvalidArgument(f"loaded: {len(hb.loaded)} entries, at most {_MAX_LOADED}")
        loaded = tuple((str(n), int(v), str(t), str(s)) for n, v, t, s in hb.loaded)
        signed = payloads.heartbeat_payload(
            node_id=hb.node_id, timestamp_ms=hb.timestamp_ms, outstanding=hb.outstanding,
            capacity=hb.capacity, loaded=loaded,
        )
        if not verify_signature(rec.public_key, signed, hb.signature):
            raise Unauthenticated(f"heartbeat signature does not verify with node {short(hb.node_id)}'s key")
        op = self.operator_of(hb.node_id, rec)
        if op is not None and op.state == "removed":
            self.set_state(hb.node_id, LEFT, reason=f"operator {op.operator_id[:12]} removed")
            raise PermissionDenied(f"operator {op.operator_id} ({op.name}) was removed from this pool")
        with self._lock:
            rec = self._known(hb.node_id)  # re-read under the lock: ordering against other heartbeats
            self._check_timestamp(rec, hb.timestamp_ms, "heartbeat")
            state = QUARANTINED if rec.state == QUARANTINED or (op is not None and op.state == QUARANTINED) \
                else HEALTHY
            new = replace(rec, last_heartbeat_ms=self._now_ms(), heartbeat_ts_ms=hb.timestamp_ms,
                          outstanding=hb.outstanding, capacity=hb.capacity, loaded=loaded, state=state)
            stored = self.store.update_heartbeat(
                hb.node_id, last_heartbeat_ms=new.last_heartbeat_ms, heartbeat_ts_ms=new.heartbeat_ts_ms,
                outstanding=new.outstanding, capacity=new.capacity, loaded=loaded, state=state,
            )
            if stored != state:  # quarantined by another gateway since this one last read it
                new, state = replace(new, state=stored), stored
            self._records[hb.node_id] = new
            was_failed = self._failed.pop(hb.node_id, None) is not None
        self._changed(hb.node_id, rec.state, state, "heartbeat")
        if was_failed:
            log.info("node %s: failure cleared by heartbeat", short(hb.node_id))
        return self._info(new)

    def leave(self, node_id: str, timestamp_ms: int, signature: bytes) -> None:
        rec = self._known(node_id)
        signed = payloads.leave_payload(node_id=node_id, timestamp_ms=timestamp_ms)
        if not verify_signature(rec.public_key, signed, signature):
            raise Unauthenticated(f"leave signature does not verify with node {short(node_id)}'s key")
        with self._lock:
            rec = self._known(node_id)
            self._check_timestamp(rec, timestamp_ms, "leave")
            # a quarantined node that leaves stays quarantined (it is not schedulable either way)
            state = QUARANTINED if rec.state == QUARANTINED else LEFT
            self.store.set_node_state(node_id, state, heartbeat_ts_ms=timestamp_ms)
            self._records[node_id] = replace(rec, state=state, heartbeat_ts_ms=timestamp_ms)
            self._failed.pop(node_id, None)
        log.info("node %s left", short(node_id))
        self._changed(node_id, rec.state, state, "leave")

    # ---------------------------------------------------------------- state

    def set_state(self, node_id: str, state: str, reason: str = "set by gateway") -> None:
        """Force a node's stored state (the ledger quarantines with this; "healthy" lifts it)."""
        if state not in STATES:
            raise InvalidArgument(f"state: unknown state {state!r} (one of {', '.join(STATES)})")
        with self._lock:
            rec = self._records.get(node_id)
            if rec is None and self.shared:
                rec = self.store.get_node(node_id)  # joined at another gateway since the last read
            if rec is None:
                raise NotFound(f"unknown node {node_id!r}")
            self.store.set_node_state(node_id, state)
            self._records[node_id] = replace(rec, state=state)
        self._changed(node_id, rec.state, state, reason)

    def operator_of(self, node_id: str, rec: NodeRecord | None = None) -> Any:
        """The node's operator (gateway.operators.Operator), or None without admission."""
        if self.operators is None:
            return None
        if rec is None:
            rec = self._records.get(node_id)
            if rec is None and self.shared:
                rec = self.store.get_node(node_id)
        return None if rec is None else self.operators.get(rec.operator)

    def operator_name(self, node: NodeInfo) -> str:
        """The node's operator as people know it (the admitted name, or the name an open-pool
        node declared); ``node.operator`` is the operator's id."""
        op = self.operators.get(node.operator) if self.operators is not None else None
        return op.name if op is not None else node.operator

    def quarantine_operator(self, operator_id: str, reason: str = "operator quarantined") -> list[str]:
        """Quarantine every node filed under the operator (the ledger calls this when the
        operator's faults reach the threshold). Returns their ids."""
        self._refresh(force=True)
        with self._lock:
            ids = [r.node_id for r in self._records.values() if r.operator == operator_id and r.state != QUARANTINED]
        for node_id in ids:
            self.set_state(node_id, QUARANTINED, reason=reason)
        return ids

    def report_failure(self, node_id: str, reason: str = "call failed") -> None:
        """Skip the node in scheduling until its next heartbeat (it failed or timed out)."""
        with self._lock:
            if node_id in self._failed:
                return
            rec = self._records.get(node_id)
            self._failed[node_id] = rec.last_heartbeat_ms if rec is not None else 0
        log.warning("node %s: marked failed until its next heartbeat (%s)", short(node_id), reason)

    def sweep(self) -> list[str]:
        """Write back liveness: healthy nodes without a recent heartbeat become stale. Returns their ids."""
        self._refresh()
        limit_ms = self._now_ms() - int(self.stale_after * 1000)
        expired = []
        with self._lock:
            for rec in list(self._records.values()):
                if rec.state == HEALTHY and rec.last_heartbeat_ms < limit_ms:
                    # conditional: another gateway may have just recorded a heartbeat
                    if self.store.mark_stale(rec.node_id, limit_ms):
                        self._records[rec.node_id] = replace(rec, state=STALE)
                        expired.append(rec)
        for rec in expired:
            age = (self._now_ms() - rec.last_heartbeat_ms) / 1000
            self._changed(rec.node_id, HEALTHY, STALE, f"no heartbeat for {age:.0f} s")
        self.store.purge_challenges(self._now_ms())
        return [r.node_id for r in expired]

    # ----------------------------------------------------------------- reads

    def _info(self, rec: NodeRecord) -> NodeInfo:
        state = rec.state
        if state == HEALTHY and rec.last_heartbeat_ms < self._now_ms() - int(self.stale_after * 1000):
            state = STALE
        failed = rec.node_id in self._failed
        # the scheduler reads every node on every request: reuse the (frozen) NodeInfo while its
        # record, liveness and failure mark are unchanged (a heartbeat replaces the record)
        hit = self._infos.get(rec.node_id)
        if hit is not None and hit[0] is rec and hit[1].state == state and hit[1].failed == failed:
            return hit[1]
        info = NodeInfo(
            node_id=rec.node_id, public_key=rec.public_key, operator=rec.operator, address=rec.address,
            targets=rec.targets, loaded={(n, v): (t, s) for n, v, t, s in rec.loaded},
            outstanding=rec.outstanding, capacity=rec.capacity, state=state,
            last_heartbeat=rec.last_heartbeat_ms / 1000, joined_at=rec.joined_at_ms / 1000,
            devices=rec.devices, failed=failed, software_version=rec.software_version,
            kx_public_key=rec.kx_public_key, kx_gateway=rec.kx_gateway,
        )
        self._infos[rec.node_id] = (rec, info)
        return info

    def get(self, node_id: str) -> NodeInfo:
        self._refresh()
        rec = self._records.get(node_id)
        if rec is None:
            raise NotFound(f"unknown node {node_id!r}")
        return self._info(rec)

    def all_nodes(self) -> list[NodeInfo]:
        self._refresh()
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: r.node_id)
        return [self._info(r) for r in records]

    def serves(self, node: NodeInfo, model_name: str, model_version: int) -> bool:
        """The node reported this model loaded with the digest the manifest lists for its target."""
        got = node.loaded.get((model_name, int(model_version)))
        if got is None:
            return False
        if self.catalog is None:
            return True
        expected = self.catalog.artifact_sha256(model_name, int(model_version), got[0])
        return expected is not None and expected == got[1]

    def resolve_version(self, model_name: str, model_version: int | str | None) -> int | None:
        """None, 0 or "" mean the latest version the catalog offers (None if it offers none)."""
        if model_version not in (None, "", 0, "0"):
            try:
                return int(model_version)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise InvalidArgument(f"model_version: {model_version!r} is not an integer") from None
        if self.catalog is None:
            return None
        versions = self.catalog.versions(model_name)
        return versions[-1] if versions else None

    def schedulable_nodes(self, model_name: str, model_version: int | str | None = None) -> list[NodeInfo]:
        """Healthy, not failed, not quarantined nodes serving the model, least outstanding first."""
        version = self.resolve_version(model_name, model_version)
        if version is None:
            return []
        nodes = [n for n in self.all_nodes() if n.schedulable and self.serves(n, model_name, version)]
        nodes.sort(key=lambda n: (n.outstanding / max(n.capacity, 1), n.outstanding, n.node_id))
        return nodes

"""The store interface and the SQL both backends share (registry tables, migrations).

See the package docstring (:mod:`hyperinfer.gateway.store`) for the SQL rule
components follow so that one statement runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import abc
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from hyperinfer.errors import FailedPrecondition, NotFound

COMPONENT = "registry"

# registry schema, one list of statements per version step (portable SQL: see the package docstring)
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            public_key BLOB NOT NULL,
            operator TEXT NOT NULL,
            address TEXT NOT NULL,
            targets TEXT NOT NULL,
            devices TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            state TEXT NOT NULL,
            joined_at BIGINT NOT NULL,
            last_heartbeat BIGINT NOT NULL,
            heartbeat_ts BIGINT NOT NULL,
            outstanding INTEGER NOT NULL,
            loaded TEXT NOT NULL,
            software_version TEXT NOT NULL
        )""",
        """CREATE TABLE challenges (
            nonce BLOB PRIMARY KEY,
            public_key BLOB NOT NULL,
            expires BIGINT NOT NULL,
            used INTEGER NOT NULL
        )""",
        "CREATE INDEX challenges_expires ON challenges (expires)",
    ],
    [
        # Worker-call session (verify.session): the node's X25519 key of its last join and the
        # gateway it agreed the session with ('' / NULL: none, that gateway signs calls)
        "ALTER TABLE nodes ADD COLUMN kx_public_key BLOB",
        "ALTER TABLE nodes ADD COLUMN kx_gateway TEXT NOT NULL DEFAULT ''",
    ],
]

# the gateways that use this database (component "gateways"): one row per gateway key, so
# every gateway, and an auditor, can tell the pool's gateways and their public keys
GATEWAYS_COMPONENT = "gateways"
GATEWAYS_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE gateways (
            gateway_id TEXT PRIMARY KEY,
            public_key BLOB NOT NULL,
            address TEXT NOT NULL,
            started BIGINT NOT NULL,
            last_seen BIGINT NOT NULL
        )""",
    ],
    [
        # its X25519 key for Worker-call sessions and its Ed25519 signature over it (verify.session),
        # announced to nodes by every gateway of the pool
        "ALTER TABLE gateways ADD COLUMN kx_public_key BLOB",
        "ALTER TABLE gateways ADD COLUMN kx_signature BLOB",
    ],
]

# pool-wide secrets (component "pool_secrets"): e.g. the HMAC key of join challenges, one per
# database so that every gateway of a shared store accepts the others' challenges
SECRETS_COMPONENT = "pool_secrets"
SECRETS_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE pool_secrets (
            name TEXT PRIMARY KEY,
            secret BLOB NOT NULL,
            created BIGINT NOT NULL
        )""",
    ],
]

QUARANTINED = "quarantined"
_NODE_COLUMNS = ("node_id", "public_key", "operator", "address", "targets", "devices", "capacity", "state",
                 "joined_at", "last_heartbeat", "heartbeat_ts", "outstanding", "loaded", "software_version",
                 "kx_public_key", "kx_gateway")


@dataclass(frozen=True)
class NodeRecord:
    """One persisted node row (raw: ``state`` is what was stored, not liveness)."""

    node_id: str
    public_key: bytes
    operator: str
    address: str
    targets: tuple[str, ...]
    devices: tuple[dict[str, Any], ...]
    capacity: int
    state: str
    joined_at_ms: int
    last_heartbeat_ms: int
    heartbeat_ts_ms: int = 0
    outstanding: int = 0
    loaded: tuple[tuple[str, int, str, str], ...] = field(default_factory=tuple)
    software_version: str = ""
    kx_public_key: bytes = b""  # the node's X25519 key of its last join (verify.session); b"": none
    kx_gateway: str = ""  # the gateway id that agreed a Worker-call session with it


@dataclass(frozen=True)
class GatewayRecord:
    """A gateway that used this database: its id (key fingerprint), public key, address."""

    gateway_id: str
    public_key: bytes
    address: str
    started_ms: int
    last_seen_ms: int
    kx_public_key: bytes = b""  # X25519 key for Worker-call sessions (verify.session); b"": none
    kx_signature: bytes = b""  # the gateway key's signature over it


@dataclass(frozen=True)
class ChallengeRecord:
    nonce: bytes
    public_key: bytes
    expires_ms: int
    used: bool


class Store(abc.ABC):
    """What the registry and ledger need from persistence. Implementations are thread-safe.

    ``shared`` is True when other gateways may write the same database: the
    registry then re-reads nodes instead of trusting its own cache.
    """

    shared: bool = False
    #: what to print for the database (a path, or a URL without its password)
    location: str = ""

    @abc.abstractmethod
    def put_node(self, node: NodeRecord, *, keep_quarantine: bool = False) -> str:
        """Insert or replace a node row; return the state stored. With ``keep_quarantine`` a
        stored ``quarantined`` state is kept (a re-join, possibly racing another gateway's
        quarantine, never lifts it)."""

    @abc.abstractmethod
    def get_node(self, node_id: str) -> NodeRecord | None: ...

    @abc.abstractmethod
    def list_nodes(self) -> list[NodeRecord]: ...

    @abc.abstractmethod
    def update_heartbeat(
        self, node_id: str, *, last_heartbeat_ms: int, heartbeat_ts_ms: int, outstanding: int,
        capacity: int, loaded: Sequence[tuple[str, int, str, str]], state: str,
    ) -> str:
        """Record a heartbeat; return the state stored. A stored ``quarantined`` is kept
        (another gateway may have quarantined the node since this one last read it).
        NotFound if the node is unknown."""

    @abc.abstractmethod
    def set_node_state(self, node_id: str, state: str, *, heartbeat_ts_ms: int | None = None) -> None:
        """Set the stored state (and optionally the last node timestamp); NotFound if unknown."""

    @abc.abstractmethod
    def mark_stale(self, node_id: str, before_ms: int) -> bool:
        """``healthy`` -> ``stale`` only if the stored last heartbeat is older than ``before_ms``
        (a heartbeat another gateway just recorded wins). True if it changed."""

    @abc.abstractmethod
    def pool_secret(self, name: str) -> bytes:
        """The pool-wide secret ``name`` (32 random bytes), created by the first caller; every
        gateway on the database gets the same one."""

    @abc.abstractmethod
    def claim_nonce(self, nonce: bytes, public_key: bytes, expires_ms: int) -> bool:
        """Record a join nonce as used (kept until it expires); False if it was used before
        (by any gateway on the database)."""

    @abc.abstractmethod
    def purge_challenges(self, now_ms: int) -> int:
        """Delete expired (used) nonces; return how many."""

    @abc.abstractmethod
    def count_challenges(self) -> int: ...

    @abc.abstractmethod
    def register_gateway(self, gateway_id: str, public_key: bytes, address: str, now_ms: int,
                         kx: tuple[bytes, bytes] | None = None) -> None:
        """Record (or refresh) a gateway using this database; ``address`` "" keeps the stored one,
        ``kx`` (X25519 key, signature) None too."""

    @abc.abstractmethod
    def list_gateways(self) -> list[GatewayRecord]: ...

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one transaction (see the package docstring)."""

    @abc.abstractmethod
    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Bring ``component``'s tables to ``len(migrations)``; return the version."""

    @abc.abstractmethod
    def schema_version(self, component: str = COMPONENT) -> int: ...

    @abc.abstractmethod
    def connect(self) -> Any:
        """A new, independent connection (autocommit) for a reader elsewhere; ``?`` parameters."""

    @abc.abstractmethod
    def close(self) -> None: ...


def node_from_row(row: Any) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        public_key=bytes(row["public_key"]),
        operator=row["operator"],
        address=row["address"],
        targets=tuple(json.loads(row["targets"])),
        devices=tuple(json.loads(row["devices"])),
        capacity=int(row["capacity"]),
        state=row["state"],
        joined_at_ms=int(row["joined_at"]),
        last_heartbeat_ms=int(row["last_heartbeat"]),
        heartbeat_ts_ms=int(row["heartbeat_ts"]),
        outstanding=int(row["outstanding"]),
        loaded=tuple((str(n), int(v), str(t), str(s)) for n, v, t, s in json.loads(row["loaded"])),
        software_version=row["software_version"],
        kx_public_key=bytes(row["kx_public_key"] or b""),
        kx_gateway=row["kx_gateway"] or "",
    )


def loaded_json(loaded: Sequence[tuple[str, int, str, str]]) -> str:
    return json.dumps(sorted([str(n), int(v), str(t), str(s)] for n, v, t, s in loaded))


class SQLStore(Store):
    """The registry's tables and the migration runner in portable SQL; a backend supplies
    :meth:`transaction` (one connection whose ``execute`` takes ``?`` parameters), and
    :meth:`_lock_schema` (serialise migrations across processes)."""

    def _lock_schema(self, conn: Any) -> None:
        """Called first in :meth:`migrate`'s transaction."""

    def _translate_ddl(self, sql: str) -> str:
        return sql

    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        with self.transaction() as c:
            self._lock_schema(c)
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = c.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise FailedPrecondition(
                    f"database {self.location} has {component} schema version {current}, newer than this "
                    f"hyperinfer knows ({len(migrations)}); upgrade hyperinfer"
                )
            for step in migrations[current:]:
                for sql in step:
                    c.execute(self._translate_ddl(sql))
            if row is None:
                c.execute("INSERT INTO schema_version (component, version) VALUES (?, ?)",
                          (component, len(migrations)))
            elif current != len(migrations):
                c.execute("UPDATE schema_version SET version = ? WHERE component = ?", (len(migrations), component))
            return len(migrations)

    def schema_version(self, component: str = COMPONENT) -> int:
        with self.transaction() as c:
            row = c.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
            return int(row[0]) if row else 0

    # ------------------------------------------------------------------ nodes

    def put_node(self, node: NodeRecord, *, keep_quarantine: bool = False) -> str:
        values = (
            node.node_id, node.public_key, node.operator, node.address, json.dumps(list(node.targets)),
            json.dumps(list(node.devices)), node.capacity, node.state, node.joined_at_ms,
            node.last_heartbeat_ms, node.heartbeat_ts_ms, node.outstanding, loaded_json(node.loaded),
            node.software_version, node.kx_public_key or None, node.kx_gateway,
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in _NODE_COLUMNS[1:] if c != "state")
        state = ("CASE WHEN nodes.state = ? THEN nodes.state ELSE excluded.state END" if keep_quarantine
                 else "excluded.state")
        params = values + ((QUARANTINED,) if keep_quarantine else ())
        with self.transaction() as c:
            # one upsert (not delete + insert): two gateways re-joining one node cannot both insert
            c.execute(
                f"INSERT INTO nodes ({', '.join(_NODE_COLUMNS)}) VALUES ({', '.join('?' * len(_NODE_COLUMNS))}) "
                f"ON CONFLICT (node_id) DO UPDATE SET {updates}, state = {state}",
                params,
            )
            row = c.execute("SELECT state FROM nodes WHERE node_id = ?", (node.node_id,)).fetchone()
        return str(row[0])

    def get_node(self, node_id: str) -> NodeRecord | None:
        with self.transaction() as c:
            row = c.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return node_from_row(row) if row else None

    def list_nodes(self) -> list[NodeRecord]:
        with self.transaction() as c:
            rows = c.execute("SELECT * FROM nodes ORDER BY node_id").fetchall()
        return [node_from_row(r) for r in rows]

    def update_heartbeat(
        self, node_id: str, *, last_heartbeat_ms: int, heartbeat_ts_ms: int, outstanding: int,
        capacity: int, loaded: Sequence[tuple[str, int, str, str]], state: str,
    ) -> str:
        with self.transaction() as c:
            cur = c.execute(
                """UPDATE nodes SET last_heartbeat = ?, heartbeat_ts = ?, outstanding = ?, capacity = ?,
                   loaded = ?, state = CASE WHEN state = ? THEN state ELSE ? END WHERE node_id = ?""",
                (last_heartbeat_ms, heartbeat_ts_ms, outstanding, capacity, loaded_json(loaded), QUARANTINED,
                 state, node_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"unknown node {node_id!r}")
            return str(c.execute("SELECT state FROM nodes WHERE node_id = ?", (node_id,)).fetchone()[0])

    def set_node_state(self, node_id: str, state: str, *, heartbeat_ts_ms: int | None = None) -> None:
        with self.transaction() as c:
            if heartbeat_ts_ms is None:
                cur = c.execute("UPDATE nodes SET state = ? WHERE node_id = ?", (state, node_id))
            else:
                cur = c.execute("UPDATE nodes SET state = ?, heartbeat_ts = ? WHERE node_id = ?",
                                (state, heartbeat_ts_ms, node_id))
            if cur.rowcount == 0:
                raise NotFound(f"unknown node {node_id!r}")

    def mark_stale(self, node_id: str, before_ms: int) -> bool:
        with self.transaction() as c:
            cur = c.execute("UPDATE nodes SET state = 'stale' WHERE node_id = ? AND state = 'healthy' "
                            "AND last_heartbeat < ?", (node_id, before_ms))
            return cur.rowcount > 0

    # --------------------------------------------------------------- gateways

    def register_gateway(self, gateway_id: str, public_key: bytes, address: str, now_ms: int,
                         kx: tuple[bytes, bytes] | None = None) -> None:
        kx_pub, kx_sig = (bytes(kx[0]), bytes(kx[1])) if kx else (None, None)
        with self.transaction() as c:
            c.execute("INSERT INTO gateways (gateway_id, public_key, address, started, last_seen, kx_public_key, "
                      "kx_signature) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET "
                      "address = CASE WHEN excluded.address = '' THEN gateways.address ELSE excluded.address END, "
                      "last_seen = excluded.last_seen, "
                      "kx_public_key = COALESCE(excluded.kx_public_key, gateways.kx_public_key), "
                      "kx_signature = COALESCE(excluded.kx_signature, gateways.kx_signature)",
                      (gateway_id, bytes(public_key), address, now_ms, now_ms, kx_pub, kx_sig))

    def list_gateways(self) -> list[GatewayRecord]:
        with self.transaction() as c:
            rows = c.execute("SELECT gateway_id, public_key, address, started, last_seen, kx_public_key, kx_signature "
                             "FROM gateways ORDER BY gateway_id").fetchall()
        return [GatewayRecord(r[0], bytes(r[1]), r[2], int(r[3]), int(r[4]), bytes(r[5] or b""), bytes(r[6] or b""))
                for r in rows]

    # ------------------------------------------------------------- secrets

    def pool_secret(self, name: str) -> bytes:
        import os
        import time

        self.migrate(SECRETS_COMPONENT, SECRETS_MIGRATIONS)
        with self.transaction() as c:
            # first writer wins; every later caller (any gateway) reads the same row
            c.execute("INSERT INTO pool_secrets (name, secret, created) VALUES (?, ?, ?) "
                      "ON CONFLICT (name) DO NOTHING", (name, os.urandom(32), int(time.time() * 1000)))
            row = c.execute("SELECT secret FROM pool_secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])

    # ------------------------------------------------------------- challenges

    def claim_nonce(self, nonce: bytes, public_key: bytes, expires_ms: int) -> bool:
        with self.transaction() as c:
            # the primary key makes the claim atomic across threads and gateways
            return c.execute("INSERT INTO challenges (nonce, public_key, expires, used) VALUES (?, ?, ?, 1) "
                             "ON CONFLICT (nonce) DO NOTHING", (nonce, public_key, expires_ms)).rowcount == 1

    def purge_challenges(self, now_ms: int) -> int:
        with self.transaction() as c:
            return c.execute("DELETE FROM challenges WHERE expires < ?", (now_ms,)).rowcount

    def count_challenges(self) -> int:
        with self.transaction() as c:
            return int(c.execute("SELECT COUNT(*) FROM challenges").fetchone()[0])


"""The gateway's persistent state: a small :class:`Store` interface and its SQLite implementation.

Design §7: registry, ledger, attestations and evidence live in one SQLite file
(WAL mode) by default, behind an interface a PostgreSQL store can implement
for several gateways. The SQL here is standard (no SQLite-only syntax beyond
the PRAGMAs in :meth:`SQLiteStore._open`), so porting is a matter of the
connection and the parameter style.

Tables owned by this module (component ``"registry"``):

``nodes``
    one row per node that ever joined: ``node_id`` (PK, fingerprint of the
    public key), ``public_key`` (raw 32 bytes), ``operator``, ``address``,
    ``targets`` (JSON list), ``devices`` (JSON list of objects), ``capacity``,
    ``state`` (healthy, stale, left, quarantined), ``joined_at`` and
    ``last_heartbeat`` (gateway clock, unix ms), ``heartbeat_ts`` (the node's
    own timestamp of its last signed heartbeat/leave, unix ms, used to reject
    replays), ``outstanding``, ``loaded`` (JSON list of
    ``[name, version, target_id, artifact_sha256]``), ``software_version``.
``challenges``
    join nonces: ``nonce`` (PK, raw bytes), ``public_key`` it was issued to,
    ``expires`` (unix ms), ``used`` (0/1). Single use.

Other components add their own tables to the same file (the ledger keeps
ledger, attestations, evidence and receipts there). Two entry points:

* ``store.migrate(component, migrations)`` — versioned schema per component,
  recorded in the ``schema_version`` table; ``migrations[i]`` is a list of SQL
  statements that takes the component from version ``i`` to ``i + 1``. Run it
  once at start-up; it is idempotent.
* ``with store.transaction() as conn:`` — a :class:`sqlite3.Connection`
  inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` if the block raises),
  holding the store's lock, so statements from several threads never
  interleave. Nested ``transaction()`` calls on the same thread join the
  outer transaction. Use ``?`` parameters. Rows come back as
  :class:`sqlite3.Row` (index by name or position).

``store.path`` is the database file; ``store.connect()`` opens an extra,
independent connection (for a reader in another thread or process, e.g. an
audit command).
"""

from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from hyperinfer.errors import FailedPrecondition, NotFound, Unavailable

COMPONENT = "registry"

# registry schema, one list of statements per version step
_MIGRATIONS: list[list[str]] = [
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
]


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


@dataclass(frozen=True)
class ChallengeRecord:
    nonce: bytes
    public_key: bytes
    expires_ms: int
    used: bool


class Store(abc.ABC):
    """What the registry needs from persistence. Implementations must be thread-safe."""

    @abc.abstractmethod
    def put_node(self, node: NodeRecord) -> None:
        """Insert or replace a node row."""

    @abc.abstractmethod
    def get_node(self, node_id: str) -> NodeRecord | None: ...

    @abc.abstractmethod
    def list_nodes(self) -> list[NodeRecord]: ...

    @abc.abstractmethod
    def update_heartbeat(
        self, node_id: str, *, last_heartbeat_ms: int, heartbeat_ts_ms: int, outstanding: int,
        capacity: int, loaded: Sequence[tuple[str, int, str, str]], state: str,
    ) -> None: ...

    @abc.abstractmethod
    def set_node_state(self, node_id: str, state: str, *, heartbeat_ts_ms: int | None = None) -> None:
        """Set the stored state (and optionally the last node timestamp); NotFound if unknown."""

    @abc.abstractmethod
    def add_challenge(self, nonce: bytes, public_key: bytes, expires_ms: int) -> None: ...

    @abc.abstractmethod
    def take_challenge(self, nonce: bytes) -> ChallengeRecord | None:
        """Atomically mark a challenge used; return it as it was before (None if unknown).

        Of two concurrent callers with the same nonce, exactly one sees ``used=False``.
        """

    @abc.abstractmethod
    def purge_challenges(self, now_ms: int) -> int:
        """Delete expired challenges; return how many."""

    @abc.abstractmethod
    def count_challenges(self) -> int: ...

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one transaction (see the module docstring)."""

    @abc.abstractmethod
    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Bring ``component``'s tables to ``len(migrations)``; return the version."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _node_from_row(row: sqlite3.Row) -> NodeRecord:
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
    )


def _loaded_json(loaded: Sequence[tuple[str, int, str, str]]) -> str:
    return json.dumps(sorted([str(n), int(v), str(t), str(s)] for n, v, t, s in loaded))


class SQLiteStore(Store):
    """SQLite in WAL mode; one connection shared by all threads behind a re-entrant lock.

    One connection plus a lock is enough for a gateway: writes are short and
    SQLite serialises writers anyway; readers in other processes use
    :meth:`connect` and WAL lets them read while the gateway writes.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting on the thread holding the lock
        self._conn = self._open(self.path)
        try:
            self.migrate(COMPONENT, _MIGRATIONS)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise FailedPrecondition(f"gateway database {self.path} is not usable: {e}") from None

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        if path != ":memory:":
            parent = Path(path).expanduser().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise Unavailable(f"cannot create the directory for database {path}: {e}") from None
        try:
            # autocommit mode: transactions are explicit in transaction()
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise FailedPrecondition(f"cannot open gateway database {path}: {e}") from None
        if path != ":memory:" and str(mode).lower() != "wal":
            raise FailedPrecondition(f"database {path} cannot use WAL mode (journal_mode={mode})")
        return conn

    def connect(self) -> sqlite3.Connection:
        """A new, independent connection to the same database file."""
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                # nested: part of the outer transaction, which commits or rolls back
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        with self.transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = c.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise FailedPrecondition(
                    f"database {self.path} has {component} schema version {current}, newer than this "
                    f"hyperinfer knows ({len(migrations)}); upgrade hyperinfer"
                )
            for step in migrations[current:]:
                for sql in step:
                    c.execute(sql)
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

    def put_node(self, node: NodeRecord) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM nodes WHERE node_id = ?", (node.node_id,))
            c.execute(
                """INSERT INTO nodes (node_id, public_key, operator, address, targets, devices, capacity,
                   state, joined_at, last_heartbeat, heartbeat_ts, outstanding, loaded, software_version)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    node.node_id, node.public_key, node.operator, node.address, json.dumps(list(node.targets)),
                    json.dumps(list(node.devices)), node.capacity, node.state, node.joined_at_ms,
                    node.last_heartbeat_ms, node.heartbeat_ts_ms, node.outstanding, _loaded_json(node.loaded),
                    node.software_version,
                ),
            )

    def get_node(self, node_id: str) -> NodeRecord | None:
        with self.transaction() as c:
            row = c.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return _node_from_row(row) if row else None

    def list_nodes(self) -> list[NodeRecord]:
        with self.transaction() as c:
            rows = c.execute("SELECT * FROM nodes ORDER BY node_id").fetchall()
        return [_node_from_row(r) for r in rows]

    def update_heartbeat(
        self, node_id: str, *, last_heartbeat_ms: int, heartbeat_ts_ms: int, outstanding: int,
        capacity: int, loaded: Sequence[tuple[str, int, str, str]], state: str,
    ) -> None:
        with self.transaction() as c:
            cur = c.execute(
                """UPDATE nodes SET last_heartbeat = ?, heartbeat_ts = ?, outstanding = ?, capacity = ?,
                   loaded = ?, state = ? WHERE node_id = ?""",
                (last_heartbeat_ms, heartbeat_ts_ms, outstanding, capacity, _loaded_json(loaded), state, node_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"unknown node {node_id!r}")

    def set_node_state(self, node_id: str, state: str, *, heartbeat_ts_ms: int | None = None) -> None:
        with self.transaction() as c:
            if heartbeat_ts_ms is None:
                cur = c.execute("UPDATE nodes SET state = ? WHERE node_id = ?", (state, node_id))
            else:
                cur = c.execute("UPDATE nodes SET state = ?, heartbeat_ts = ? WHERE node_id = ?",
                                (state, heartbeat_ts_ms, node_id))
            if cur.rowcount == 0:
                raise NotFound(f"unknown node {node_id!r}")

    # ------------------------------------------------------------- challenges

    def add_challenge(self, nonce: bytes, public_key: bytes, expires_ms: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO challenges (nonce, public_key, expires, used) VALUES (?, ?, ?, 0)",
                      (nonce, public_key, expires_ms))

    def take_challenge(self, nonce: bytes) -> ChallengeRecord | None:
        with self.transaction() as c:
            row = c.execute("SELECT nonce, public_key, expires, used FROM challenges WHERE nonce = ?",
                            (nonce,)).fetchone()
            if row is None:
                return None
            if not row["used"]:
                c.execute("UPDATE challenges SET used = 1 WHERE nonce = ?", (nonce,))
        return ChallengeRecord(bytes(row["nonce"]), bytes(row["public_key"]), int(row["expires"]), bool(row["used"]))

    def purge_challenges(self, now_ms: int) -> int:
        with self.transaction() as c:
            return c.execute("DELETE FROM challenges WHERE expires < ?", (now_ms,)).rowcount

    def count_challenges(self) -> int:
        with self.transaction() as c:
            return int(c.execute("SELECT COUNT(*) FROM challenges").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass


def open_store(path: str | Path) -> SQLiteStore:
    """Open (creating if needed) the gateway database at ``path``; ``":memory:"`` for tests."""
    return SQLiteStore(path if str(path) == ":memory:" else Path(path).expanduser())

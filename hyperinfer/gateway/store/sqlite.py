"""The embedded store: one SQLite file in WAL mode (one gateway per file)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from hyperinfer.errors import FailedPrecondition, Unavailable
from hyperinfer.gateway.store.base import COMPONENT, GATEWAYS_COMPONENT, GATEWAYS_MIGRATIONS, MIGRATIONS, SQLStore


class SQLiteStore(SQLStore):
    """SQLite in WAL mode; one connection shared by all threads behind a re-entrant lock.

    One connection plus a lock is enough for a gateway: writes are short and
    SQLite serialises writers anyway; readers in other processes use
    :meth:`connect` and WAL lets them read while the gateway writes.
    ``BEGIN IMMEDIATE`` takes the write lock up front, so a read-modify-write
    inside :meth:`transaction` never interleaves with another writer.
    """

    shared = False

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.location = self.path
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting on the thread holding the lock
        self._conn = self._open(self.path)
        try:
            self.migrate(COMPONENT, MIGRATIONS)
            self.migrate(GATEWAYS_COMPONENT, GATEWAYS_MIGRATIONS)
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
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
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

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

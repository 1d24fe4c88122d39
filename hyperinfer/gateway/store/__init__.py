"""The gateway's persistent state behind one :class:`Store` interface, on SQLite or PostgreSQL.

Design §7: registry, ledger, attestations, evidence and receipts live in one
database. :func:`open_store` picks the backend from ``--db``:

* a file path (default ``~/.local/share/hyperinfer/gateway.db``) or
  ``":memory:"``: :class:`SQLiteStore`, embedded, one gateway per file
  (:mod:`.sqlite`);
* ``postgresql://user[:password]@host[:port]/dbname`` (libpq URL; ``postgres://``
  too): :class:`~.postgresql.PostgreSQLStore`, shared by several gateways
  (:mod:`.postgresql`, which says which isolation and why). Needs the optional
  ``psycopg`` driver (``pip install 'hyperinfer[postgresql]'``).

Tables owned by the store (component ``"registry"``, :mod:`.base`):

``nodes``
    one row per node that ever joined: ``node_id`` (PK, fingerprint of the
    public key), ``public_key`` (raw 32 bytes), ``operator``, ``address``,
    ``targets`` (JSON list), ``devices`` (JSON list of objects), ``capacity``,
    ``state`` (healthy, stale, left, quarantined), ``joined_at`` and
    ``last_heartbeat`` (gateway clock, unix ms), ``heartbeat_ts`` (the node's
    own timestamp of its last signed heartbeat/leave, unix ms, used to reject
    replays), ``outstanding``, ``loaded`` (JSON list of
    ``[name, version, target_id, artifact_sha256]``), ``software_version``,
    ``kx_public_key`` (the node's X25519 key of its last join, NULL if none) and
    ``kx_gateway`` (the gateway id it agreed its Worker-call session with, or
    ''; see :mod:`hyperinfer.verify.session`).
``challenges``
    join nonces that a join used: ``nonce`` (PK, raw bytes), ``public_key``,
    ``expires`` (unix ms), ``used`` (1). Challenges themselves are stateless
    (HMAC, see the registry); a row is claimed by its insert, single use
    across gateways too, and purged once expired.
``pool_secrets`` (component ``"pool_secrets"``)
    ``name`` (PK), ``secret`` (32 random bytes), ``created``: pool-wide secrets
    such as the HMAC key of join challenges, created by the first gateway that
    needs one and shared by all on the database.
``gateways`` (component ``"gateways"``)
    every gateway that used the database: ``gateway_id`` (PK, fingerprint of
    its key), ``public_key``, ``address`` (where it listens), ``started`` and
    ``last_seen`` (unix ms), ``kx_public_key`` and ``kx_signature`` (its X25519
    key for Worker-call sessions, signed by its key; announced to nodes). ``audit
    verify --db`` finds the key that must have signed a receipt here.

Other components add their own tables to the same database (the ledger keeps
ledger, attestations, faults, evidence and receipts there). Two entry points:

* ``store.migrate(component, migrations)`` — versioned schema per component,
  recorded in the ``schema_version`` table; ``migrations[i]`` is a list of SQL
  statements that takes the component from version ``i`` to ``i + 1``. Run it
  once at start-up; it is idempotent, and concurrent gateways migrate one at
  a time.
* ``with store.transaction() as conn:`` — a connection inside one transaction
  (``COMMIT`` at the end, ``ROLLBACK`` if the block raises). SQLite: one
  connection behind the store's lock, so transactions of several threads run
  one at a time. PostgreSQL: each thread its own connection, so transactions
  run side by side (and other gateways' too: rule 5 below). Nested
  ``transaction()`` calls on the same thread join the outer transaction.
  ``conn.execute(sql, params)`` returns a cursor (``fetchone``, ``fetchall``,
  ``rowcount``); rows index by name or by position.

The SQL rule (so one statement runs on both backends; the PostgreSQL
connection translates the little that differs):

1. Parameters are ``?`` (PostgreSQL gets ``%s``; a literal ``%`` is fine).
2. Types in migrations: ``TEXT``, ``INTEGER``, ``BIGINT`` (unix ms),
   ``DOUBLE PRECISION``, ``BLOB`` (-> ``BYTEA``), ``REAL`` (-> ``DOUBLE
   PRECISION``), and ``INTEGER PRIMARY KEY AUTOINCREMENT`` (-> an identity
   column). Booleans are ``INTEGER`` 0/1, compared explicitly
   (``CASE WHEN ? = 1``, never ``CASE WHEN ?``).
3. Upserts: ``INSERT ... ON CONFLICT (key) DO NOTHING`` or
   ``DO UPDATE SET col = excluded.col``. ``INSERT OR IGNORE`` is translated;
   ``INSERT OR REPLACE`` is refused (it is a delete + insert on SQLite).
4. No SQLite-only functions (``min(a, b)`` of two values, ``ifnull``,
   ``datetime()``), no ``RETURNING`` (SQLite 3.35+ only), no PostgreSQL-only
   ones (``LEAST``, ``now()``); time is passed in as unix ms.
5. Concurrency: several gateways write the same rows. Change a counter with one
   statement (``SET jobs = jobs + 1``). A read-modify-write first locks its
   row with a write (an upsert or UPDATE of that row) and then reads it; when
   several rows are locked in one transaction, lock them in key order.
   Single-use things are claimed with a conditional update
   (``UPDATE ... WHERE used = 0``, then check ``rowcount``).
6. Errors other than a lost connection (UNAVAILABLE) come from the driver
   (``sqlite3.Error`` / ``psycopg.Error``); catch ``Exception`` or let them
   reach the RPC layer.

What is per gateway and what is shared: each gateway has its own key and id
(receipts and join payloads name it), its own open channels to nodes, its
``report_failure`` marks and a short-lived cache of the nodes table; nodes,
heartbeats, quarantines, challenges, the ledger, evidence and receipts are
shared through the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hyperinfer.gateway.store.base import (
    COMPONENT, MIGRATIONS, ChallengeRecord, GatewayRecord, NodeRecord, SQLStore, Store,
)
from hyperinfer.gateway.store.sqlite import SQLiteStore

__all__ = ["COMPONENT", "MIGRATIONS", "ChallengeRecord", "GatewayRecord", "NodeRecord", "PostgreSQLStore", "SQLStore", "SQLiteStore",
           "Store", "is_database_url", "open_store"]


def __getattr__(name: str) -> Any:
    # PostgreSQLStore on first use: its module needs no driver to import, but keep SQLite-only
    # gateways from loading it at all
    if name == "PostgreSQLStore":
        from hyperinfer.gateway.store.postgresql import PostgreSQLStore

        return PostgreSQLStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_database_url(db: Any) -> bool:
    """True when ``db`` names a PostgreSQL database rather than an SQLite file."""
    from hyperinfer.gateway.store.postgresql import is_url

    return is_url(str(db)) if isinstance(db, str) else False


def open_store(db: str | Path) -> Store:
    """Open (creating tables if needed) the gateway database: an SQLite path (``":memory:"`` for
    tests) or a ``postgresql://`` URL."""
    if is_database_url(db):
        from hyperinfer.gateway.store.postgresql import PostgreSQLStore

        return PostgreSQLStore(str(db))
    return SQLiteStore(db if str(db) == ":memory:" else Path(db).expanduser())

"""The gateway store on SQLite and PostgreSQL (``db_location`` runs each test on both): schema
versions, persistence across reopen, atomic single-use challenges, conditional writes two
gateways rely on, transactions; plus SQLite's WAL and the PostgreSQL SQL translation."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from hyperinfer.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from hyperinfer.gateway.store import MIGRATIONS, NodeRecord, SQLiteStore, Store, is_database_url, open_store
from hyperinfer.gateway.store.base import GATEWAYS_MIGRATIONS


def _node(node_id: str = "n1", **kw) -> NodeRecord:
    base = dict(
        node_id=node_id, public_key=b"\x01" * 32, operator="alice", address="127.0.0.1:9000",
        targets=("cpu-x86_64-avx2", "cpu-x86_64"), devices=({"kind": "cpu", "count": 1},), capacity=4,
        state="healthy", joined_at_ms=1000, last_heartbeat_ms=2000, heartbeat_ts_ms=1500, outstanding=1,
        loaded=(("m", 1, "cpu-x86_64", "ab" * 32),), software_version="0.1.0",
    )
    base.update(kw)
    return NodeRecord(**base)


def test_backend_follows_db(db_location):
    s = open_store(db_location)
    try:
        assert isinstance(s, Store) and s.schema_version("registry") == len(MIGRATIONS)
        assert s.shared == is_database_url(db_location)  # PostgreSQL: several gateways may write
        assert isinstance(s, SQLiteStore) != s.shared
    finally:
        s.close()


def test_wal_and_schema_version(tmp_path):
    s = open_store(tmp_path / "gw.db")
    assert s.journal_mode == "wal"
    assert s.schema_version("registry") == len(MIGRATIONS)
    s.close()


def test_persists_across_reopen(db_location, tmp_path):
    if not is_database_url(db_location):
        db_location = str(tmp_path / "sub" / "gw.db")  # parent directory is created
    s = open_store(db_location)
    s.put_node(_node())
    assert s.claim_nonce(b"\x02" * 32, b"\x01" * 32, 99_000)
    secret = s.pool_secret("join-challenge")
    s.close()

    s = open_store(db_location)
    assert s.get_node("n1") == _node()
    assert s.count_challenges() == 1
    assert not s.claim_nonce(b"\x02" * 32, b"\x01" * 32, 99_000)  # used stays used
    assert s.pool_secret("join-challenge") == secret and len(secret) == 32
    assert s.schema_version("registry") == len(MIGRATIONS)  # migrating again is a no-op
    s.close()


def test_update_heartbeat_and_state(db_location):
    s = open_store(db_location)
    s.put_node(_node())
    assert s.update_heartbeat("n1", last_heartbeat_ms=5000, heartbeat_ts_ms=4999, outstanding=3, capacity=8,
                              loaded=[("m", 2, "cpu-x86_64", "cd" * 32)], state="healthy") == "healthy"
    r = s.get_node("n1")
    assert (r.last_heartbeat_ms, r.heartbeat_ts_ms, r.outstanding, r.capacity) == (5000, 4999, 3, 8)
    assert r.loaded == (("m", 2, "cpu-x86_64", "cd" * 32),)
    s.set_node_state("n1", "quarantined")
    assert s.get_node("n1").state == "quarantined"
    with pytest.raises(NotFound, match="unknown node 'nope'"):
        s.set_node_state("nope", "stale")
    with pytest.raises(NotFound):
        s.update_heartbeat("nope", last_heartbeat_ms=1, heartbeat_ts_ms=1, outstanding=0, capacity=1,
                           loaded=[], state="healthy")
    assert [n.node_id for n in s.list_nodes()] == ["n1"]
    s.close()


def test_quarantine_outlives_heartbeat_and_rejoin_written_by_another_gateway(db_location):
    """Gateway B quarantines; gateway A, not yet aware, records a heartbeat and a re-join."""
    a, b = open_store(db_location), open_store(db_location)
    try:
        a.put_node(_node())
        b.set_node_state("n1", "quarantined")
        assert a.update_heartbeat("n1", last_heartbeat_ms=9000, heartbeat_ts_ms=8999, outstanding=0,
                                  capacity=4, loaded=[], state="healthy") == "quarantined"
        assert a.put_node(_node(last_heartbeat_ms=9500), keep_quarantine=True) == "quarantined"
        assert b.get_node("n1").state == "quarantined" and b.get_node("n1").last_heartbeat_ms == 9500
        assert a.put_node(_node()) == "healthy"  # a plain put replaces the row
    finally:
        a.close()
        b.close()


def test_mark_stale_only_if_the_stored_heartbeat_is_old(db_location):
    s = open_store(db_location)
    s.put_node(_node(last_heartbeat_ms=2000))
    assert not s.mark_stale("n1", 1000)  # a newer heartbeat than the limit: stays healthy
    assert s.get_node("n1").state == "healthy"
    assert s.mark_stale("n1", 3000)
    assert s.get_node("n1").state == "stale"
    assert not s.mark_stale("n1", 3000)  # only healthy -> stale
    assert not s.mark_stale("nope", 3000)
    s.close()


def test_nonce_is_single_use_under_concurrency_and_the_secret_shared(db_location):
    """Eight claims on two stores (two gateways' connections): exactly one wins; both stores get
    the same pool secret (whoever asked first created it)."""
    stores = [open_store(db_location), open_store(db_location)]
    assert stores[0].pool_secret("join-challenge") == stores[1].pool_secret("join-challenge")
    nonce = b"\x07" * 32
    results = []
    barrier = threading.Barrier(8)

    def take(s):
        barrier.wait(timeout=10)
        results.append(not s.claim_nonce(nonce, b"\x01" * 32, 10_000))  # True: was used already

    threads = [threading.Thread(target=take, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] + [True] * 7
    s = stores[1]
    assert s.purge_challenges(10_001) == 1
    for s in stores:
        s.close()


def test_transaction_rolls_back_and_nests(db_location):
    s = open_store(db_location)
    s.migrate("ledger", [["CREATE TABLE ledger (node_id TEXT PRIMARY KEY, credits REAL NOT NULL)"]])
    with pytest.raises(RuntimeError):
        with s.transaction() as c:
            c.execute("INSERT INTO ledger VALUES ('a', 1.0)")
            raise RuntimeError("boom")
    with s.transaction() as c:
        c.execute("INSERT INTO ledger VALUES ('b', 2.0)")
        with s.transaction() as inner:  # joins the outer transaction
            inner.execute("INSERT INTO ledger VALUES ('c', ?)", (3.0,))
    with s.transaction() as c:
        rows = [tuple(r) for r in c.execute("SELECT node_id, credits FROM ledger ORDER BY node_id").fetchall()]
        assert c.execute("SELECT credits FROM ledger WHERE node_id = ?", ("c",)).fetchone()["credits"] == 3.0
        # a literal '?' and '%' are data, not parameters
        assert c.execute("SELECT COUNT(*) FROM ledger WHERE node_id LIKE '%' AND node_id <> '?'").fetchone()[0] == 2
    assert rows == [("b", 2.0), ("c", 3.0)]
    # a second component's migrations extend its own version only
    assert s.migrate("ledger", [["CREATE TABLE ledger (node_id TEXT PRIMARY KEY, credits REAL NOT NULL)"],
                                ["ALTER TABLE ledger ADD COLUMN stake REAL NOT NULL DEFAULT 0"]]) == 2
    assert s.schema_version("ledger") == 2 and s.schema_version("registry") == len(MIGRATIONS)
    # another connection (another process, e.g. an audit command) sees committed rows
    other = s.connect()
    assert other.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 2
    other.close()
    s.close()


def test_session_columns_migrate_and_rotate(tmp_path):
    """A version-1 database (before Worker-call sessions) gains the columns; old rows read as
    'no session'; a re-join (put_node) replaces or clears the node's X25519 key."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("INSERT INTO schema_version VALUES ('registry', 1)")
    conn.execute("INSERT INTO nodes VALUES ('old', ?, 'a', '127.0.0.1:1', '[]', '[]', 1, 'healthy', 1, 1, 1, 0, "
                 "'[]', '')", (b"\x01" * 32,))
    conn.commit()
    conn.close()
    s = open_store(path)
    try:
        old = s.get_node("old")
        assert old is not None and old.kx_public_key == b"" and old.kx_gateway == ""
        s.put_node(_node(kx_public_key=b"\x07" * 32, kx_gateway="gw1"))
        assert s.get_node("n1").kx_public_key == b"\x07" * 32 and s.get_node("n1").kx_gateway == "gw1"
        s.put_node(_node())  # re-joined without a session
        assert s.get_node("n1").kx_public_key == b"" and s.get_node("n1").kx_gateway == ""
    finally:
        s.close()


def test_newer_schema_is_refused(db_location):
    s = open_store(db_location)
    conn = s.connect()
    conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'registry'")
    conn.close()
    s.close()
    with pytest.raises(FailedPrecondition, match="schema version 99"):
        open_store(db_location)


def test_not_a_database(tmp_path):
    path = tmp_path / "gw.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FailedPrecondition, match="cannot open gateway database"):
        open_store(path)


def test_unreachable_postgresql_is_one_line_unavailable(tmp_path):
    pytest.importorskip("psycopg")
    url = f"postgresql://someone:secret@/nodb?host={tmp_path}&connect_timeout=2"  # no server there
    with pytest.raises(Unavailable, match="cannot connect to PostgreSQL") as e:
        open_store(url)
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_sql_translation_for_postgresql():
    from hyperinfer.gateway.store.postgresql import redact, translate, translate_ddl

    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE ?") == "SELECT a FROM t WHERE b = %s AND c LIKE %s"
    assert translate("SELECT '?', '%', 'it''s ?' FROM t WHERE x = ?") == \
        "SELECT '?', '%%', 'it''s ?' FROM t WHERE x = %s"
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    with pytest.raises(InvalidArgument, match="ON CONFLICT"):
        translate("INSERT OR REPLACE INTO t (a) VALUES (?)")
    assert translate_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, b BLOB, r REAL, n INTEGER)") == \
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, b BYTEA, r DOUBLE PRECISION, n INTEGER)"
    assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("postgresql://u@h/db?sslmode=require&password=pw") == "postgresql://u@h/db?sslmode=require&password=***"
    assert is_database_url("postgres://h/db") and not is_database_url("/var/gw.db") and not is_database_url(":memory:")


def test_sqlite_connect_is_independent(tmp_path):
    s = open_store(tmp_path / "gw.db")
    c = s.connect()
    assert isinstance(c, sqlite3.Connection)
    c.close()
    s.close()


@pytest.mark.parametrize("db, needle", [
    ("mysql://u@h/db", "postgresql://"),
    ("postgresql://someone:secret@/nodb?host=/nonexistent-hyperinfer-dir&connect_timeout=2",
     "cannot connect to PostgreSQL"),
])
def test_gateway_db_errors_are_one_line(tmp_path, db, needle):
    from support import assert_one_line_error, run_cli

    if db.startswith("postgresql"):
        pytest.importorskip("psycopg")
    proc = run_cli("gateway", "--repository", str(tmp_path), "--listen", "127.0.0.1:0", "--db", db,
                   "--key", str(tmp_path / "gateway.key"), timeout=60)
    assert_one_line_error(proc, needle)
    assert "secret" not in proc.stderr


def test_postgresql_store_survives_a_lost_connection(postgresql_url):
    """The server drops the gateway's connection (restart, failover): the next transaction
    opens a new one; one cut mid-transaction fails with UNAVAILABLE and changes nothing."""
    s = open_store(postgresql_url)
    admin = s.connect()
    try:
        s.put_node(_node())
        admin.execute("SELECT pg_terminate_backend(?)", (s._thread_conn().raw.info.backend_pid,))
        assert s.get_node("n1") == _node()  # reconnected before BEGIN
        with pytest.raises(Unavailable, match="lost the connection"):
            with s.transaction() as c:
                c.execute("UPDATE nodes SET capacity = 99 WHERE node_id = ?", ("n1",))
                admin.execute("SELECT pg_terminate_backend(?)", (s._thread_conn().raw.info.backend_pid,))
                c.execute("UPDATE nodes SET outstanding = 99 WHERE node_id = ?", ("n1",))
        assert s.get_node("n1").capacity == 4
    finally:
        admin.close()
        s.close()


def test_postgresql_connections_per_thread_are_closed(postgresql_url):
    """Each thread gets its own connection; a thread that ends closes it; close() closes the rest."""
    import gc

    s = open_store(postgresql_url)
    admin = s.connect()

    def sessions() -> int:
        return admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND application_name = 'hyperinfer-gateway' AND pid <> pg_backend_pid()").fetchone()[0]

    try:
        s.put_node(_node())
        base = sessions()
        threads = [threading.Thread(target=s.get_node, args=("n1",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        del threads
        gc.collect()
        from support import wait_for

        wait_for(lambda: sessions() == base, 10, "ended threads' connections to close")
        s.close()
        wait_for(lambda: sessions() == base - 1, 10, "close() to close the store's connection")
    finally:
        admin.close()


def test_gateways_using_the_database_are_registered(db_location):
    a, b = open_store(db_location), open_store(db_location)
    try:
        a.register_gateway("ga", b"\x0a" * 32, "127.0.0.1:8001", 1000)
        b.register_gateway("gb", b"\x0b" * 32, "127.0.0.1:8002", 1100)
        a.register_gateway("ga", b"\x0a" * 32, "", 5000, kx=(b"\x0c" * 32, b"\x0d" * 64))  # still alive
        b.register_gateway("gb", b"\x0b" * 32, "", 6000)  # no kx given: the stored one (none) is kept
        got = b.list_gateways()
        assert [(g.gateway_id, g.public_key, g.address, g.started_ms, g.last_seen_ms) for g in got] == [
            ("ga", b"\x0a" * 32, "127.0.0.1:8001", 1000, 5000), ("gb", b"\x0b" * 32, "127.0.0.1:8002", 1100, 6000)]
        assert [(g.kx_public_key, g.kx_signature) for g in got] == [(b"\x0c" * 32, b"\x0d" * 64), (b"", b"")]
        a.register_gateway("ga", b"\x0a" * 32, "", 7000)  # the sweeper's refresh keeps the kx
        assert b.list_gateways()[0].kx_public_key == b"\x0c" * 32
        assert a.schema_version("gateways") == len(GATEWAYS_MIGRATIONS)
    finally:
        a.close()
        b.close()

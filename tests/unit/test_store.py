"""SQLiteStore: WAL, schema versions, persistence across reopen, atomic single-use challenges."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from hyperinfer.errors import FailedPrecondition, NotFound
from hyperinfer.gateway.store import NodeRecord, open_store


def _node(node_id: str = "n1", **kw) -> NodeRecord:
    base = dict(
        node_id=node_id, public_key=b"\x01" * 32, operator="alice", address="127.0.0.1:9000",
        targets=("cpu-x86_64-avx2", "cpu-x86_64"), devices=({"kind": "cpu", "count": 1},), capacity=4,
        state="healthy", joined_at_ms=1000, last_heartbeat_ms=2000, heartbeat_ts_ms=1500, outstanding=1,
        loaded=(("m", 1, "cpu-x86_64", "ab" * 32),), software_version="0.1.0",
    )
    base.update(kw)
    return NodeRecord(**base)


def test_wal_and_schema_version(tmp_path):
    s = open_store(tmp_path / "gw.db")
    assert s.journal_mode == "wal"
    assert s.schema_version("registry") == 1
    s.close()


def test_persists_across_reopen(tmp_path):
    path = tmp_path / "sub" / "gw.db"  # parent directory is created
    s = open_store(path)
    s.put_node(_node())
    s.add_challenge(b"\x02" * 32, b"\x01" * 32, 99_000)
    s.close()

    s = open_store(path)
    assert s.get_node("n1") == _node()
    assert s.count_challenges() == 1
    assert s.schema_version("registry") == 1  # migrating again is a no-op
    s.close()


def test_update_heartbeat_and_state(tmp_path):
    s = open_store(tmp_path / "gw.db")
    s.put_node(_node())
    s.update_heartbeat("n1", last_heartbeat_ms=5000, heartbeat_ts_ms=4999, outstanding=3, capacity=8,
                       loaded=[("m", 2, "cpu-x86_64", "cd" * 32)], state="healthy")
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


def test_take_challenge_is_single_use_under_concurrency(tmp_path):
    s = open_store(tmp_path / "gw.db")
    nonce = b"\x07" * 32
    s.add_challenge(nonce, b"\x01" * 32, 10_000)
    results = []
    barrier = threading.Barrier(8)

    def take():
        barrier.wait(timeout=10)
        results.append(s.take_challenge(nonce).used)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == [False] + [True] * 7
    assert s.take_challenge(b"\x00" * 32) is None
    assert s.purge_challenges(10_001) == 1
    s.close()


def test_transaction_rolls_back_and_nests(tmp_path):
    s = open_store(tmp_path / "gw.db")
    s.migrate("ledger", [["CREATE TABLE ledger (node_id TEXT PRIMARY KEY, credits REAL NOT NULL)"]])
    with pytest.raises(RuntimeError):
        with s.transaction() as c:
            c.execute("INSERT INTO ledger VALUES ('a', 1.0)")
            raise RuntimeError("boom")
    with s.transaction() as c:
        c.execute("INSERT INTO ledger VALUES ('b', 2.0)")
        with s.transaction() as inner:  # joins the outer transaction
            inner.execute("INSERT INTO ledger VALUES ('c', 3.0)")
    with s.transaction() as c:
        rows = [tuple(r) for r in c.execute("SELECT node_id, credits FROM ledger ORDER BY node_id")]
    assert rows == [("b", 2.0), ("c", 3.0)]
    # a second component's migrations extend its own version only
    assert s.migrate("ledger", [["CREATE TABLE ledger (node_id TEXT PRIMARY KEY, credits REAL NOT NULL)"],
                                ["ALTER TABLE ledger ADD COLUMN stake REAL NOT NULL DEFAULT 0"]]) == 2
    assert s.schema_version("ledger") == 2 and s.schema_version("registry") == 1
    # another connection (another process, e.g. an audit command) sees committed rows
    other = s.connect()
    assert other.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 2
    other.close()
    s.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "gw.db"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'registry'")
    conn.commit()
    conn.close()
    with pytest.raises(FailedPrecondition, match="schema version 99"):
        open_store(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "gw.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FailedPrecondition, match="cannot open gateway database"):
        open_store(path)

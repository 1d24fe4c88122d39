"""Operator certificates, signed calls and the operators table (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from hyperinfer.gateway.operators import ADMITTED, OPEN, QUARANTINED, REMOVED, OperatorBook
from hyperinfer.gateway.store import open_store
from hyperinfer.verify.operators import (
    OperatorCert, ReplayGuard, caller_from_metadata, certify, check_call, sign_call, verify_cert,
)
from hyperinfer.verify.signing import key_id, public_bytes
from support import assert_one_line_error, run_cli


def test_certificate_binds_one_node_key_to_the_operator_key():
    op, node, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = certify(op, public_bytes(node), "acme").to_bytes()
    cert = verify_cert(data, public_bytes(node))
    assert (cert.operator_id, cert.node_id, cert.name) == (key_id(op), key_id(node), "acme")
    with pytest.raises(PermissionDenied, match="not this node"):
        verify_cert(data, public_bytes(other))  # a certificate cannot be lent to another node key
    forged = OperatorCert(public_bytes(op), public_bytes(other), cert.issued_ms, cert.signature, "acme")
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_cert(forged.to_bytes(), public_bytes(other))
    with pytest.raises(InvalidArgument, match="operator_cert"):
        verify_cert(b"{not json", public_bytes(node))


def test_signed_calls_are_bound_to_method_audience_fields_and_time():
    gw = Ed25519PrivateKey.generate()
    md = sign_call(gw, "Infer", "node-1", {"request_id": "r1"}, timestamp_ms=1_000_000)
    caller = caller_from_metadata(md)
    assert check_call(caller, "Infer", "node-1", {"request_id": "r1"}, now_ms=1_000_500).key_id == key_id(gw)
    for method, aud, fields, now in (("Info", "node-1", {"request_id": "r1"}, 1_000_000),
                                     ("Infer", "node-2", {"request_id": "r1"}, 1_000_000),
                                     ("Infer", "node-1", {"request_id": "r2"}, 1_000_000)):
        with pytest.raises(Unauthenticated, match="does not verify"):
            check_call(caller, method, aud, fields, now_ms=now)
    with pytest.raises(Unauthenticated, match="off this clock"):
        check_call(caller, "Infer", "node-1", {"request_id": "r1"}, now_ms=1_000_000 + 10 * 60_000)
    with pytest.raises(Unauthenticated, match="must be signed"):
        check_call(caller_from_metadata([("user-agent", "x")]), "Infer", "node-1")
    with pytest.raises(Unauthenticated, match="malformed"):
        caller_from_metadata([("x-hyperinfer-key", "zz")])
    guard = ReplayGuard()
    guard.check(caller)
    with pytest.raises(Unauthenticated, match="replayed"):
        guard.check(caller)


def test_replay_guard_stays_bounded():
    guard = ReplayGuard(max_entries=100)
    key = Ed25519PrivateKey.generate()
    for i in range(1000):
        guard.check(caller_from_metadata(sign_call(key, "Infer", "n", {"i": i})))
    assert len(guard._seen) <= 100


@pytest.fixture
def book(db_location):
    store = open_store(db_location)
    yield OperatorBook(store)
    store.close()


def test_operator_book_admit_promote_fault_remove(book):
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a = book.add(public_bytes(k1), "acme", 50)
    assert (a.operator_id, a.admission, a.bond, a.remaining, a.state) == (key_id(k1), ADMITTED, 50, 50, "active")
    with pytest.raises(AlreadyExists):
        book.add(public_bytes(k1), "acme", 50)
    with pytest.raises(InvalidArgument, match="--bond"):
        book.add(public_bytes(k2), "b", -1)
    # an open operator (joined an --open-pool gateway) has no bond until it is admitted; admitted a
    # moment later (list() orders by admission time, then by id: same-millisecond ids are random)
    time.sleep(0.005)
    o = book.add_open(key_id(k2), "walk-in", public_bytes(k2))
    assert (o.admission, o.bond) == (OPEN, 0)
    assert book.add_open(key_id(k2), "again").name == "walk-in"  # idempotent
    assert book.add(public_bytes(k2), "walk-in", 20).admission == ADMITTED
    # faults slash the shared bond, never below zero, and quarantine at the threshold
    with book.store.transaction() as c:
        assert not book.fault_in(c, a.operator_id, 30, 2, 1)
        assert book.fault_in(c, a.operator_id, 30, 2, 2)
        assert not book.fault_in(c, a.operator_id, 30, 2, 3)  # only newly quarantined once
    a = book.require(a.operator_id)
    assert (a.faults, a.slashed, a.remaining, a.state) == (3, 50, 0, QUARANTINED)
    assert book.find("acme").operator_id == a.operator_id and book.find(a.operator_id[:10]).name == "acme"
    assert book.remove("walk-in").state == REMOVED
    with pytest.raises(NotFound):
        book.find("nobody")
    assert [x.name for x in book.list()] == ["acme", "walk-in"]


def test_operators_cli(tmp_path):
    db, opkey, nodekey = tmp_path / "gw.db", tmp_path / "op.key", tmp_path / "node.key"
    assert run_cli("keys", "create", str(opkey)).returncode == 0
    assert run_cli("keys", "create", str(nodekey)).returncode == 0
    p = run_cli("operators", "add", str(opkey), "--name", "acme", "--bond", "40", "--db", str(db))
    assert p.returncode == 0 and "admitted operator" in p.stdout, p.stderr
    assert_one_line_error(run_cli("operators", "add", str(opkey), "--name", "acme", "--db", str(db)),
                          "already admitted")
    p = run_cli("operators", "certify", str(nodekey), "--key", str(opkey), "-o", str(tmp_path / "node.cert"))
    assert p.returncode == 0, p.stderr
    from hyperinfer.identity import load_key

    cert = verify_cert((tmp_path / "node.cert").read_bytes(), public_bytes(load_key(nodekey)))
    assert cert.operator_id == key_id(load_key(opkey))
    p = run_cli("operators", "list", "--db", str(db), "--json")
    import json

    rows = json.loads(p.stdout)
    assert [(r["name"], r["bond"], r["state"]) for r in rows] == [("acme", 40, "active")]
    assert run_cli("operators", "remove", "acme", "--db", str(db)).returncode == 0
    assert_one_line_error(run_cli("operators", "remove", "nobody", "--db", str(db)), "no operator")

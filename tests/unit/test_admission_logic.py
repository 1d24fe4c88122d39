"""Admission, shared bonds and operator-level quarantine on the registry + ledger (no network),
on SQLite and PostgreSQL. Each attack here succeeded against the code before admission."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import NotFound, PermissionDenied, Unauthenticated
from hyperinfer.gateway.access import Access
from hyperinfer.gateway.ledger import Ledger, LedgerConfig
from hyperinfer.gateway.operators import OperatorBook
from hyperinfer.gateway.registry import Registry
from hyperinfer.gateway.store import open_store
from hyperinfer.gateway.verification import node_ref
from hyperinfer.verify.operators import certify, sign_call
from hyperinfer.verify.sampling import choose_validator
from hyperinfer.verify.signing import key_id, public_bytes
from hyperinfer.gateway.registry import Heartbeat, JoinRequest
from hyperinfer.verify import payloads
from hyperinfer.verify.signing import fingerprint, sign

K = 3  # quarantine_after

# the registry tests' helpers
GW = "gw" * 16
SHA = "ab" * 32


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeCatalog:
    """m/1 has artifacts for cpu-x86_64 (SHA) and cuda-sm90; m/2 for cpu-x86_64."""

    digests = {("m", 1, "cpu-x86_64"): SHA, ("m", 1, "cuda-sm90"): "cd" * 32, ("m", 2, "cpu-x86_64"): "ef" * 32}

    def artifact_sha256(self, name, version, target_id):
        return self.digests.get((name, version, target_id))

    def versions(self, name):
        return sorted({v for (n, v, _) in self.digests if n == name})


def join_req(reg: Registry, key: Ed25519PrivateKey, *, nonce: bytes | None = None, operator="alice",
             address="127.0.0.1:9001", targets=("cpu-x86_64",), max_concurrency=4, gateway_id=GW,
             sign_with: Ed25519PrivateKey | None = None) -> JoinRequest:
    pub = public_bytes(key)
    if nonce is None:
        nonce = reg.challenge(pub).nonce
    data = payloads.join_payload(nonce=nonce, gateway_id=gateway_id, node_id=fingerprint(pub), operator=operator,
                                 listen_address=address, targets=list(targets), max_concurrency=max_concurrency)
    return JoinRequest(public_key=pub, nonce=nonce, signature=sign(sign_with or key, data), operator=operator,
                       listen_address=address, targets=list(targets), max_concurrency=max_concurrency)


def hb(key, clock, *, ts_ms=None, outstanding=0, capacity=4, loaded=(("m", 1, "cpu-x86_64", SHA),),
       node_id=None, sign_with=None) -> Heartbeat:
    node_id = node_id or fingerprint(public_bytes(key))
    ts_ms = int(clock() * 1000) if ts_ms is None else ts_ms
    data = payloads.heartbeat_payload(node_id=node_id, timestamp_ms=ts_ms, outstanding=outstanding,
                                      capacity=capacity, loaded=loaded)
    return Heartbeat(node_id, ts_ms, outstanding, capacity, list(loaded), sign(sign_with or key, data))




@pytest.fixture
def pool(db_location):
    store = open_store(db_location)
    book = OperatorBook(store)
    clock = Clock()

    def make(open_pool: bool = False):
        reg = Registry(store, gateway_id=GW, catalog=FakeCatalog(), heartbeat_interval=5.0, clock=clock,
                       operators=book, open_pool=open_pool)

        def operator_of(node_id):
            op = reg.operator_of(node_id)
            return op.operator_id if op else None

        ledger = Ledger(store, LedgerConfig(initial_stake=100, slash_per_fault=10, quarantine_after=K),
                        on_quarantine=lambda n: reg.set_state(n, "quarantined"), operators=book,
                        operator_of=operator_of, on_operator_quarantine=reg.quarantine_operator)
        return reg, ledger

    yield book, make, clock
    store.close()


def join(reg, node_key, op_key=None, operator="whatever"):
    req = join_req(reg, node_key, operator=operator)
    if op_key is not None:
        req = replace(req, operator_cert=certify(op_key, public_bytes(node_key)).to_bytes())
    return reg.join(req)


def test_closed_pool_admits_only_certified_nodes_of_admitted_operators(pool):
    book, make, _ = pool
    reg, _ = make(open_pool=False)
    op, stranger, node = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    # before: any fresh key with a self-declared operator name joined
    with pytest.raises(PermissionDenied, match="--operator-cert"):
        join(reg, node)
    with pytest.raises(PermissionDenied, match="not admitted"):
        join(reg, node, stranger)
    book.add(public_bytes(op), "acme", 50)
    info = join(reg, node, op, operator="I am someone else")
    assert info.operator == key_id(op) and info.state == "healthy"  # filed under the key, not the claim
    # a certificate for another node key cannot be reused
    other = Ed25519PrivateKey.generate()
    req = replace(join_req(reg, other), operator_cert=certify(op, public_bytes(node)).to_bytes())
    with pytest.raises(PermissionDenied, match="not this node"):
        reg.join(req)
    forged = certify(stranger, public_bytes(other)).to_bytes().replace(
        public_bytes(stranger).hex().encode(), public_bytes(op).hex().encode())
    with pytest.raises(Unauthenticated):
        reg.join(replace(join_req(reg, other), operator_cert=forged))


def test_open_pool_operators_start_with_no_bond(pool):
    book, make, _ = pool
    reg, ledger = make(open_pool=True)
    walk_in = Ed25519PrivateKey.generate()
    info = join(reg, walk_in, operator="alice")
    op = reg.operator_of(info.node_id)
    assert (op.admission, op.bond, op.operator_id) == ("open", 0, f"node:{info.node_id}")
    assert ledger.details(info.node_id)["stake"] == 0  # nothing at stake, so full probation
    assert ledger.details(info.node_id)["probation"]


def test_sybil_node_keys_of_one_operator_never_validate_each_other(pool):
    """Attack: one party joined two keys under two operator *names*; each validated the other."""
    book, make, _ = pool
    reg, _ = make()
    op, other_op = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    book.add(public_bytes(op), "acme", 50)
    book.add(public_bytes(other_op), "honest", 50)
    a, b, h = (Ed25519PrivateKey.generate() for _ in range(3))
    na, nb = join(reg, a, op, operator="alice"), join(reg, b, op, operator="bob")
    refs = [node_ref(n, "m", 1) for n in (na, nb)]
    assert choose_validator(refs[0], [refs[1]]) is None  # same operator key: not independent
    nh = join(reg, h, other_op, operator="alice")  # same declared name, another operator: independent
    choice = choose_validator(refs[0], [refs[1], node_ref(nh, "m", 1)])
    assert choice is not None and choice.node.node_id == nh.node_id


def test_whitewashing_with_a_fresh_node_key_washes_nothing(pool):
    """Attack: a quarantined node came back healthy, stake 100, faults 0, with a new key."""
    book, make, clock = pool
    reg, ledger = make()
    op = Ed25519PrivateKey.generate()
    book.add(public_bytes(op), "acme", 25)
    n1, n2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    i1, i2 = join(reg, n1, op), join(reg, n2, op)
    ledger.record_fault(i1.node_id, "wrong answer")
    d1, d2 = ledger.details(i1.node_id), ledger.details(i2.node_id)
    assert d1["stake"] == d2["stake"] == 15  # one bond, shared: n2 lost what n1 was slashed
    ledger.record_fault(i2.node_id, "wrong answer")
    ledger.record_fault(i2.node_id, "wrong answer")  # the operator's 3rd fault
    assert book.require(key_id(op)).state == "quarantined"
    assert reg.get(i1.node_id).state == "quarantined" and reg.get(i2.node_id).state == "quarantined"
    fresh = Ed25519PrivateKey.generate()
    info = join(reg, fresh, op)
    assert info.state == "quarantined"
    assert ledger.details(info.node_id)["stake"] == 0  # the bond is gone (25 - 3 * 10, floored)
    clock.t += 1
    assert reg.heartbeat(hb(fresh, clock)).state == "quarantined"
    assert reg.schedulable_nodes("m", 1) == []


def test_removed_operator_is_refused_at_its_next_heartbeat(pool):
    book, make, clock = pool
    reg, _ = make()
    op, node = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    book.add(public_bytes(op), "acme", 10)
    info = join(reg, node, op)
    book.remove("acme")
    book._forget(key_id(op))
    clock.t += 1
    with pytest.raises(PermissionDenied, match="removed"):
        reg.heartbeat(hb(node, clock))
    with pytest.raises(NotFound):
        reg.heartbeat(hb(node, clock, ts_ms=int(clock() * 1000) + 1))
    with pytest.raises(PermissionDenied, match="removed"):
        join(reg, node, op)
    assert reg.get(info.node_id).state == "left"


def test_closed_pool_api_needs_a_member_or_admin_signature(pool):
    book, make, _ = pool
    reg, _ = make()
    admin, op, node, stranger = (Ed25519PrivateKey.generate() for _ in range(4))
    access = Access(reg, GW, [public_bytes(admin)], open_pool=False)
    fields = {"model_name": "m", "model_version": 1, "target_id": "cpu-x86_64", "sha256": "ab", "offset": 0}
    # before: anyone who asked got every artifact and the whole status
    with pytest.raises(Unauthenticated):
        access.check_fetch([], fields)
    with pytest.raises(Unauthenticated):
        access.check_status([])
    with pytest.raises(PermissionDenied, match="neither an admin key nor a node"):
        access.check_fetch(sign_call(stranger, "FetchArtifact", GW, fields), fields)
    book.add(public_bytes(op), "acme", 10)
    join(reg, node, op)
    access.check_fetch(sign_call(node, "FetchArtifact", GW, fields), fields)
    with pytest.raises(Unauthenticated, match="does not verify"):  # signed for another artifact
        access.check_fetch(sign_call(node, "FetchArtifact", GW, fields), dict(fields, target_id="cuda-sm90"))
    access.check_status(sign_call(admin, "Status", ""))
    access.check_status(sign_call(node, "Status", ""))
    md = sign_call(admin, "Status", "")
    access.check_status(md)
    with pytest.raises(Unauthenticated, match="replayed"):
        access.check_status(md)
    access.authorize_admin(sign_call(admin, "RepositoryModelLoad", ""), "RepositoryModelLoad")
    with pytest.raises(PermissionDenied, match="admin key"):
        access.authorize_admin(sign_call(node, "RepositoryModelLoad", ""), "RepositoryModelLoad")
    # an open pool without admin keys keeps Status open (anyone may join it anyway)
    Access(reg, GW, [], open_pool=True).check_status([])

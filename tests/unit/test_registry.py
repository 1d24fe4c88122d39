"""Registry: join (signature, nonce replay/expiry/binding), heartbeats, liveness, restart, scheduling;
several gateways' registries on one PostgreSQL store."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from hyperinfer.gateway.registry import Heartbeat, JoinRequest, Registry
from hyperinfer.gateway.store import open_store
from hyperinfer.verify import payloads
from hyperinfer.verify.signing import fingerprint, public_bytes, sign

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


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(db_location):
    """Every registry test runs on SQLite and on PostgreSQL."""
    s = open_store(db_location)
    yield s
    s.close()


@pytest.fixture
def reg(store, clock):
    return Registry(store, gateway_id=GW, catalog=FakeCatalog(), heartbeat_interval=5.0, clock=clock)


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


def test_valid_join(reg, caplog):
    key = Ed25519PrivateKey.generate()
    with caplog.at_level(logging.INFO, logger="hyperinfer.gateway"):
        node = reg.join(join_req(reg, key))
    assert node.node_id == fingerprint(public_bytes(key))
    assert node.state == "healthy" and node.capacity == 4 and node.operator == "alice"
    assert reg.get(node.node_id).address == "127.0.0.1:9001"
    assert any("joined" in r.message and node.node_id[:12] in r.message for r in caplog.records)


def test_join_wrong_signature(reg):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="join signature does not verify"):
        reg.join(join_req(reg, key, sign_with=other))
    # signed for another gateway: same error, the gateway id is part of what is signed
    with pytest.raises(Unauthenticated, match="join signature"):
        reg.join(join_req(reg, key, gateway_id="other-gateway"))
    assert reg.all_nodes() == []


def test_replayed_nonce(reg):
    key = Ed25519PrivateKey.generate()
    req = join_req(reg, key)
    reg.join(req)
    with pytest.raises(Unauthenticated, match="already used"):
        reg.join(req)


def test_unknown_nonce(reg):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="nonce is unknown"):
        reg.join(join_req(reg, key, nonce=b"\x05" * 32))


def test_expired_nonce(reg, clock):
    key = Ed25519PrivateKey.generate()
    req = join_req(reg, key)
    clock.t += 61
    with pytest.raises(Unauthenticated, match="expired"):
        reg.join(req)


def test_nonce_bound_to_key(reg):
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    nonce = reg.challenge(public_bytes(a)).nonce
    with pytest.raises(Unauthenticated, match="different public key"):
        reg.join(join_req(reg, b, nonce=nonce))


@pytest.mark.parametrize("kw, field", [
    ({"address": "no-port"}, "listen_address"),
    ({"address": "host:99999"}, "listen_address"),
    ({"address": "0.0.0.0:9000"}, "listen_address"),
    ({"targets": ()}, "targets"),
    ({"targets": ("CPU X86",)}, "targets"),
    ({"operator": ""}, "operator"),
    ({"max_concurrency": 0}, "max_concurrency"),
])
def test_join_invalid_declaration(reg, kw, field):
    with pytest.raises(InvalidArgument, match=field):
        reg.join(join_req(reg, Ed25519PrivateKey.generate(), **kw))


def test_join_bad_key_and_nonce_lengths(reg):
    with pytest.raises(InvalidArgument, match="public_key"):
        reg.challenge(b"short")
    key = Ed25519PrivateKey.generate()
    req = join_req(reg, key)
    with pytest.raises(InvalidArgument, match="nonce"):
        reg.join(JoinRequest(**{**req.__dict__, "nonce": b"x"}))


def test_heartbeat_unknown_node(reg, clock):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NotFound, match="unknown node .*join first"):
        reg.heartbeat(hb(key, clock))


def test_heartbeat_signature_and_timestamps(reg, clock):
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    with pytest.raises(Unauthenticated, match="heartbeat signature"):
        reg.heartbeat(hb(key, clock, sign_with=Ed25519PrivateKey.generate()))
    first = hb(key, clock)
    reg.heartbeat(first)
    with pytest.raises(InvalidArgument, match="not newer"):
        reg.heartbeat(first)  # replay
    with pytest.raises(InvalidArgument, match="clock"):
        reg.heartbeat(hb(key, clock, ts_ms=int((clock() + 400) * 1000)))
    clock.t += 1
    info = reg.heartbeat(hb(key, clock, outstanding=2))
    assert info.outstanding == 2 and info.loaded == {("m", 1): ("cpu-x86_64", SHA)}
    assert reg.get(node.node_id).state == "healthy"


def test_liveness_expiry_and_recovery(reg, clock, caplog):
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    reg.heartbeat(hb(key, clock))
    assert [n.node_id for n in reg.schedulable_nodes("m", 1)] == [node.node_id]
    clock.t += 14  # < 3 intervals
    assert reg.get(node.node_id).state == "healthy"
    clock.t += 2  # > 15 s: stale on read, before any sweep
    assert reg.get(node.node_id).state == "stale"
    assert reg.schedulable_nodes("m", 1) == []
    with caplog.at_level(logging.INFO, logger="hyperinfer.gateway"):
        assert reg.sweep() == [node.node_id]
    assert any("healthy -> stale" in r.message for r in caplog.records)
    assert reg.store.get_node(node.node_id).state == "stale"
    reg.heartbeat(hb(key, clock))
    assert reg.get(node.node_id).state == "healthy"
    assert len(reg.schedulable_nodes("m", 1)) == 1


def test_schedulable_requires_manifest_digest(reg, clock):
    good, wrong_sha, other_model = (Ed25519PrivateKey.generate() for _ in range(3))
    for k in (good, wrong_sha, other_model):
        reg.join(join_req(reg, k))
    reg.heartbeat(hb(good, clock, outstanding=1))
    reg.heartbeat(hb(wrong_sha, clock, loaded=(("m", 1, "cpu-x86_64", "00" * 32),)))
    reg.heartbeat(hb(other_model, clock, loaded=(("m", 2, "cpu-x86_64", "ef" * 32),)))
    gid = fingerprint(public_bytes(good))
    assert [n.node_id for n in reg.schedulable_nodes("m", 1)] == [gid]
    # None / "" mean the newest version the catalog offers
    assert [n.node_id for n in reg.schedulable_nodes("m", None)] == [fingerprint(public_bytes(other_model))]
    assert reg.schedulable_nodes("unknown", 1) == []


def test_least_outstanding_first(reg, clock):
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    for k, load in zip(keys, (3, 0, 1)):
        reg.join(join_req(reg, k))
        reg.heartbeat(hb(k, clock, outstanding=load))
    loads = [n.outstanding for n in reg.schedulable_nodes("m", 1)]
    assert loads == [0, 1, 3]


def test_report_failure_until_next_heartbeat(reg, clock):
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    reg.heartbeat(hb(key, clock))
    reg.report_failure(node.node_id)
    assert reg.schedulable_nodes("m", 1) == []
    assert reg.get(node.node_id).failed
    clock.t += 1
    reg.heartbeat(hb(key, clock))
    assert len(reg.schedulable_nodes("m", 1)) == 1


def test_quarantine_survives_heartbeat_and_rejoin(reg, clock):
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    reg.heartbeat(hb(key, clock))
    changes = []
    reg.on_state_change(lambda *a: changes.append(a))
    reg.set_state(node.node_id, "quarantined")
    clock.t += 1
    reg.heartbeat(hb(key, clock))
    assert reg.get(node.node_id).state == "quarantined"
    reg.join(join_req(reg, key))
    assert reg.get(node.node_id).state == "quarantined"
    assert reg.schedulable_nodes("m", 1) == []
    assert changes == [(node.node_id, "healthy", "quarantined")]
    with pytest.raises(InvalidArgument, match="state"):
        reg.set_state(node.node_id, "bogus")
    with pytest.raises(NotFound):
        reg.set_state("nope", "quarantined")


def test_leave(reg, clock):
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    ts = int(clock() * 1000)
    with pytest.raises(Unauthenticated, match="leave signature"):
        reg.leave(node.node_id, ts, sign(Ed25519PrivateKey.generate(), payloads.leave_payload(
            node_id=node.node_id, timestamp_ms=ts)))
    reg.leave(node.node_id, ts, sign(key, payloads.leave_payload(node_id=node.node_id, timestamp_ms=ts)))
    assert reg.get(node.node_id).state == "left"
    with pytest.raises(NotFound, match="left the pool; join again"):
        reg.heartbeat(hb(key, clock))
    reg.join(join_req(reg, key))
    assert reg.get(node.node_id).state == "healthy"


def test_restart_keeps_nodes_stale_until_heartbeat(tmp_path, clock):
    path = tmp_path / "gw.db"
    s = open_store(path)
    reg = Registry(s, gateway_id=GW, catalog=FakeCatalog(), clock=clock)
    key = Ed25519PrivateKey.generate()
    node = reg.join(join_req(reg, key))
    reg.heartbeat(hb(key, clock))
    first_ts = reg.store.get_node(node.node_id).heartbeat_ts_ms
    s.close()

    s = open_store(path)
    reg = Registry(s, gateway_id=GW, catalog=FakeCatalog(), clock=clock)
    again = reg.get(node.node_id)
    assert again.state == "stale" and again.operator == "alice" and again.public_key == public_bytes(key)
    assert reg.schedulable_nodes("m", 1) == []
    with pytest.raises(InvalidArgument, match="not newer"):  # replay protection survives the restart
        reg.heartbeat(hb(key, clock, ts_ms=first_ts))
    clock.t += 1
    reg.heartbeat(hb(key, clock))
    assert reg.get(node.node_id).state == "healthy"
    s.close()


def test_challenge_flood_stores_nothing_and_cannot_block_joins(reg):
    """10,050 Challenge calls once filled a table and blocked every join for a minute: challenges
    are stateless now (HMAC), so a flood writes nothing and a join right after it works."""
    pub = public_bytes(Ed25519PrivateKey.generate())
    for _ in range(10_000):
        reg.challenge(pub)
    assert reg.store.count_challenges() == 0
    key = Ed25519PrivateKey.generate()
    assert reg.join(join_req(reg, key)).state == "healthy"
    assert reg.store.count_challenges() == 1  # only the nonce a join used is kept (until it expires)


def test_forged_nonce_with_a_valid_expiry_is_refused(reg):
    key = Ed25519PrivateKey.generate()
    real = reg.challenge(public_bytes(key)).nonce
    forged = real[:16] + bytes(16)
    with pytest.raises(Unauthenticated, match="nonce is unknown"):
        reg.join(join_req(reg, key, nonce=forged))


def test_node_info_is_hashable(reg):
    node = reg.join(join_req(reg, Ed25519PrivateKey.generate()))
    assert len({node, reg.get(node.node_id)}) == 1


# ------------------------------------------------------- several gateways, one shared store


@pytest.fixture
def two_gateways(postgresql_url, clock):
    """Registries of two gateways (ids GW, GW2) on one PostgreSQL database, no read cache."""
    stores = [open_store(postgresql_url), open_store(postgresql_url)]
    regs = [Registry(s, gateway_id=gid, catalog=FakeCatalog(), heartbeat_interval=5.0, clock=clock, cache_ttl=0)
            for s, gid in zip(stores, (GW, GW2))]
    yield regs
    for s in stores:
        s.close()


GW2 = "g2" * 16


def test_node_joined_at_one_gateway_is_schedulable_from_the_other(two_gateways, clock):
    a, b = two_gateways
    key = Ed25519PrivateKey.generate()
    node = a.join(join_req(a, key))
    a.heartbeat(hb(key, clock, outstanding=1))
    seen = b.schedulable_nodes("m", 1)
    assert [n.node_id for n in seen] == [node.node_id] and seen[0].address == "127.0.0.1:9001"
    assert seen[0].outstanding == 1
    # a join signed for gateway A does not verify at gateway B (the gateway id is signed)
    with pytest.raises(Unauthenticated, match="join signature"):
        b.join(join_req(a, Ed25519PrivateKey.generate()))
    # liveness: B sees the heartbeats A records, and computes staleness from them
    clock.t += 16
    assert b.get(node.node_id).state == "stale"
    a.heartbeat(hb(key, clock))
    assert b.get(node.node_id).state == "healthy"
    # a failure one gateway saw stays its own: the node may be reachable from the other
    b.report_failure(node.node_id)
    assert b.schedulable_nodes("m", 1) == [] and len(a.schedulable_nodes("m", 1)) == 1
    # until the node's next heartbeat, which it sends to A only
    clock.t += 1
    a.heartbeat(hb(key, clock))
    assert [n.node_id for n in b.schedulable_nodes("m", 1)] == [node.node_id]


def test_quarantine_by_one_gateway_holds_on_the_other(two_gateways, clock):
    a, b = two_gateways
    key = Ed25519PrivateKey.generate()
    node = a.join(join_req(a, key))
    a.heartbeat(hb(key, clock))
    changes = []
    a.on_state_change(lambda *args: changes.append(args))
    b.set_state(node.node_id, "quarantined", reason="ledger at gateway B")
    assert a.schedulable_nodes("m", 1) == []
    assert changes == [(node.node_id, "healthy", "quarantined")]  # A's listeners hear of it
    clock.t += 1
    assert a.heartbeat(hb(key, clock)).state == "quarantined"  # its own heartbeat does not lift it
    assert a.join(join_req(a, key)).state == "quarantined"  # nor a re-join
    assert b.get(node.node_id).state == "quarantined"


def test_sweep_does_not_undo_a_heartbeat_another_gateway_recorded(postgresql_url, clock):
    """B's cache is old (long TTL); A records a heartbeat; B's sweep must not mark the node stale."""
    sa, sb = open_store(postgresql_url), open_store(postgresql_url)
    try:
        a = Registry(sa, gateway_id=GW, catalog=FakeCatalog(), clock=clock, cache_ttl=0)
        key = Ed25519PrivateKey.generate()
        node = a.join(join_req(a, key))
        b = Registry(sb, gateway_id=GW2, catalog=FakeCatalog(), clock=clock, cache_ttl=3600)
        clock.t += 16
        a.heartbeat(hb(key, clock))
        assert b.sweep() == []
        assert sa.get_node(node.node_id).state == "healthy"
        clock.t += 16
        assert b.sweep() == [node.node_id]  # really silent now
    finally:
        sa.close()
        sb.close()


def test_challenge_from_one_gateway_is_single_use_across_both(two_gateways):
    a, b = two_gateways
    key = Ed25519PrivateKey.generate()
    req = join_req(a, key)
    a.join(req)
    with pytest.raises(Unauthenticated, match="already used"):
        a.join(req)
    # the nonce store is shared: a challenge taken at A can be answered by a join (signed for B) at B
    nonce = a.challenge(public_bytes(key)).nonce
    b.join(join_req(b, key, nonce=nonce, gateway_id=GW2))
    assert a.get(fingerprint(public_bytes(key))).state == "healthy"


def test_a_fault_for_a_node_quarantined_elsewhere_refreshes_this_gateways_view(postgresql_url, clock):
    """B reads the nodes table through a long cache; A's ledger quarantines the node. The next
    fault B's ledger records for it finds it already quarantined and makes B re-read the store
    at once, so B stops scheduling it then, not when its cache expires."""
    from hyperinfer.gateway.ledger import Ledger, LedgerConfig

    sa, sb = open_store(postgresql_url), open_store(postgresql_url)
    try:
        a = Registry(sa, gateway_id=GW, catalog=FakeCatalog(), clock=clock, cache_ttl=0)
        key = Ed25519PrivateKey.generate()
        node = a.join(join_req(a, key))
        a.heartbeat(hb(key, clock))
        b = Registry(sb, gateway_id=GW2, catalog=FakeCatalog(), clock=clock, cache_ttl=3600)
        cfg = LedgerConfig(quarantine_after=2)
        la = Ledger(sa, cfg, on_quarantine=lambda n: a.set_state(n, "quarantined"), on_stale_view=a.reload)
        lb = Ledger(sb, cfg, on_quarantine=lambda n: b.set_state(n, "quarantined"), on_stale_view=b.reload)
        assert not la.record_fault(node.node_id, "bad 1") and la.record_fault(node.node_id, "bad 2")
        assert a.schedulable_nodes("m", 1) == []
        assert [n.node_id for n in b.schedulable_nodes("m", 1)] == [node.node_id]  # B's cache is old
        assert not lb.record_fault(node.node_id, "bad 3")  # not newly quarantined: A did it
        assert b.schedulable_nodes("m", 1) == [] and b.get(node.node_id).state == "quarantined"
    finally:
        sa.close()
        sb.close()

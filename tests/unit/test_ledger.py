import threading

import pytest

from hyperinfer.errors import InvalidArgument, NotFound
from hyperinfer.gateway.ledger import SUMMARY_KEYS, Ledger, LedgerConfig
from hyperinfer.gateway.store import open_store


def ledger(db: str = ":memory:", **cfg):
    """A ledger on ``db`` (tests take ``db_location``: each runs on SQLite and PostgreSQL)."""
    quarantined = []
    store = open_store(db)
    return Ledger(store, LedgerConfig(**cfg), on_quarantine=quarantined.append), quarantined


def test_fresh_node_defaults(db_location):
    lg, _ = ledger(db_location, initial_stake=50.0, probation_jobs=3)
    s = lg.summary("nobody")
    assert tuple(s) == SUMMARY_KEYS
    assert s == dict(jobs=0, checks=0, faults=0, credits=0.0, stake=50.0, slashed=0.0, reputation=0.5,
                     probation=True)


def test_jobs_credits_checks_reputation_probation(db_location):
    lg, _ = ledger(db_location, reward_per_job=2.0, probation_jobs=2)
    for i in range(3):
        lg.record_job("a", f"r{i}", b"att", b"sig")
    lg.record_check(["a", "b"], agreed=True)
    lg.record_check(["a"], agreed=False)
    s = lg.summary("a")
    assert (s["jobs"], s["credits"], s["checks"], s["probation"]) == (3, 6.0, 2, False)
    assert s["reputation"] == pytest.approx((1 + 1) / (2 + 2))
    assert lg.summary("b")["checks"] == 1
    assert lg.attestation_count("a") == 3


def test_faults_slash_capped_and_quarantine_once(db_location):
    lg, q = ledger(db_location, initial_stake=25.0, slash_per_fault=10.0, quarantine_after=3)
    for i in range(4):
        lg.record_fault("x", f"bad {i}", f"r{i}")
    d = lg.details("x")
    assert d["faults"] == 4 and d["slashed"] == 25.0 and d["stake"] == 0.0 and d["quarantined"]
    assert q == ["x"]
    assert [f["slashed"] for f in lg.faults("x")] == [10.0, 10.0, 5.0, 0.0]


def test_quarantine_disabled_and_callback_errors_contained():
    lg, q = ledger(quarantine_after=0)
    for _ in range(5):
        lg.record_fault("x", "bad")
    assert q == [] and not lg.details("x")["quarantined"]

    def boom(node_id):
        raise RuntimeError("registry down")

    lg2 = Ledger(open_store(":memory:"), LedgerConfig(quarantine_after=1), on_quarantine=boom)
    assert lg2.record_fault("y", "bad")  # still recorded
    assert lg2.details("y")["quarantined"]


@pytest.mark.parametrize("kw, field", [({"initial_stake": -1}, "initial_stake"),
                                       ({"quarantine_after": 1.5}, "quarantine_after"),
                                       ({"reputation_prior": (3, 2)}, "reputation_prior")])
def test_config_validated(kw, field):
    with pytest.raises(InvalidArgument, match=field):
        LedgerConfig(**kw)


def test_evidence_not_found_names_id(db_location):
    lg, _ = ledger(db_location)
    with pytest.raises(NotFound, match="nope"):
        lg.evidence("nope")
    assert lg.receipt("nope") is None


def test_concurrent_updates_are_atomic(db_location):
    lg, _ = ledger(db_location)

    def work(k):
        for i in range(50):
            lg.record_job("n", f"{k}-{i}", b"a", b"s")

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert lg.summary("n")["jobs"] == 200


def test_works_on_the_gateway_store(db_location):
    store = open_store(db_location)
    try:
        lg = Ledger(store)
        lg.record_job("n", "r", b"a", b"s")
        assert lg.summary("n")["jobs"] == 1
        Ledger(store)  # migrating again is a no-op
        assert Ledger(store).summary("n")["jobs"] == 1
    finally:
        store.close()


def test_install_wires_quarantine_to_registry_and_reads_config():
    from types import SimpleNamespace

    from hyperinfer.gateway.ledger import install

    calls = []
    gw = SimpleNamespace(store=open_store(":memory:"), ledger=None,
                         config=SimpleNamespace(quarantine_after=2, reward_per_job=3),
                         registry=SimpleNamespace(set_state=lambda *a, **k: calls.append((a, k))))
    lg = install(gw)
    assert gw.ledger is lg and lg.config.quarantine_after == 2 and lg.config.reward_per_job == 3.0
    lg.record_fault("n", "bad")
    lg.record_fault("n", "bad")
    assert calls and calls[0][0] == ("n", "quarantined")


def test_two_gateways_credit_and_slash_exactly_once(db_location):
    """Many threads through two store connections (two gateways on one database): every job,
    check and fault counts once, concurrent slashes never take more than the stake, and a
    node is quarantined once (by whichever gateway saw its fault first)."""
    cfg = LedgerConfig(reward_per_job=1.0, initial_stake=15.0, slash_per_fault=10.0, quarantine_after=2)
    quarantined: list[str] = []
    stores = [open_store(db_location), open_store(db_location)]
    ledgers = [Ledger(s, cfg, on_quarantine=quarantined.append) for s in stores]
    n_threads, jobs, bad_nodes = 8, 30, [f"x{i:02d}" for i in range(15)]
    errors = []
    barrier = threading.Barrier(n_threads)

    def work(lg, k):
        try:
            barrier.wait(timeout=30)
            for i in range(jobs):
                lg.record_job("n", f"{k}-{i}", b"a", b"s")
                # opposite lock orders across threads: rows are locked in node id order
                lg.record_check(["n", "m"] if i % 2 else ["m", "n"], agreed=True)
            for x in bad_nodes:  # all threads slash the same node at once
                barrier.wait(timeout=30)
                lg.record_fault(x, f"bad {k}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(ledgers[k % 2], k)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors, errors
    for lg in ledgers:  # both gateways read the same totals
        n = lg.details("n")
        assert (n["jobs"], n["credits"], n["checks"], n["agreements"]) == (n_threads * jobs,) * 4
        assert lg.details("m")["checks"] == n_threads * jobs
        assert lg.attestation_count("n") == n_threads * jobs
        for x in bad_nodes:
            d = lg.details(x)
            assert (d["faults"], d["stake"], d["slashed"], d["quarantined"]) == (n_threads, 0.0, 15.0, True), (x, d)
            assert sorted(f["slashed"] for f in lg.faults(x)) == [0.0] * (n_threads - 2) + [5.0, 10.0]
    assert sorted(quarantined) == bad_nodes  # once each
    for s in stores:
        s.close()


def test_write_behind_batches_of_two_gateways_do_not_deadlock(postgresql_url, caplog):
    """Two gateways' batched writers touch the same nodes in opposite orders at the same time;
    rows are locked in node id order first, so no batch dies in a deadlock (and is retried)."""
    import logging

    from hyperinfer.gateway.write_behind import WriteBehindLedger

    stores = [open_store(postgresql_url), open_store(postgresql_url)]
    writers = [WriteBehindLedger(Ledger(s)) for s in stores]
    nodes = [f"n{i}" for i in range(6)]
    rounds = 40
    with caplog.at_level(logging.WARNING, logger="hyperinfer.gateway"):
        for r in range(rounds):
            for n in nodes:
                writers[0].record_job(n, f"a{r}{n}", b"a", b"s")
            for n in reversed(nodes):
                writers[1].record_job(n, f"b{r}{n}", b"a", b"s")
        for w in writers:
            w.close()
    assert not [r for r in caplog.records if "batch" in r.getMessage()]
    lg = Ledger(stores[0])
    assert [lg.details(n)["jobs"] for n in nodes] == [2 * rounds] * len(nodes)
    for s in stores:
        s.close()

"""Collusion against sampled verification, over real gRPC (tritonclient -> closed gateway -> nodes).

Before: one party joined two keys under two self-declared operator names, never computed,
and returned constant outputs with valid signatures; each validated the other, so 20/20
wrong answers came back ``agreed``. Now validators are always of another *admitted operator
key*, and the gateway re-runs ``--audit-rate`` of all requests itself with ONNX Runtime, a
check no pool of colluders can answer for each other.
"""

from __future__ import annotations

import sys
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from closed_pool import MODEL, client, infer, start_pool  # noqa: E402

from hyperinfer.package import ModelPackage  # noqa: E402
from hyperinfer.runtime import ORTRunner  # noqa: E402
from hyperinfer.verify.signing import key_id  # noqa: E402
from support import wait_for  # noqa: E402

K = 2  # --quarantine-after


def run_traffic(pool, n: int, mode: str = "auto"):
    """Send n requests; (statuses, wrong answers served, errors). Wrong = outside tolerance of ORT."""
    ort = ORTRunner.for_package(ModelPackage.open(pool.repo / MODEL / "1"), threads=1)
    cli = client(pool.gateway.address)
    rng = np.random.default_rng(1)
    statuses, wrong, errors = Counter(), 0, 0
    for _ in range(n):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        try:
            out, receipt = infer(cli, x, mode)
        except Exception:  # noqa: BLE001 - every node quarantined: UNAVAILABLE
            errors += 1
            continue
        expected = ort.run({"x": x})
        if any(not np.allclose(out[k], expected[k], atol=1e-4, rtol=1e-4) for k in expected):
            wrong += 1
        statuses[receipt.status] += 1
    pool.gateway.dataplane.verifier.wait(30)
    return statuses, wrong, errors


def final_statuses(pool) -> Counter:
    with pool.gateway.store.transaction() as c:
        return Counter(r[0] for r in c.execute("SELECT status FROM receipts").fetchall())


@pytest.fixture
def tmp_pool(tmp_path):
    pools = []

    def make(**cfg):
        p = start_pool(tmp_path / f"p{len(pools)}", **cfg)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


def test_two_node_keys_of_one_operator_cannot_vouch_for_each_other(tmp_pool):
    pool = tmp_pool(sample_rate=1.0, audit_rate=0.0, quarantine_after=K)
    party, honest_op = pool.operator("party"), pool.operator("honest")
    a = pool.node("alice", party, cheat=True)  # two keys, two declared names, one operator key
    b = pool.node("bob", party, cheat=True)
    h = pool.node("honest", honest_op)
    reg = pool.gateway.registry
    wait_for(lambda: len(reg.schedulable_nodes(MODEL, 1)) == 3, what="three nodes ready")
    statuses, wrong, errors = run_traffic(pool, 30, mode="sync")
    # every check of a colluder ran on the honest node: disputes, never an agreement between the pair
    with pool.gateway.store.transaction() as c:
        pairs = c.execute("SELECT receipt FROM receipts WHERE status = 'agreed'").fetchall()
    for (text,) in pairs:
        r = json.loads(text)
        assert {r["node_id"], r["validator_node_id"]} & {h.node_id}, "two keys of one operator agreed"
    assert reg.get(a.node_id).state == reg.get(b.node_id).state == "quarantined"
    assert pool.gateway.operators.require(key_id(party)).state == "quarantined"
    assert wrong == 0  # sync: a result that fails its check is never served
    assert errors == 0 and reg.get(h.node_id).state == "healthy"


def test_a_pool_of_colluders_is_caught_at_the_audit_rate(tmp_pool):
    """Two admitted operators collude (every sampled check is between them, and agrees):
    only the gateway's audits catch them, and they do."""
    audit = 0.25
    pool = tmp_pool(sample_rate=1.0, audit_rate=audit, quarantine_after=K)
    x1, x2 = pool.operator("colluder-1"), pool.operator("colluder-2")
    c1, c2 = pool.node("c1", x1, cheat=True), pool.node("c2", x2, cheat=True)
    reg = pool.gateway.registry
    wait_for(lambda: len(reg.schedulable_nodes(MODEL, 1)) == 2, what="colluders ready")
    # sync: a check and an audit end before the answer, so a verdict is never late (in mode auto the
    # background queue lets a few more answers out before the quarantine lands; see the README)
    statuses, wrong, errors = run_traffic(pool, 150, mode="sync")
    final = final_statuses(pool)
    assert not [k for k in final if k.startswith("disputed")]  # no sampled check ever caught them...
    assert final["audit-failed"] >= 1  # ...the audits were not
    wait_for(lambda: reg.get(c1.node_id).state == reg.get(c2.node_id).state == "quarantined",
             what="both colluders quarantined")
    for op in (x1, x2):
        assert pool.gateway.operators.require(key_id(op)).state == "quarantined"
    # the audits catch a colluder's wrong answer at rate a; each failed audit also faults the validator
    # that agreed, so both reach K faults after about K / a = 8 answers in all (P(more than 50) < 1e-5)
    served = sum(statuses.values())
    assert wrong == served and served < 150 and errors == 150 - served
    assert served <= 50, (served, final)


def test_colluders_cannot_pass_each_others_probation(tmp_pool):
    """With probation on (answers held until a validator of another operator agrees), two colluding
    operators vouch for each other's held answers. The audits cover held answers too, so they are
    caught within a few answers instead of passing probation for free after every fault."""
    pool = tmp_pool(sample_rate=0.1, audit_rate=0.25, quarantine_after=K, probation_jobs=10)
    c1 = pool.node("c1", pool.operator("colluder-1"), cheat=True)
    c2 = pool.node("c2", pool.operator("colluder-2"), cheat=True)
    reg = pool.gateway.registry
    wait_for(lambda: len(reg.schedulable_nodes(MODEL, 1)) == 2, what="colluders ready")
    statuses, wrong, errors = run_traffic(pool, 150)
    assert reg.get(c1.node_id).state == reg.get(c2.node_id).state == "quarantined"
    assert final_statuses(pool)["audit-failed"] >= 1
    # about K / a = 8 expected, P(more than 40) < 2e-4; before held answers were audited: 64-177
    assert wrong <= 40, (wrong, final_statuses(pool))

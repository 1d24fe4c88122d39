"""Two `hyperinfer gateway` processes on one PostgreSQL database, three honest-or-not nodes.

Gateway A and gateway B run with ``--db postgresql://...`` (a throwaway cluster from
tests/pg_server.py). Nodes of three operators join: one honest node at each gateway, and a
tampering node at A. Clients call both gateways with every request checked (sample rate 1,
sync mode). Shown: every node is scheduled by both gateways; the tamperer's wrong results
never reach a client; it is slashed and quarantined, and both gateways report the same
ledger and the quarantine; each receipt is signed by the gateway that answered and verifies
with that gateway's key only (`audit verify --db` finds it among the registered gateways);
`audit evidence --db postgresql://...` reads the dispute.

Nodes run ONNX Runtime on the package's model (tests/grpc/oip_harness.py), so nothing is
compiled. Every wait is bounded; every child process is stopped in teardown.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hyperinfer.pool_status import fetch_status
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import import_tritonclient_grpc, make_package  # noqa: E402
from test_gateway_e2e import HYPERINFER, Child, wait_for  # noqa: E402

try:
    tritonclient_grpc = import_tritonclient_grpc()
except ImportError:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)

MODEL = "mlp"
QUARANTINE_AFTER = 2
SLASH = 10.0


class NodeProcess:
    """tests/e2e/pool_nodes.py as a child process (stops when its stdin closes)."""

    def __init__(self, repo: Path, tmp: Path, specs: list[str], timeout: float = 60):
        args = [sys.executable, str(Path(__file__).parent / "pool_nodes.py"), "--repo", str(repo),
                "--tmp", str(tmp)] + [a for s in specs for a in ("--node", s)]
        self.log_path = tmp / "nodes.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0].startswith("READY"):
            self.stop()
            raise AssertionError(f"nodes did not start within {timeout}s:\n{self.log_path.read_text()[-3000:]}")
        self.node_ids = box[0].split()[1:]

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory, postgresql_cluster):
    tmp = tmp_path_factory.mktemp("two-gateways")
    repo = tmp / "repo"
    make_package(repo, MODEL)
    db = postgresql_cluster.create_database("pool")
    children: list = []
    try:
        gateways = {}
        for name in ("a", "b"):
            gw = Child(f"gateway-{name}", [
                "gateway", "--repository", str(repo), "--listen", "127.0.0.1:0", "--db", db,
                "--key", str(tmp / f"gateway-{name}.key"), "--heartbeat-interval", "0.5",
                "--sample-rate", "1", "--quarantine-after", str(QUARANTINE_AFTER), "--slash", str(SLASH),
                "--open-pool", "--audit-rate", "0"], tmp)
            children.append(gw)
            address = gw.find(r"listening on (\S+:\d+)", 90).group(1)
            key = bytes.fromhex(gw.find(r"public key ([0-9a-f]{64})", 10).group(1))
            gateways[name] = {"address": address, "key": key, "child": gw}
        a, b = gateways["a"]["address"], gateways["b"]["address"]
        nodes = NodeProcess(repo, tmp, [f"{a},operator-a", f"{b},operator-b", f"{a},operator-evil,tamper"])
        children.append(nodes)
        honest_a, honest_b, evil = nodes.node_ids

        def all_ready() -> bool:
            # a node joined at either gateway is ready (healthy, model loaded) at both
            return all({m["name"]: m["ready_nodes"] for m in fetch_status(g["address"], 5)["models"]}.get(MODEL) == 3
                       for g in gateways.values())

        wait_for(all_ready, 90, "all three nodes to be ready at both gateways",
                 [c for c in children if isinstance(c, Child)])
        clients = {n: tritonclient_grpc.InferenceServerClient(g["address"]) for n, g in gateways.items()}
        yield {"gateways": gateways, "clients": clients, "db": db, "repo": repo,
               "honest_a": honest_a, "honest_b": honest_b, "evil": evil}
        for c in clients.values():
            c.close()
    finally:
        for c in reversed(children):
            c.stop()


def _infer(client, x):
    i = tritonclient_grpc.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    res = client.infer(MODEL, [i], parameters={"verify": "sync"}, client_timeout=60)
    return res.as_numpy("probs"), res.get_response().parameters[RECEIPT_PARAMETER].string_param


def _ledger(status: dict) -> dict[str, dict]:
    keys = ("state", "jobs", "checks", "faults", "credits", "stake", "slashed")
    return {n["node_id"]: {k: n[k] for k in keys} for n in status["nodes"]}


def test_slash_at_one_gateway_is_seen_by_both(pool):
    gws, clients = pool["gateways"], pool["clients"]
    ref = ORTRunner(pool["repo"] / MODEL / "1" / "model.onnx", threads=1)
    rng = np.random.default_rng(0)
    primaries: dict[str, set[str]] = {"a": set(), "b": set()}
    receipts: dict[str, str] = {}
    served = 0
    honest = {pool["honest_a"], pool["honest_b"]}
    for i in range(80):  # bounded: the tamperer is checked on every request it serves or validates
        name = "ab"[i % 2]
        x = rng.standard_normal((1, 64)).astype(np.float32)
        probs, rj = _infer(clients[name], x)
        # sync mode: a result found wrong is never returned (it is re-run on another node)
        np.testing.assert_allclose(probs, ref.run({"x": x})["probs"], rtol=1e-5, atol=1e-5)
        r = receipt_from_json(rj)
        assert r.node_id != pool["evil"] or r.status != "agreed"
        # signed by the gateway that answered: verifies with its key, not with the other's
        other = "b" if name == "a" else "a"
        assert all(c.ok for c in verify_receipt(rj, gws[name]["key"]))
        assert not all(c.ok for c in verify_receipt(rj, gws[other]["key"]))
        primaries[name].add(r.node_id)
        receipts[name] = rj
        served += 1
        views = [_ledger(fetch_status(g["address"], 5)) for g in gws.values()]
        if all(v[pool["evil"]]["state"] == "quarantined" for v in views) and \
                all(honest <= p for p in primaries.values()):
            break
    # both gateways scheduled the honest nodes that joined either of them (ties are broken at random)
    for name in "ab":
        assert honest <= primaries[name], (name, primaries)

    def same_ledger() -> bool:  # jobs and checks are written behind, within ~50 ms
        va, vb = (_ledger(fetch_status(g["address"], 5)) for g in gws.values())
        return va == vb

    wait_for(same_ledger, 10, "both gateways to report the same ledger")
    status_a, status_b = (fetch_status(g["address"], 5) for g in gws.values())
    assert status_a["gateway_id"] != status_b["gateway_id"]  # one key per gateway
    evil = _ledger(status_b)[pool["evil"]]
    assert evil["state"] == "quarantined", evil
    # quarantined at the QUARANTINE_AFTER-th fault; the other gateway reads the registry through a
    # 0.5 s cache, so it may have picked the tamperer again meanwhile (and caught it again)
    assert QUARANTINE_AFTER <= evil["faults"] <= QUARANTINE_AFTER + 4, evil
    # an open pool: the node is its own operator with bond 0, so its stake shows 0 (nothing left to take)
    assert evil["slashed"] == evil["faults"] * SLASH and evil["stake"] == 0.0, evil
    ledger = _ledger(status_a)
    for honest in (pool["honest_a"], pool["honest_b"]):
        assert ledger[honest]["state"] == "healthy" and ledger[honest]["faults"] == 0
    # nothing credited twice: each attempt credits at most its primary and its validator, and only a
    # rejected (tampered) primary result makes a request take a second attempt
    total_jobs = sum(v["jobs"] for v in ledger.values())
    assert served < total_jobs <= 2 * (served + evil["faults"]), (served, total_jobs, evil)

    # `audit verify --db` checks a receipt of either gateway against the key that gateway registered
    for name, rj in receipts.items():
        path = pool["repo"].parent / f"receipt-{name}.json"
        path.write_text(rj)
        proc = subprocess.run([*HYPERINFER, "audit", "verify", str(path), "--db", pool["db"], "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and '"ok": true' in proc.stdout, (name, proc.stdout, proc.stderr)

    # the audit trail is in the shared database: the CLI reads it by URL
    proc = subprocess.run([*HYPERINFER, "audit", "evidence", "--db", pool["db"]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(pool["evil"]) >= QUARANTINE_AFTER, proc.stdout

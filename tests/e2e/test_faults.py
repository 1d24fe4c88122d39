"""Faults with real processes: a node that hangs, one that is slow, one that cheats, one killed
mid-request, and a gateway restart. Every request a client sends is answered correctly (checked against ONNX
Runtime) or gets a precise status; none is lost; the ledger and the dispute evidence survive.

A `hyperinfer gateway` process and `scripts/pool_node.py` processes running the TVM-compiled
MLP. The tests of this module run in order on one pool.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from hyperinfer.gateway.ledger import LedgerReader
from hyperinfer.package import ModelPackage
from hyperinfer.pool_status import fetch_status
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.runtime import ORTRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_gateway_e2e import Child, wait_for  # noqa: E402

POOL_NODE = Path(__file__).parents[2] / "scripts" / "pool_node.py"
NODE_TIMEOUT = 1.5
# statuses a client may get instead of an answer while nodes or the gateway fail: all precise
PRECISE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class Node:
    def __init__(self, tmp: Path, gateway: str, i: int, operator: str, variant: str, delay: float | None = None):
        self.name, self.variant = f"node{i}-{variant}", variant
        self.log_path = tmp / f"{self.name}.log"
        args = [sys.executable, str(POOL_NODE), "--gateway", gateway, "--key", str(tmp / f"node{i}.key"),
                "--operator", operator, "--cache", str(tmp / f"cache{i}"), "--variant", variant, "--watch-stdin",
                "--repo", str(tmp / "repo"),
                "--max-concurrency", "2"]
        if delay is not None:
            args += ["--delay", str(delay)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "wb"), text=True)
        self.node_id = ""

    def ready(self, timeout: float = 120) -> "Node":
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert box and box[0].startswith("READY"), self.log_path.read_text()[-3000:]
        self.node_id = box[0].split()[1]
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    def __init__(self, repo: Path, tmp: Path):
        self.repo, self.tmp = repo, tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.gateway: Child | None = None
        self.nodes: dict[str, Node] = {}
        self.package = ModelPackage.open(repo / "mlp" / "1")
        self.reference = ORTRunner.for_package(self.package, threads=1)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.starts = 0

    def start_gateway(self) -> None:
        self.starts += 1
        self.gateway = Child(f"gateway{self.starts}", [
            "gateway", "--repository", str(self.repo), "--listen", self.address, "--db", str(self.tmp / "gw.db"),
            "--key", str(self.tmp / "gw.key"), "--heartbeat-interval", "0.3", "--node-timeout", str(NODE_TIMEOUT),
            "--quarantine-after-timeouts", "2", "--quarantine-after", "2", "--probation-jobs", "3",
            # every answer checked; probation holds a new (or faulted) node's answers until checked, so a
            # check skipped for want of a free validator never lets the cheater's answer through
            "--sample-rate", "1", "--open-pool", "--audit-rate", "0", "--http-listen", "off", "--metrics-listen", "off",
            "--max-attempts", "4"], self.tmp)
        self.gateway.find(r"listening on", 60)

    def status(self) -> dict:
        return fetch_status(self.address)

    def healthy(self) -> set[str]:
        st = self.status()
        return {n["node_id"] for n in st["nodes"] if n["state"] == "healthy" and n["loaded"]}

    def request(self, seed: int, timeout: float = 30) -> tuple[str, str]:
        """One request: ("ok", node id) when answered right; (status name, details) otherwise."""
        x = np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)
        req = pb.ModelInferRequest(model_name="mlp")
        req.parameters["verify"].string_param = "sync"  # a wrong answer is caught before it is returned
        req.inputs.add(name="x", datatype="FP32", shape=[1, 64])
        req.raw_input_contents.append(x.tobytes())
        try:
            resp = self.stub.ModelInfer(req, timeout=timeout)
        except grpc.RpcError as e:
            assert e.code() in PRECISE, (e.code(), e.details())
            return e.code().name, e.details()
        got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 10)
        spec = self.package.manifest.outputs[0]
        np.testing.assert_allclose(got, self.reference.run({"x": x})["probs"],
                                   atol=spec.tolerance.atol * 10 + 1e-6, rtol=spec.tolerance.rtol * 10 + 1e-6)
        import json

        return "ok", json.loads(resp.parameters["hyperinfer.receipt"].string_param)["node_id"]

    def burst(self, n: int, workers: int = 6, base: int = 0, timeout: float = 30) -> list[tuple[str, str]]:
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(lambda i: self.request(base + i, timeout), range(n)))

    def close(self) -> None:
        self.channel.close()
        for n in self.nodes.values():
            n.kill() if n.variant == "stall" else n.stop()  # its 60 s sleeps would hold up a clean exit
        if self.gateway is not None:
            self.gateway.stop()


@pytest.fixture(scope="module")
def pool(compiled_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    shutil.copytree(compiled_small("mlp").path, tmp / "repo" / "mlp" / "1")
    p = Pool(tmp / "repo", tmp)
    try:
        p.start_gateway()
        specs = [("a", "honest", None), ("b", "honest", None), ("c", "slow", 0.4), ("d", "stall", 60.0),
                 ("e", "noise", None)]
        for i, (op, variant, delay) in enumerate(specs):
            p.nodes[variant if variant != "honest" else f"honest-{op}"] = Node(tmp, p.address, i, op, variant, delay)
        for n in p.nodes.values():
            n.ready()
        wait_for(lambda: len(p.healthy()) == 5, 30, "five schedulable nodes", [p.gateway])
        yield p
    finally:
        p.close()


def test_hanging_slow_and_cheating_nodes(pool):
    """Every request answered right: the hanging node's calls time out and go elsewhere, the slow
    node answers inside the timeout, the cheater's answers are held and caught before they are
    returned. The hanging node pays 1 per timeout and is quarantined after 2; the cheater 10 per
    fault, quarantined after 2. (Probation gives a suspect node one job at a time: a few rounds.)"""
    stall, slow, cheat = (pool.nodes[k].node_id for k in ("stall", "slow", "noise"))
    states = lambda: {n["node_id"]: n["state"] for n in pool.status()["nodes"]}  # noqa: E731
    results: list[tuple[str, str]] = []
    for round_ in range(10):
        results += pool.burst(20, base=100 * round_)
        if states()[stall] == states()[cheat] == "quarantined":
            break
    assert all(r[0] == "ok" for r in results), [r for r in results if r[0] != "ok"]
    served = {r[1] for r in results}
    assert stall not in served and cheat not in served and slow in served
    assert states()[stall] == states()[cheat] == "quarantined", pool.status()["nodes"]
    import sqlite3

    with sqlite3.connect(pool.tmp / "gw.db") as conn:
        kinds = {}
        for node_id, kind in conn.execute("SELECT node_id, kind FROM faults"):
            kinds.setdefault(node_id, set()).add(kind)
        slashed = dict(conn.execute("SELECT node_id, slashed FROM ledger"))
    assert set(kinds) == {stall, cheat}, kinds  # no honest (or slow) node has any fault
    assert kinds[stall] == {"timeout"} and "timeout" not in kinds[cheat]
    assert 2 <= slashed[stall] < 10 and slashed[cheat] >= 20


def test_node_killed_mid_request(pool):
    """SIGKILL the slow node while it holds requests: they are retried on other nodes."""
    slow = pool.nodes["slow"]
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(pool.request, 1000 + i) for i in range(24)]
        time.sleep(0.6)  # the slow node now holds requests (0.4 s each)
        slow.kill()
        results = [f.result(timeout=60) for f in futures]
    assert all(r[0] == "ok" for r in results), [r for r in results if r[0] != "ok"]
    assert len(results) == 24
    # and afterwards: the dead node is skipped, nothing is lost
    assert all(r[0] == "ok" for r in pool.burst(12, base=2000))


def _cheater_record(pool) -> tuple[int, set[str]]:
    """The noise node's fault rows and the dispute ids on record (read-only, while the gateway runs)."""
    import sqlite3

    with sqlite3.connect(pool.tmp / "gw.db") as conn:
        faults = conn.execute("SELECT count(*) FROM faults WHERE node_id = ?",
                              (pool.nodes["noise"].node_id,)).fetchone()[0]
    reader = LedgerReader(pool.tmp / "gw.db")
    try:
        return faults, {d["dispute_id"] for d in reader.list_evidence(limit=10_000)}
    finally:
        reader.close()


def test_gateway_restart_loses_nothing_and_keeps_the_ledger(pool):
    before = {n["node_id"]: n for n in pool.status()["nodes"]}
    stall = pool.nodes["stall"].node_id
    # the cheater was caught by a validator (a dispute, with evidence) or, when none was free,
    # by the ONNX Runtime referee (a fault without a dispute): which, depends on timing
    faults_before, disputes_before = _cheater_record(pool)
    assert faults_before > 0
    stop = threading.Event()
    results: list[tuple[str, str]] = []

    def load(k: int) -> None:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                results.append(pool.request(5000 + 100 * k + i, timeout=10))
            except AssertionError as e:
                # the gateway's grace on SIGTERM is 5 s; a call still retrying across busy nodes then
                # (up to --max-attempts x --node-timeout = 6 s here) is ended with CANCELLED
                if "CANCELLED" not in str(e):
                    results.append(("failed", f"{e} after {time.monotonic() - t0:.1f} s"))
                else:
                    results.append(("CANCELLED", f"after {time.monotonic() - t0:.1f} s"))
            i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    pool.gateway.stop(signal.SIGTERM)  # graceful: calls in flight finish, then the port closes
    pool.start_gateway()
    honest = {pool.nodes[k].node_id for k in ("honest-a", "honest-b")}
    wait_for(lambda: honest <= pool.healthy(), 30, "nodes back after the restart", [pool.gateway])
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request never came back"
    codes = {r[0] for r in results}
    assert "ok" in codes and codes <= {"ok", "UNAVAILABLE", "CANCELLED"}, [r for r in results if r[0] != "ok"]
    # only calls in flight when the gateway stopped can be cancelled: at most one per client thread
    assert sum(r[0] == "CANCELLED" for r in results) <= len(threads)
    after = {n["node_id"]: n for n in pool.status()["nodes"]}
    for node_id, n in before.items():  # the ledger survived: nothing went backwards
        assert after[node_id]["jobs"] >= n["jobs"] and after[node_id]["slashed"] == n["slashed"]
    assert after[stall]["state"] == "quarantined"  # a verdict outlives the restart
    faults_after, disputes_after = _cheater_record(pool)
    assert faults_after >= faults_before and disputes_after >= disputes_before  # the faults and evidence survived
    reader = LedgerReader(pool.tmp / "gw.db")
    try:  # every dispute blames the cheater alone, and its evidence still re-checks
        disputes = reader.list_evidence(limit=10_000)
        assert all(d["faults"] == [pool.nodes["noise"].node_id] for d in disputes), disputes
        from hyperinfer.verify.dispute import recheck

        for d in disputes[:3]:
            assert all(c.ok for c in recheck(reader.evidence(d["dispute_id"])))
    finally:
        reader.close()
    assert all(r[0] == "ok" for r in pool.burst(12, base=9000))

"""`hyperinfer gateway --workers 2`: two processes on one port and one SQLite store.

Three nodes (two honest operators, one tampering) join through whichever process their
connection lands on. Shown: both processes hold client connections on the one port and
serve inferences; every node is schedulable from both; the tamperer, caught by one
process, is slashed and quarantined in the ledger both report. Nodes run ONNX Runtime on
the package (tests/grpc/oip_harness.py): nothing is compiled.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from hyperinfer.pool_status import status_to_dict
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import make_package  # noqa: E402
from test_gateway_e2e import Child, wait_for  # noqa: E402
from test_two_gateways import NodeProcess  # noqa: E402

MODEL = "mlp"


def _server_side(pids: list[int], port: int) -> dict[int, set[int]]:
    """pid -> remote ports of its established connections on ``port``."""
    out = {}
    for pid in pids:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        out[pid] = {c.raddr.port for c in conns if c.status == "ESTABLISHED" and c.laddr.port == port and c.raddr}
    return out


def _channel_to(address: str, pids: list[int], want: int, tries: int = 40) -> grpc.Channel:
    """A channel (its own connection) that the kernel gave to process ``want``."""
    port = int(address.rpartition(":")[2])
    for _ in range(tries):
        before = _server_side(pids, port)
        ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        pool_pb2_grpc.PoolStub(ch).Status(pool_pb2.StatusRequest(), timeout=10)
        after = _server_side(pids, port)
        if after[want] - before[want]:
            return ch
        ch.close()
    raise AssertionError(f"no connection landed on process {want} in {tries} tries")


def _status(ch: grpc.Channel) -> dict:
    return status_to_dict(pool_pb2_grpc.PoolStub(ch).Status(pool_pb2.StatusRequest(), timeout=10))


def _infer(ch: grpc.Channel, x: np.ndarray):
    req = pb.ModelInferRequest(model_name=MODEL)
    req.parameters["verify"].string_param = "sync"
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=60)
    probs = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 10)
    return probs, receipt_from_json(resp.parameters[RECEIPT_PARAMETER].string_param)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-workers")
    repo = tmp / "repo"
    make_package(repo, MODEL)
    children: list = []
    channels: list[grpc.Channel] = []
    try:
        gw = Child("gateway", ["gateway", "--repository", str(repo), "--listen", "127.0.0.1:0",
                               "--db", str(tmp / "gateway.db"), "--key", str(tmp / "gateway.key"),
                               "--heartbeat-interval", "0.5", "--sample-rate", "1", "--quarantine-after", "2",
                               "--http-listen", "off", "--metrics-listen", "off", "--workers", "2",
                               "--open-pool", "--audit-rate", "0"], tmp)
        children.append(gw)
        address = gw.find(r"listening on (\S+:\d+)", 90).group(1)
        gw.find(r"2 worker processes", 10)
        def workers() -> list[int]:  # multiprocessing's resource tracker is a child too, not a worker
            return [c.pid for c in psutil.Process(gw.proc.pid).children()
                    if "spawn_main" in " ".join(c.cmdline())]

        wait_for(lambda: len(workers()) == 1, 30, "the second worker process", [gw])
        pids = [gw.proc.pid, *workers()]
        assert len(pids) == 2, pids
        port = int(address.rpartition(":")[2])
        wait_for(lambda: all(port in {c.laddr.port for c in psutil.Process(p).net_connections(kind="tcp")
                                      if c.status == "LISTEN"} for p in pids), 60, "both workers to listen", [gw])
        nodes = NodeProcess(repo, tmp, [f"{address},operator-a", f"{address},operator-b",
                                        f"{address},operator-evil,tamper"])
        children.append(nodes)
        chans = {pid: _channel_to(address, pids, pid) for pid in pids}
        channels += chans.values()

        def ready() -> bool:  # a node joined through either process is schedulable by both
            return all({m["name"]: m["ready_nodes"] for m in _status(ch)["models"]}.get(MODEL) == 3
                       for ch in chans.values())

        wait_for(ready, 90, "all three nodes to be ready in both worker processes", [gw])
        yield {"channels": chans, "repo": repo, "evil": nodes.node_ids[2], "honest": set(nodes.node_ids[:2])}
    finally:
        for ch in channels:
            ch.close()
        for c in reversed(children):
            c.stop()


def test_two_workers_serve_and_share_the_ledger(pool):
    chans, evil = pool["channels"], pool["evil"]
    ref = ORTRunner(pool["repo"] / MODEL / "1" / "model.onnx", threads=1)
    rng = np.random.default_rng(0)
    primaries: dict[int, set[str]] = {pid: set() for pid in chans}
    for i in range(60):
        pid = list(chans)[i % 2]
        x = rng.standard_normal((1, 64)).astype(np.float32)
        probs, receipt = _infer(chans[pid], x)  # served by that process
        np.testing.assert_allclose(probs, ref.run({"x": x})["probs"], rtol=1e-5, atol=1e-5)
        primaries[pid].add(receipt.node_id)
        if all(_status(ch)["nodes"] and next(n for n in _status(ch)["nodes"] if n["node_id"] == evil)["state"]
               == "quarantined" for ch in chans.values()) and all(pool["honest"] <= p for p in primaries.values()):
            break
    for pid, seen in primaries.items():  # both processes scheduled both honest nodes
        assert pool["honest"] <= seen, (pid, primaries)

    def ledger(ch) -> dict:
        keys = ("state", "jobs", "faults", "stake", "slashed")
        return {n["node_id"]: {k: n[k] for k in keys} for n in _status(ch)["nodes"]}

    # the slash recorded by whichever process caught the tamperer is what both report
    wait_for(lambda: len({repr(ledger(ch)) for ch in chans.values()}) == 1, 10,
             "both worker processes to report the same ledger")
    view = ledger(next(iter(chans.values())))
    assert view[evil]["state"] == "quarantined" and view[evil]["faults"] >= 2, view[evil]
    assert view[evil]["slashed"] > 0
    for node in pool["honest"]:
        assert view[node]["faults"] == 0 and view[node]["state"] == "healthy", view[node]

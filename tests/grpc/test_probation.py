"""Probation end to end: a real gateway with its default verification settings, two honest
nodes and a cheating node (valid key and signatures, outputs off by 0.01) that joins later,
all over real gRPC on loopback; clients in verify=auto.

What issue 15 asks: while the cheater is on probation no wrong answer reaches a client;
it is quarantined after exactly ``quarantine_after`` faults (default 3); the honest nodes
lose no stake. Nodes run ONNX Runtime on the package's model (no compile step)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import wait_for

from hyperinfer.gateway.app import Gateway, install_extensions
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.converters import array_to_typed_tensor, outputs_from_proto
from hyperinfer.gateway.ledger import LedgerConfig
from hyperinfer.node.app import Node, NodeConfig
from hyperinfer.node.devices import Device, Hardware
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: the harness is a plain module here
from oip_harness import TARGET, make_package, ort_factory  # noqa: E402

MODEL = "mlp"
OFF_BY = 0.01  # the cheater's error: far outside the 1e-5 tolerance


class Cheating:
    """An ORT runner whose float outputs are off by OFF_BY (the node signs them as usual)."""

    def __init__(self, runner):
        self._runner = runner

    def run(self, inputs):
        out = self._runner.run(inputs)
        return {k: (v + np.asarray(OFF_BY, v.dtype)) if v.dtype.kind == "f" else v for k, v in out.items()}

    def __getattr__(self, name):
        return getattr(self._runner, name)


@pytest.fixture
def pool(tmp_path):
    repo = tmp_path / "repo"
    pdir = make_package(repo, MODEL)
    # default verification settings (sample rate, probation, quarantine, stake); a short heartbeat
    # so a node marked failed after a rejected result is back soon
    gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp_path / "gw.db", key=tmp_path / "gw.key",
                               heartbeat_interval=0.2, grace_seconds=1, max_workers=16, open_pool=True, audit_rate=0.0))
    install_extensions(gw)
    gw.start()
    honest = ort_factory(repo)
    hw = Hardware([Device("cpu", "test cpu", "x86_64", 1)], [TARGET])
    nodes = []

    def add(operator, cheat=False):
        nc = NodeConfig(gateway=gw.address, key_path=tmp_path / f"{operator}.key", operator=operator,
                        cache_dir=tmp_path / f"cache-{operator}", allow_unsigned=repo, max_concurrency=4, grace_s=1)
        factory = (lambda *a: Cheating(honest(*a))) if cheat else honest
        node = Node(nc, runner_factory=factory, hardware=hw).start()
        nodes.append(node)
        wait_for(lambda: node.node_id in {n.node_id for n in gw.registry.schedulable_nodes(MODEL, 1)}, 30,
                 f"node {operator} to serve {MODEL}")
        return node.node_id

    channel = grpc.insecure_channel(gw.address)
    ref = ORTRunner(pdir / "model.onnx", gw.catalog.get(MODEL, 1).manifest.inputs, threads=1)
    try:
        yield gw, add, pb_grpc.GRPCInferenceServiceStub(channel), ref
    finally:
        channel.close()
        for n in nodes:
            n.stop()
        gw.stop(grace=0)


def ask(stub, rng):
    x = rng.standard_normal((1, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name=MODEL, inputs=[array_to_typed_tensor("x", x)])
    req.parameters["verify"].string_param = "auto"
    resp = stub.ModelInfer(req, timeout=60)
    return x, outputs_from_proto(resp), resp.parameters[RECEIPT_PARAMETER].string_param


def wrong(ref, x, outputs) -> bool:
    want = ref.run({"x": x})
    return any(np.max(np.abs(outputs[k].astype(np.float64) - want[k])) > 1e-4 for k in want)


def test_cheater_on_probation_serves_nothing_and_is_quarantined_at_the_threshold(pool):
    gw, add, stub, ref = pool
    defaults = LedgerConfig()
    assert gw.ledger.config == defaults  # the gateway runs with default settings
    rng = np.random.default_rng(0)
    honest = [add("operator-a"), add("operator-b")]

    # the honest nodes are new too: their answers are held until the other one agrees
    first = receipt_from_json(ask(stub, rng)[2])
    assert first.probation and first.status == rc.AGREED and first.validator_node_id in honest
    checks = verify_receipt(first.json_text, gw.public_key)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    for _ in range(4 * defaults.probation_jobs):
        if not any(gw.ledger.details(n)["probation"] for n in honest):
            break
        ask(stub, rng)
    assert not any(gw.ledger.details(n)["probation"] for n in honest)
    steady = receipt_from_json(ask(stub, rng)[2])
    assert not steady.probation and steady.status in (rc.UNCHECKED, rc.PENDING)

    cheater = add("operator-evil", cheat=True)
    assert gw.ledger.details(cheater)["probation"]
    served = {"wrong": 0, "by_cheater": 0, "total": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed):
        r = np.random.default_rng(seed)
        while not stop.is_set():
            x, out, receipt = ask(stub, r)
            rec = receipt_from_json(receipt)
            with lock:
                served["total"] += 1
                served["wrong"] += wrong(ref, x, out)
                served["by_cheater"] += rec.node_id == cheater

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: gw.ledger.details(cheater)["quarantined"], 60, "the cheater to be quarantined")
        time.sleep(0.5)  # any check still running would show up as a late fault
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert served["total"] > 0
    assert served["wrong"] == 0 and served["by_cheater"] == 0, served
    d = gw.ledger.details(cheater)
    assert d["faults"] == defaults.quarantine_after, d  # not one fault more
    assert gw.registry.get(cheater).state == "quarantined"
    assert {f["kind"] for f in gw.ledger.faults(cheater)} <= {"dispute", "referee"}
    for n in honest:
        h = gw.ledger.details(n)
        # an open pool: each operator's bond is 0 (nothing at stake), and nothing was slashed
        assert h["faults"] == 0 and h["stake"] == 0 and h["slashed"] == 0, h

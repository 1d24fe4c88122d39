"""Scheduler with in-process fakes: least outstanding, retries, attestation checks, no hangs."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import Code, HyperinferError, InvalidArgument, ResourceExhausted, Unavailable
from hyperinfer.gateway.scheduler import Scheduler
from hyperinfer.gateway.verification import ResultRejected, Verifier
from hyperinfer.gateway.worker_client import WorkerResult
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.sampling import SamplingPolicy
from hyperinfer.verify.signing import key_id, public_bytes

SHA = "ab" * 32
MANIFEST = Manifest(
    name="m", version=2, source_sha256="", model_sha256="",
    inputs=[TensorSpec("x", "float32", (1, 4))],
    outputs=[OutputSpec("y", "float32", (1, 4))],
    tvm_version="",
    artifacts={"cpu-x86_64": ArtifactInfo("cpu-x86_64", {}, "artifacts/cpu-x86_64.so", SHA, 1)},
)
X = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}


@dataclass
class Node:
    key: Ed25519PrivateKey
    operator: str = "op"
    address: str = "127.0.0.1:1"
    node_id: str = ""
    public_key: bytes = b""
    loaded: dict = field(default_factory=lambda: {("m", 2): ("cpu-x86_64", SHA)})
    capacity: int = 0

    def __post_init__(self):
        self.node_id = key_id(self.key)
        self.public_key = public_bytes(self.key)


def make_nodes(n):
    return [Node(Ed25519PrivateKey.generate(), operator=f"op{i}", address=f"127.0.0.1:{1000 + i}") for i in range(n)]


class FakeRegistry:
    def __init__(self, nodes):
        self.nodes = list(nodes)
        self.failed: list[str] = []

    def schedulable_nodes(self, model, version):
        return [n for n in self.nodes if n.node_id not in self.failed and (model, version) in n.loaded]

    def report_failure(self, node_id, reason=""):
        self.failed.append(node_id)


class FaultLedger:
    """The one ledger call Verifier.check_result makes."""

    def __init__(self):
        self.faults: list[str] = []

    def record_fault(self, node_id, reason, request_id="", kind="attestation"):
        self.faults.append(node_id)
        return False


def verifier_check(ledger=None):
    """The check the gateway uses: gateway.verification.Verifier.check_result."""
    v = Verifier(ledger or FaultLedger(), SamplingPolicy(), lambda *a: None, None, Ed25519PrivateKey.generate())
    return v.check_result


def sign_result(node, rid, inputs, outputs, **override) -> WorkerResult:
    att = Attestation(
        request_id=rid, model_name="m", model_version=2, target_id="cpu-x86_64", artifact_sha256=SHA,
        input_digest=tensors_digest(["x"], inputs), output_digest=tensors_digest(["y"], outputs),
        node_id=node.node_id, timestamp_ms=int(time.time() * 1000),
    )
    att = replace(att, **override)
    data, sig = att.sign(node.key)
    return WorkerResult(outputs, data, sig)


class FakeClient:
    """Doubles the input; ``behaviour[node_id]`` can raise or tamper."""

    def __init__(self):
        self.calls: list[tuple[str, str, float | None]] = []
        self.behaviour: dict[str, object] = {}
        self.gate: threading.Event | None = None

    def infer(self, node, request_id, model_name, model_version, inputs, timeout=None):
        self.calls.append((node.node_id, request_id, timeout))
        if self.gate is not None:
            assert self.gate.wait(5)
        b = self.behaviour.get(node.node_id)
        if callable(b):
            b()
        if isinstance(b, Exception):
            raise b
        outputs = {"y": inputs["x"] * 2}
        if b == "tamper-output":
            return replace(sign_result(node, request_id, inputs, outputs), outputs={"y": inputs["x"] * 3})
        if b == "bad-signature":
            r = sign_result(node, request_id, inputs, outputs)
            return replace(r, signature=bytes(64))
        if b == "wrong-request-id":
            return sign_result(node, request_id, inputs, outputs, request_id="other")
        if b == "unknown-artifact":
            return sign_result(node, request_id, inputs, outputs, artifact_sha256="cd" * 32)
        if b == "wrong-shape":
            out = {"y": np.zeros((2, 4), np.float32)}
            return sign_result(node, request_id, inputs, out)
        return sign_result(node, request_id, inputs, outputs)


def test_runs_and_checks():
    nodes = make_nodes(1)
    client = FakeClient()
    s = Scheduler(FakeRegistry(nodes), client, check=verifier_check())
    r = s.run(MANIFEST, X)
    np.testing.assert_array_equal(r.outputs["y"], X["x"] * 2)
    assert r.node is nodes[0] and r.attempts == 1 and r.attestation.request_id == r.request_id
    assert len(r.request_id) == 32 and client.calls[0][2] == s.call_timeout
    assert s.inflight(nodes[0].node_id) == 0


def test_fresh_request_id_per_call():
    s = Scheduler(FakeRegistry(make_nodes(1)), FakeClient())
    assert s.run(MANIFEST, X).request_id != s.run(MANIFEST, X).request_id


def test_least_outstanding_choice():
    nodes = make_nodes(3)
    s = Scheduler(FakeRegistry(nodes), FakeClient())
    s._inflight = {nodes[0].node_id: 2, nodes[1].node_id: 1}
    assert s.run(MANIFEST, X).node is nodes[2]
    s._inflight = {nodes[0].node_id: 2, nodes[2].node_id: 1}
    assert s.run(MANIFEST, X).node is nodes[1]


def test_ties_are_random():
    nodes = make_nodes(3)
    s = Scheduler(FakeRegistry(nodes), FakeClient(), rng=random.Random(7))
    chosen = {s.run(MANIFEST, X).node.node_id for _ in range(60)}
    assert chosen == {n.node_id for n in nodes}


def test_inflight_spreads_concurrent_requests():
    nodes = make_nodes(2)
    client = FakeClient()
    client.gate = threading.Event()
    s = Scheduler(FakeRegistry(nodes), client)
    results = []
    threads = [threading.Thread(target=lambda: results.append(s.run(MANIFEST, X))) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(client.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(s.inflight(n.node_id) for n in nodes) == [2, 2]
    client.gate.set()
    for t in threads:
        t.join(5)
    assert len(results) == 4 and all(s.inflight(n.node_id) == 0 for n in nodes)


@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.NOT_FOUND])
def test_retry_on_failure_reports_node(code):
    nodes = make_nodes(2)
    reg = FakeRegistry(nodes)
    client = FakeClient()
    s = Scheduler(reg, client, rng=random.Random(0))
    s._inflight = {nodes[1].node_id: 1}  # node 0 is tried first
    client.behaviour[nodes[0].node_id] = HyperinferError("boom", code)
    r = s.run(MANIFEST, X)
    assert r.node is nodes[1] and r.attempts == 2
    assert reg.failed == [nodes[0].node_id]
    assert client.calls[0][1] != client.calls[1][1]  # the retry is a new request id


def test_resource_exhausted_retried_not_reported():
    nodes = make_nodes(2)
    reg = FakeRegistry(nodes)
    client = FakeClient()
    s = Scheduler(reg, client)
    s._inflight = {nodes[1].node_id: 1}
    client.behaviour[nodes[0].node_id] = ResourceExhausted("busy")
    assert s.run(MANIFEST, X).node is nodes[1]
    assert reg.failed == []


@pytest.mark.parametrize("tamper", ["tamper-output", "bad-signature", "wrong-request-id", "unknown-artifact",
                                    "wrong-shape"])
def test_bad_attestation_is_a_node_failure(tamper):
    nodes = make_nodes(2)
    reg = FakeRegistry(nodes)
    client = FakeClient()
    ledger = FaultLedger()
    s = Scheduler(reg, client, check=verifier_check(ledger))
    s._inflight = {nodes[1].node_id: 1}
    client.behaviour[nodes[0].node_id] = tamper
    r = s.run(MANIFEST, X)
    assert r.node is nodes[1] and reg.failed == [nodes[0].node_id] and ledger.faults == [nodes[0].node_id]


def test_invalid_argument_from_node_is_returned_as_is():
    nodes = make_nodes(2)
    reg = FakeRegistry(nodes)
    client = FakeClient()
    for n in nodes:
        client.behaviour[n.node_id] = InvalidArgument("input 'x': bad")
    with pytest.raises(InvalidArgument, match="input 'x': bad"):
        Scheduler(reg, client).run(MANIFEST, X)
    assert len(client.calls) == 1 and reg.failed == []


def test_unavailable_when_no_node():
    s = Scheduler(FakeRegistry([]), FakeClient(), known_nodes=lambda: 3)
    with pytest.raises(Unavailable, match=r"no node can serve model m version 2 \(3 nodes known, 0 healthy\)"):
        s.run(MANIFEST, X)


def test_unavailable_when_all_fail():
    nodes = make_nodes(2)
    client = FakeClient()
    for n in nodes:
        client.behaviour[n.node_id] = Unavailable("connection refused")
    with pytest.raises(Unavailable, match="2 attempt.*connection refused"):
        Scheduler(FakeRegistry(nodes), client).run(MANIFEST, X)


def test_attempts_are_bounded():
    nodes = make_nodes(5)
    client = FakeClient()
    for n in nodes:
        client.behaviour[n.node_id] = Unavailable("down")
    with pytest.raises(Unavailable, match="3 attempt"):
        Scheduler(FakeRegistry(nodes), client, max_attempts=3).run(MANIFEST, X)
    assert len(client.calls) == 3


def test_deadline_bounds_call_timeout_and_stops_retries():
    nodes = make_nodes(2)
    client = FakeClient()
    s = Scheduler(FakeRegistry(nodes), client, call_timeout=30)
    s.run(MANIFEST, X, deadline=time.monotonic() + 2)
    assert 0 < client.calls[-1][2] <= 2
    with pytest.raises(HyperinferError) as ei:
        s.run(MANIFEST, X, deadline=time.monotonic() - 1)
    assert ei.value.code == Code.DEADLINE_EXCEEDED


def test_accept_and_prefer_filter_nodes():
    nodes = make_nodes(3)
    s = Scheduler(FakeRegistry(nodes), FakeClient())
    r = s.run(MANIFEST, X, accept=lambda n: n.operator != "op0", prefer=lambda n: n.operator == "op2")
    assert r.node is nodes[2]
    with pytest.raises(Unavailable):
        s.run(MANIFEST, X, accept=lambda n: False)


def test_check_rejects_wrong_input_digest():
    node = make_nodes(1)[0]
    r = sign_result(node, "rid", X, {"y": X["x"] * 2})
    check = verifier_check()
    check(MANIFEST, node, "rid", tensors_digest(["x"], X), r)
    with pytest.raises(ResultRejected, match="input_digest"):
        check(MANIFEST, node, "rid", "00" * 32, r)


def test_capacity_is_respected_and_waits_are_bounded():
    nodes = make_nodes(1)
    nodes[0].capacity = 1
    client = FakeClient()
    client.gate = threading.Event()
    s = Scheduler(FakeRegistry(nodes), client, call_timeout=0.3)
    t = threading.Thread(target=s.run, args=(MANIFEST, X))
    t.start()
    deadline = time.monotonic() + 5
    while not client.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted, match="at capacity"):
        s.run(MANIFEST, X)  # the only node is full: wait up to call_timeout, then give up
    assert 0.25 < time.monotonic() - t0 < 2
    client.gate.set()
    t.join(5)


def test_waiter_gets_the_slot_when_it_frees():
    nodes = make_nodes(1)
    nodes[0].capacity = 1
    client = FakeClient()
    client.gate = threading.Event()
    s = Scheduler(FakeRegistry(nodes), client, call_timeout=5)
    first = threading.Thread(target=s.run, args=(MANIFEST, X))
    first.start()
    while not client.calls:
        time.sleep(0.01)
    threading.Timer(0.2, client.gate.set).start()
    r = s.run(MANIFEST, X)  # queued behind the first, then runs
    assert r.node is nodes[0] and len(client.calls) == 2
    first.join(5)


def test_counted_client_holds_a_slot_while_it_runs():
    nodes = make_nodes(2)
    validator_client = FakeClient()
    validator_client.gate = threading.Event()
    s = Scheduler(FakeRegistry(nodes), FakeClient())
    counted = s.counted(validator_client)
    t = threading.Thread(target=counted.infer, args=(nodes[0], "v1", "m", 2, X))
    t.start()
    try:
        deadline = time.monotonic() + 5
        while not validator_client.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.inflight(nodes[0].node_id) == 1
        for _ in range(5):
            assert s.run(MANIFEST, X).node is nodes[1]  # a validator run counts like a primary one
    finally:
        validator_client.gate.set()
        t.join(5)
    assert s.inflight(nodes[0].node_id) == 0


def test_client_deadline_is_not_the_nodes_fault():
    nodes = make_nodes(2)
    reg = FakeRegistry(nodes)
    client = FakeClient()
    def slow():  # like a node call cut off by the client's deadline
        time.sleep(0.25)
        raise HyperinferError("deadline", Code.DEADLINE_EXCEEDED)

    for n in nodes:
        client.behaviour[n.node_id] = slow
    s = Scheduler(reg, client)
    with pytest.raises(HyperinferError) as ei:
        s.run(MANIFEST, X, deadline=time.monotonic() + 0.2)
    assert ei.value.code == Code.DEADLINE_EXCEEDED and reg.failed == [] and len(client.calls) == 1


def test_all_nodes_busy_is_resource_exhausted():
    nodes = make_nodes(2)
    client = FakeClient()
    for n in nodes:
        client.behaviour[n.node_id] = ResourceExhausted("busy")
    reg = FakeRegistry(nodes)
    with pytest.raises(ResourceExhausted, match="at capacity"):
        Scheduler(reg, client).run(MANIFEST, X)
    assert reg.failed == []

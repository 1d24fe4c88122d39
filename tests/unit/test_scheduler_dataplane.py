"""The OIP data plane over the scheduler and the real Verifier, with in-process fake nodes:
validation against the manifest, verify modes, receipts, rejected results retried elsewhere."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument, NotFound, Unavailable
from hyperinfer.gateway.dataplane import OVERLAP_DIGEST_BYTES, DataPlane, InferInput, InferRequest, RequestedOutput, wants_typed
from hyperinfer.gateway.ledger import Ledger
from hyperinfer.gateway.store import open_store
from hyperinfer.gateway.write_behind import WriteBehindLedger
from hyperinfer.gateway.scheduler import Scheduler
from hyperinfer.gateway.verification import Verifier
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec, Tolerance
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt
from hyperinfer.verify.sampling import SamplingPolicy
from hyperinfer.verify.signing import public_bytes

# reuse the scheduler test's fakes: nodes with real keys and a client that signs attestations
sys.path.insert(0, str(Path(__file__).parent))  # importlib mode does not put test dirs on sys.path
from test_scheduler import FakeClient, FakeRegistry, make_nodes, sign_result  # noqa: E402

SHA = "ab" * 32


def manifest(version: int, shape: tuple[int, ...] = (1, 4)) -> Manifest:
    return Manifest(
        name="m", version=version, source_sha256="", model_sha256="",
        inputs=[TensorSpec("x", "float32", shape)],
        outputs=[OutputSpec("y", "float32", shape, tolerance=Tolerance(1e-6, 1e-6))],
        tvm_version="",
        artifacts={"cpu-x86_64": ArtifactInfo("cpu-x86_64", {}, "artifacts/cpu-x86_64.so", SHA, 1)},
    )


@dataclass
class Offer:
    manifest: Manifest


class FakeCatalog:
    def __init__(self, *versions: int, shape: tuple[int, ...] = (1, 4)):
        self.offers = {v: Offer(manifest(v, shape)) for v in versions}

    def versions(self, name):
        return sorted(self.offers) if name == "m" else []

    def get(self, name, version=None):
        if name != "m":
            raise NotFound(f"unknown model {name!r}")
        v = max(self.offers) if version is None else version
        if v not in self.offers:
            raise NotFound(f"model 'm' has no version {v}")
        return self.offers[v]


X = np.arange(4, dtype=np.float32).reshape(1, 4)


def request(**kw) -> InferRequest:
    kw.setdefault("inputs", [InferInput("x", "FP32", (1, 4), X)])
    return InferRequest(model_name=kw.pop("model_name", "m"), **kw)


@pytest.fixture
def env():
    nodes = make_nodes(2)
    registry = FakeRegistry(nodes)
    client = FakeClient()
    ledger = Ledger(open_store(":memory:"))
    wb = WriteBehindLedger(ledger)
    gw_key = Ed25519PrivateKey.generate()
    verifier = Verifier(wb, SamplingPolicy(default_rate=0.0, probation_rate=0.0),
                        lambda name, version, inputs: {"y": inputs["x"] * 2}, client, gw_key)
    scheduler = Scheduler(registry, client, check=None, rng=random.Random(1))
    dp = DataPlane(FakeCatalog(2), registry, scheduler, verifier)
    yield {"dp": dp, "nodes": nodes, "registry": registry, "client": client, "ledger": ledger, "wb": wb,
           "gw_key": gw_key, "verifier": verifier}
    verifier.close()
    wb.close()


def receipt(resp):
    return receipt_from_json(resp.parameters[RECEIPT_PARAMETER])


def test_infer_returns_outputs_and_a_signed_receipt(env):
    resp = env["dp"].infer(request(id="client-1"))
    np.testing.assert_array_equal(resp.outputs[0].array, X * 2)
    assert resp.id == "client-1" and resp.model_version == "2" and resp.outputs[0].datatype == "FP32"
    r = receipt(resp)
    assert r.status == "unchecked" and r.request_id != "client-1"
    assert all(c.ok for c in verify_receipt(resp.parameters[RECEIPT_PARAMETER], public_bytes(env["gw_key"])))
    env["wb"].flush()
    assert env["ledger"].summary(r.node_id)["jobs"] == 1
    assert env["ledger"].receipt(r.request_id).status == "unchecked"


@pytest.mark.parametrize("mode", ["sync", "always"])
def test_checked_modes_answer_after_the_check(env, mode):
    resp = env["dp"].infer(request(parameters={"verify": mode}))
    r = receipt(resp)
    if mode == "always":
        assert r.status == "agreed" and r.validator_node_id not in (None, r.node_id)
    else:
        assert r.status == "unchecked"  # rate 0: sync only waits when sampled


def test_rejected_result_is_retried_on_another_node(env):
    nodes, client = env["nodes"], env["client"]
    env["dp"].scheduler._inflight = {nodes[1].node_id: 1}  # node 0 goes first
    client.behaviour[nodes[0].node_id] = "tamper-output"
    resp = env["dp"].infer(request())
    np.testing.assert_array_equal(resp.outputs[0].array, X * 2)
    assert receipt(resp).node_id == nodes[1].node_id
    assert env["registry"].failed == [nodes[0].node_id]
    assert env["ledger"].summary(nodes[0].node_id)["faults"] == 1


def test_large_inputs_are_hashed_while_the_node_runs(env):
    """Inputs over OVERLAP_DIGEST_BYTES are hashed on another thread during the node call; the
    attestation is still checked against that digest: a node attesting other inputs is rejected."""
    shape = (1, 1024, 512)  # 2 MiB of float32
    assert np.prod(shape) * 4 >= OVERLAP_DIGEST_BYTES
    dp, nodes, client = env["dp"], env["nodes"], env["client"]
    dp.catalog = FakeCatalog(2, shape=shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    big = request(inputs=[InferInput("x", "FP32", shape, x)])
    resp = dp.infer(big)
    np.testing.assert_array_equal(resp.outputs[0].array, x * 2)
    assert receipt(resp).status == "unchecked"

    # node 0 answers first, with an attestation over other inputs (a replayed result)
    dp.scheduler._inflight = {nodes[1].node_id: 1}
    other = {"x": x + 1}
    client.behaviour[nodes[0].node_id] = "replay"
    plain_infer = client.infer

    def replaying(node, request_id, model_name, model_version, inputs, timeout=None):
        if client.behaviour.get(node.node_id) == "replay":
            return sign_result(node, request_id, other, {"y": inputs["x"] * 2})
        return plain_infer(node, request_id, model_name, model_version, inputs, timeout)

    client.infer = replaying
    resp = dp.infer(big)
    assert receipt(resp).node_id == nodes[1].node_id
    assert env["registry"].failed == [nodes[0].node_id]
    env["wb"].flush()
    assert env["ledger"].summary(nodes[0].node_id)["faults"] == 1


def test_every_node_rejected_is_unavailable(env):
    for n in env["nodes"]:
        env["client"].behaviour[n.node_id] = "bad-signature"
    with pytest.raises(Unavailable, match="2 node.*rejected by verification"):
        env["dp"].infer(request())
    assert sorted(env["registry"].failed) == sorted(n.node_id for n in env["nodes"])


def test_manifest_checks_name_the_field(env):
    dp = env["dp"]
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].name.*'y'"):
        dp.infer(request(inputs=[InferInput("y", "FP32", (1, 4), X)]))
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].datatype: FP64.*FP32"):
        dp.infer(request(inputs=[InferInput("x", "FP64", (1, 4), X.astype(np.float64))]))
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].shape: \[4\].*\[1, 4\]"):
        dp.infer(request(inputs=[InferInput("x", "FP32", (4,), X.ravel())]))
    with pytest.raises(InvalidArgument, match=r"inputs: missing input 'x'"):
        dp.infer(request(inputs=[]))
    with pytest.raises(InvalidArgument, match=r"outputs\[0\].name.*'z'"):
        dp.infer(request(outputs=[RequestedOutput("z")]))
    with pytest.raises(InvalidArgument, match=r"parameters.verify"):
        dp.infer(request(parameters={"verify": "maybe"}))
    with pytest.raises(InvalidArgument, match=r"parameters.hyperinfer.verify"):
        dp.infer(request(parameters={"hyperinfer.verify": 3}))
    with pytest.raises(InvalidArgument, match=r"model_version"):
        dp.infer(request(model_version="v2"))
    with pytest.raises(InvalidArgument, match=r"model_name"):
        dp.infer(request(model_name=""))
    assert env["client"].calls == []  # nothing reached a node


def test_unknown_model_and_version(env):
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        env["dp"].infer(request(model_name="nope"))
    with pytest.raises(NotFound, match="no version 5"):
        env["dp"].infer(request(model_version="5"))


def test_no_node_is_unavailable_not_a_hang(env):
    env["registry"].nodes = []
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="no node can serve model m version 2"):
        env["dp"].infer(request())
    assert time.monotonic() - t0 < 1


def test_readiness_and_metadata(env):
    dp = env["dp"]
    assert dp.live() and dp.ready()
    assert dp.model_ready("m") and dp.model_ready("m", "2")
    assert not dp.model_ready("m", "3") and not dp.model_ready("nope")
    env["registry"].nodes = []
    assert not dp.model_ready("m")
    md = dp.model_metadata("m")
    assert md.platform == "hyperinfer-tvm" and md.versions == ["2"]
    assert [(t.name, t.datatype, t.shape) for t in md.inputs] == [("x", "FP32", (1, 4))]
    with pytest.raises(NotFound):
        dp.model_metadata("nope")


def test_typed_output_choice():
    assert not wants_typed(request())
    assert wants_typed(request(binary_output=False))
    assert not wants_typed(request(binary_output=True, outputs=[RequestedOutput("y", False)]))
    assert wants_typed(request(outputs=[RequestedOutput("y", False)]))
    assert not wants_typed(request(outputs=[RequestedOutput("y", False), RequestedOutput("z")]))


def test_write_behind_ledger_keeps_order_and_flushes_before_reads(env):
    wb, ledger = env["wb"], env["ledger"]
    for i in range(50):
        wb.record_job("n1", f"r{i}", b"a", b"s")
    # a fault waits for the queued jobs: the ledger sees them in order
    wb.record_fault("n1", "bad", "r50")
    d = ledger.summary("n1")
    assert d["jobs"] == 50 and d["faults"] == 1
    assert wb.attestation_count("n1") == 50


def test_write_behind_ledger_after_close_writes_through():
    ledger = Ledger(open_store(":memory:"))
    wb = WriteBehindLedger(ledger)
    wb.record_job("n1", "r1", b"a", b"s")
    wb.close()
    assert ledger.summary("n1")["jobs"] == 1  # queued writes committed on close
    wb.record_job("n1", "r2", b"a", b"s")  # a late background check: written at once, no hang
    wb.record_fault("n1", "late", "r2")
    assert ledger.summary("n1")["jobs"] == 2 and ledger.summary("n1")["faults"] == 1
    wb.close()

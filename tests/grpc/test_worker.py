"""The node's Worker service over real gRPC, serving real TVM-compiled packages that
went through the node's own path: signed offer -> trust check -> chunked download
into the cache -> sha256 check -> TVM load.

Asserts outputs against ONNX Runtime, attestations against the node key, and the
status code and details of every rejection.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hyperinfer import zoo
from hyperinfer.node.cache import ArtifactCache
from hyperinfer.node.dataplane import DataPlane, TrustPolicy
from hyperinfer.node.devices import detect
from hyperinfer.node.models import ModelManager, Offer, local_fetch, tvm_runner_factory
from hyperinfer.node.server import WORKER_SERVICE, WorkerServer
from hyperinfer.node.servicer import NodeInfo
from hyperinfer.package import ModelPackage
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.transport.tensors import many_from_proto, many_to_proto, to_proto
from hyperinfer.verify.attestation import verify_attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.publisher import sign_manifest
from hyperinfer.verify.signing import fingerprint, public_bytes

MAX_MESSAGE = 1 << 20  # small, so an oversized request is cheap to build
MODELS = ("two-inputs", "int-bool")


def _compile(name: str, root: Path) -> ModelPackage:
    try:
        from hyperinfer.compile import compile_model
    except ImportError:
        try:
            from hyperinfer.compile.pipeline import compile_model
        except ImportError:
            pytest.skip("hyperinfer.compile is not available yet")
    path, shapes = zoo.build_small(name, root / "src")
    return compile_model(path, name=name, out_dir=root / "repo", targets=["cpu-x86_64"], input_shapes=shapes,
                         version=1, force=False, progress=False)


@pytest.fixture(scope="module")
def packages(request, tmp_path_factory) -> dict[str, ModelPackage]:
    root = tmp_path_factory.mktemp("packages")
    out = {}
    for name in MODELS:
        try:
            factory = request.getfixturevalue("compiled_small")  # the shared session fixture, if present
            pkg = factory(name)
            out[name] = pkg if isinstance(pkg, ModelPackage) else ModelPackage.open(pkg)
        except (pytest.FixtureLookupError, ImportError):
            out[name] = _compile(name, root)
    return out


class Gate:
    """Wraps a runner; while ``closed`` each call waits, so tests can hold slots busy."""

    def __init__(self, inner):
        self.inner = inner
        self.closed = False
        self.entered = threading.Semaphore(0)
        self.opened = threading.Event()

    def run(self, feeds):
        if self.closed:
            self.entered.release()
            assert self.opened.wait(20)
        return self.inner.run(feeds)


@pytest.fixture(scope="module")
def node(packages, tmp_path_factory):
    publisher = Ed25519PrivateKey.generate()
    key = Ed25519PrivateKey.generate()
    hw = detect("cpu")
    dp = DataPlane(key, max_concurrency=2)
    gates = {}
    base = tvm_runner_factory(threads=1)

    def runner_factory(path, manifest, target):
        gates[manifest.name] = Gate(base(path, manifest, target))
        return gates[manifest.name]

    cache = ArtifactCache(tmp_path_factory.mktemp("cache"), progress=False)
    for pkg in packages.values():
        mgr = ModelManager(dp, cache, hw.targets, TrustPolicy([public_bytes(publisher)]),
                           local_fetch(pkg.path, chunk_size=4096), runner_factory)
        offer = Offer(pkg.name, pkg.version, pkg.manifest_bytes, sign_manifest(publisher, pkg.manifest_bytes))
        assert len(mgr.apply([offer])) == 1, mgr.failed
    server = WorkerServer(dp, NodeInfo("op-test", hw.targets, hw.devices), "127.0.0.1:0",
                          max_message_bytes=MAX_MESSAGE).start()
    channel = grpc.insecure_channel(server.address)
    yield {"server": server, "dp": dp, "stub": pool_pb2_grpc.WorkerStub(channel), "channel": channel,
           "key": key, "gates": gates, "packages": packages}
    channel.close()
    server.stop(0)


def sample(pkg: ModelPackage, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {s.name: r.standard_normal(s.shape).astype(s.dtype) for s in pkg.manifest.inputs}


def request(model: str, inputs: dict, rid: str = "req-1", version: int = 1) -> pool_pb2.InferRequest:
    return pool_pb2.InferRequest(request_id=rid, model_name=model, model_version=version,
                                 inputs=many_to_proto(inputs))


@pytest.mark.parametrize("model", MODELS)
def test_outputs_match_onnx_runtime_and_attestation_verifies(node, model):
    pkg = node["packages"][model]
    x = sample(pkg, seed=3)
    resp = node["stub"].Infer(request(model, x), timeout=30)
    got = many_from_proto(resp.outputs)
    ref = ORTRunner.for_package(pkg, threads=1).run(x)
    m = pkg.manifest
    assert [t.name for t in resp.outputs] == [o.name for o in m.outputs]
    for o in m.outputs:
        assert got[o.name].dtype == ref[o.name].dtype and got[o.name].shape == ref[o.name].shape
        if np.issubdtype(got[o.name].dtype, np.floating):
            np.testing.assert_allclose(got[o.name], ref[o.name], atol=o.tolerance.atol, rtol=o.tolerance.rtol)
        else:
            np.testing.assert_array_equal(got[o.name], ref[o.name])

    info = node["stub"].Info(pool_pb2.InfoRequest(), timeout=10)
    att = verify_attestation(bytes(info.public_key), resp.attestation, resp.signature)
    assert att.node_id == info.node_id == fingerprint(bytes(info.public_key))
    assert (att.request_id, att.model_name, att.model_version, att.target_id) == ("req-1", model, 1, "cpu-x86_64")
    assert att.artifact_sha256 == m.artifacts["cpu-x86_64"].sha256
    assert att.input_digest == tensors_digest([s.name for s in m.inputs], x)
    assert att.output_digest == tensors_digest([o.name for o in m.outputs], got)
    # same input on the same artifact: bit-identical (what homogeneous redundancy relies on)
    again = node["stub"].Infer(request(model, x, rid="req-2"), timeout=30)
    from hyperinfer.verify.attestation import Attestation
    assert Attestation.from_bytes(again.attestation).output_digest == att.output_digest


def test_info(node):
    info = node["stub"].Info(pool_pb2.InfoRequest(), timeout=10)
    assert info.operator == "op-test" and info.capacity == 2 and info.outstanding == 0
    assert "cpu-x86_64" in info.targets and info.devices[0].kind in ("cpu", "cuda", "rocm", "vulkan")
    assert sorted((m.name, m.version, m.target_id) for m in info.loaded) == [
        ("int-bool", 1, "cpu-x86_64"), ("two-inputs", 1, "cpu-x86_64")]


def _error(stub_call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        stub_call()
    return ei.value


@pytest.mark.parametrize("mutate, needle", [
    (lambda x: {**x, "c": x["a"]}, "'c'"),
    (lambda x: {"a": x["a"]}, "missing input 'b'"),
    (lambda x: {**x, "b": x["b"].astype(np.float64)}, "'b': dtype float64, expected float32"),
    (lambda x: {**x, "a": x["a"].reshape(4, 8)}, "'a': shape [4, 8], expected [2, 16]"),
])
def test_invalid_inputs_name_the_field(node, mutate, needle):
    x = mutate(sample(node["packages"]["two-inputs"]))
    e = _error(lambda: node["stub"].Infer(request("two-inputs", x), timeout=10))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.details()


def test_malformed_tensors_and_fields(node):
    stub = node["stub"]
    x = sample(node["packages"]["two-inputs"])
    bad = to_proto("a", x["a"])
    bad.data = bad.data[:-4]
    cases = [
        (pool_pb2.InferRequest(request_id="r", model_name="two-inputs", model_version=1,
                               inputs=[bad, to_proto("b", x["b"])]), "tensor 'a'"),
        (pool_pb2.InferRequest(request_id="r", model_name="two-inputs", model_version=1,
                               inputs=[to_proto("a", x["a"]), to_proto("a", x["a"])]), "'a' given twice"),
        (pool_pb2.InferRequest(request_id="r", model_name="two-inputs", model_version=1,
                               inputs=[pool_pb2.Tensor(name="a", dtype="complex64", shape=[1], data=b"")]),
         "complex64"),
        (request("two-inputs", x, rid=""), "request_id"),
    ]
    for req, needle in cases:
        e = _error(lambda: stub.Infer(req, timeout=10))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        assert needle in e.details()


def test_unknown_model_and_version(node):
    x = sample(node["packages"]["two-inputs"])
    e = _error(lambda: node["stub"].Infer(request("nope", x), timeout=10))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in e.details()
    e = _error(lambda: node["stub"].Infer(request("two-inputs", x, version=5), timeout=10))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "version 5" in e.details()


def test_oversized_message_is_resource_exhausted(node):
    big = {"a": np.zeros((1, MAX_MESSAGE // 4 + 10), np.float32)}
    e = _error(lambda: node["stub"].Infer(request("two-inputs", big), timeout=10))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the node is unharmed
    node["stub"].Infer(request("two-inputs", sample(node["packages"]["two-inputs"])), timeout=30)


def test_concurrency_limit_is_resource_exhausted(node):
    gate = node["gates"]["two-inputs"]
    x = sample(node["packages"]["two-inputs"])
    gate.closed, gate.opened = True, threading.Event()
    futures = [node["stub"].Infer.future(request("two-inputs", x, rid=f"hold-{i}"), timeout=30) for i in range(2)]
    try:
        for _ in range(2):
            assert gate.entered.acquire(timeout=20)
        e = _error(lambda: node["stub"].Infer(request("two-inputs", x, rid="extra"), timeout=10))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrency limit" in e.details()
        assert node["stub"].Info(pool_pb2.InfoRequest(), timeout=10).outstanding == 2
    finally:
        gate.closed = False
        gate.opened.set()
    for f in futures:
        assert f.result(timeout=30).attestation


def test_health_serving(node):
    stub = health_pb2_grpc.HealthStub(node["channel"])
    for service in ("", WORKER_SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_graceful_stop_finishes_running_requests(packages, tmp_path):
    """stop(grace): health goes NOT_SERVING, new calls are refused, the running one completes."""
    pkg = packages["two-inputs"]
    publisher = Ed25519PrivateKey.generate()
    dp = DataPlane(Ed25519PrivateKey.generate(), max_concurrency=2)
    holder = {}

    def runner_factory(path, manifest, target):
        holder["gate"] = Gate(tvm_runner_factory(threads=1)(path, manifest, target))
        return holder["gate"]

    mgr = ModelManager(dp, ArtifactCache(tmp_path / "cache", progress=False), ["cpu-x86_64"],
                       TrustPolicy([public_bytes(publisher)]), local_fetch(pkg.path), runner_factory)
    assert mgr.apply([Offer(pkg.name, 1, pkg.manifest_bytes, sign_manifest(publisher, pkg.manifest_bytes))])
    server = WorkerServer(dp, NodeInfo(), "127.0.0.1:0").start()
    gate = holder["gate"]
    gate.closed = True
    with grpc.insecure_channel(server.address) as ch:
        stub = pool_pb2_grpc.WorkerStub(ch)
        running = stub.Infer.future(request("two-inputs", sample(pkg)), timeout=30)
        assert gate.entered.acquire(timeout=20)
        health = health_pb2_grpc.HealthStub(ch)
        server.not_serving()
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
        stopper.start()
        threading.Timer(0.5, gate.opened.set).start()
        assert running.result(timeout=30).attestation  # finished during the grace period
        stopper.join(30)
        assert not stopper.is_alive()
        e = _error(lambda: stub.Infer(request("two-inputs", sample(pkg)), timeout=5))
        assert e.code() == grpc.StatusCode.UNAVAILABLE

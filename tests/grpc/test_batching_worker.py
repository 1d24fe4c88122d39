"""A batching node over real gRPC: a package compiled with --max-batch, loaded through the
node's own path (offer -> trust -> download -> TVM load with the batched entry points),
concurrent Infer calls run as one batch, each answered with its own attestation, and each
attestation verifies against its own request."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer import zoo
from hyperinfer.node.cache import ArtifactCache
from hyperinfer.node.dataplane import DataPlane, TrustPolicy
from hyperinfer.node.devices import detect
from hyperinfer.node.models import ModelManager, Offer, local_fetch, tvm_runner_factory
from hyperinfer.node.server import WorkerServer
from hyperinfer.node.servicer import NodeInfo
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.transport.tensors import many_from_proto, many_to_proto
from hyperinfer.verify.attestation import verify_attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.publisher import sign_manifest
from hyperinfer.verify.signing import public_bytes

TARGET = "cpu-x86_64"


@pytest.fixture(scope="module")
def batched_node(tmp_path_factory):
    from hyperinfer.compile import compile_model

    root = tmp_path_factory.mktemp("batched")
    src, _ = zoo.build_small("mlp", root / "src")
    pkg = compile_model(src, "mlp-batched", out_dir=root / "repo", targets=[TARGET], input_shapes={"x": (1, 64)},
                        progress=False, max_batch=4)
    publisher, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hw = detect("cpu")
    dp = DataPlane(key, max_concurrency=8, batch_window_s=1.0)
    mgr = ModelManager(dp, ArtifactCache(root / "cache", progress=False), [TARGET], TrustPolicy([public_bytes(publisher)]),
                       local_fetch(pkg.path), tvm_runner_factory(threads=1))
    assert len(mgr.apply([Offer(pkg.name, pkg.version, pkg.manifest_bytes,
                                sign_manifest(publisher, pkg.manifest_bytes))])) == 1, mgr.failed
    server = WorkerServer(dp, NodeInfo("op", [TARGET], hw.devices), "127.0.0.1:0").start()
    channel = grpc.insecure_channel(server.address)
    yield SimpleNamespace(pkg=pkg, dp=dp, key=key, stub=pool_pb2_grpc.WorkerStub(channel))
    channel.close()
    server.stop(0)
    dp.close()


def test_concurrent_requests_batched_each_verified_bad_one_fails_alone(batched_node):
    n = batched_node
    m = n.pkg.manifest
    model = n.dp.get(m.name)
    assert model.batcher is not None, "the batched package is served batched"
    xs = {i: {"x": np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)} for i in range(4)}
    bad = {"x": np.zeros((2, 64), np.float32)}
    replies, errors = {}, {}

    def call(i, x):
        req = pool_pb2.InferRequest(request_id=f"r{i}", model_name=m.name, model_version=m.version,
                                    inputs=many_to_proto(x))
        try:
            replies[i] = n.stub.Infer(req, timeout=30)
        except grpc.RpcError as e:
            errors[i] = e

    threads = [threading.Thread(target=call, args=(i, x)) for i, x in xs.items()]
    threads.append(threading.Thread(target=call, args=("bad", bad)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert set(errors) == {"bad"}
    assert errors["bad"].code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in errors["bad"].details()
    assert max(model.batcher.histogram) > 1, model.batcher.histogram

    # what the gateway checks of each result: the node's signature, its own request id and input
    # digest, the attested artifact and output digest
    ort = ORTRunner.for_package(n.pkg, threads=1)
    tol = m.outputs[0].tolerance
    for i, reply in replies.items():
        got = many_from_proto(reply.outputs)
        att = verify_attestation(public_bytes(n.key), reply.attestation, reply.signature)
        assert att.request_id == f"r{i}" and att.input_digest == tensors_digest(["x"], xs[i])
        assert (att.target_id, att.artifact_sha256) == (TARGET, m.artifacts[TARGET].sha256)
        assert att.output_digest == tensors_digest(["probs"], got)
        # bit-identical to the same artifact at batch 1 (homogeneous redundancy), close to ONNX Runtime
        assert att.output_digest == tensors_digest(["probs"], model.runner.run(xs[i]))
        np.testing.assert_allclose(got["probs"], ort.run(xs[i])["probs"], atol=tol.atol, rtol=tol.rtol)

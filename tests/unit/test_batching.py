"""Dynamic batching: `compile --max-batch` (one artifact with a batched entry point per size),
the node's batcher, and per-request attestations of batched requests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer import zoo
from hyperinfer.compile import batching
from hyperinfer.errors import FailedPrecondition, InvalidArgument
from hyperinfer.node.batching import Batcher
from hyperinfer.node.dataplane import DataPlane, LoadedModel
from hyperinfer.package import BatchInfo, Manifest
from hyperinfer.runtime import ORTRunner, TVMRunner
from hyperinfer.verify.attestation import verify_attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.signing import public_bytes
from support import assert_one_line_error, run_cli

TARGET = "cpu-x86_64"


# ------------------------------------------------------------------ pure logic


def test_batch_sizes_ladder():
    assert batching.batch_sizes(1) == (1,)
    assert batching.batch_sizes(4) == (1, 2, 4)
    assert batching.batch_sizes(6) == (1, 2, 4, 6)
    assert batching.batch_sizes(16) == (1, 2, 4, 8, 16)
    info = batching.batch_info(6)
    assert [info.size_for(n) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]
    with pytest.raises(InvalidArgument):
        info.size_for(7)
    for bad in (0, -1, batching.MAX_BATCH_LIMIT + 1):
        with pytest.raises(InvalidArgument, match="--max-batch"):
            batching.batch_sizes(bad)


def test_manifest_batch_round_trip_and_malformed(mlp_batched):
    m = Manifest.loads(mlp_batched.manifest.dumps())
    assert m.batch == BatchInfo(4, (1, 2, 4), 0)
    d = m.to_json()
    assert d["batch"]["entry_points"] == {"1": "main", "2": "main_b2", "4": "main_b4"}
    d["batch"]["sizes"] = [2, 4]
    import json

    with pytest.raises(InvalidArgument, match="malformed manifest"):
        Manifest.loads(json.dumps(d))


def test_batcher_groups_concurrent_requests_and_keeps_order():
    calls = []

    def run_batch(items):
        calls.append(len(items))
        time.sleep(0.01)
        return [{"y": x["x"] * 2} for x in items]

    b = Batcher(run_batch, max_batch=4, window_s=1.0, name="t")  # closes early once 4 are queued
    results = {}

    def one(i):
        results[i] = b.run({"x": np.full((1, 3), i, np.float32)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    b.stop()
    for i in range(8):  # each request got its own slice
        np.testing.assert_array_equal(results[i]["y"], np.full((1, 3), 2 * i, np.float32))
    assert sum(calls) == 8 and max(calls) <= 4
    assert max(calls) > 1, calls  # 8 requests within a 1 s window were not all run alone


def test_batcher_error_fails_only_that_batch():
    def run_batch(items):
        if any(float(x["x"][0, 0]) < 0 for x in items):
            raise FailedPrecondition("boom")
        return [{"y": x["x"]} for x in items]

    b = Batcher(run_batch, max_batch=4, window_s=0.0)
    with pytest.raises(FailedPrecondition, match="boom"):
        b.run({"x": -np.ones((1, 1), np.float32)})
    np.testing.assert_array_equal(b.run({"x": np.ones((1, 1), np.float32)})["y"], np.ones((1, 1)))
    b.stop()


# ------------------------------------------------------------------ real artifact


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    path, _ = zoo.build_small("mlp", tmp_path_factory.mktemp("mlp"))
    return path


@pytest.fixture(scope="module")
def mlp_batched(mlp_onnx, tmp_path_factory):
    from hyperinfer.compile import compile_model

    return compile_model(mlp_onnx, "mlp-b", out_dir=tmp_path_factory.mktemp("repo"), targets=[TARGET],
                         input_shapes={"x": (1, 64)}, progress=False, max_batch=4)


@pytest.fixture(scope="module")
def runner(mlp_batched):
    return TVMRunner.for_package(mlp_batched, TARGET, threads=2)


def _x(seed):
    return {"x": np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)}


def test_batched_items_bit_identical_to_batch_1_and_close_to_ort(mlp_batched, runner, mlp_onnx):
    ort = ORTRunner(mlp_batched.onnx_path, threads=1)
    tol = mlp_batched.manifest.outputs[0].tolerance
    items = [_x(i) for i in range(3)]  # 3 requests: padded to the size-4 entry point
    for got, x in zip(runner.run_batch(items), items):
        assert got["probs"].shape == (1, 10)
        assert got["probs"].tobytes() == runner.run(x)["probs"].tobytes()
        np.testing.assert_allclose(got["probs"], ort.run(x)["probs"], atol=tol.atol, rtol=tol.rtol)


def test_dataplane_batches_with_per_request_attestations(mlp_batched, runner):
    key = Ed25519PrivateKey.generate()
    dp = DataPlane(key, max_concurrency=8, batch_window_s=1.0)
    m = mlp_batched.manifest
    dp.add(LoadedModel(m, TARGET, m.artifacts[TARGET].sha256, runner))
    model = dp.get("mlp-b")
    assert model.batcher is not None and model.batcher.max_batch == 4
    results, errors = {}, {}

    def one(i, x):
        try:
            results[i] = (x, dp.infer(f"req-{i}", "mlp-b", 0, x))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[i] = e

    bad = {"x": np.zeros((1, 63), np.float32)}  # wrong shape in the same window: fails alone
    threads = [threading.Thread(target=one, args=(i, _x(i))) for i in range(4)]
    threads.append(threading.Thread(target=one, args=(99, bad)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    dp.remove("mlp-b", m.version)
    assert set(errors) == {99} and isinstance(errors[99], InvalidArgument), errors
    assert "x" in str(errors[99])
    assert sorted(results) == [0, 1, 2, 3]
    assert max(model.batcher.histogram) > 1, model.batcher.histogram  # they did run together
    for i, (x, res) in results.items():
        att = verify_attestation(public_bytes(key), res.attestation, res.signature)
        assert att.request_id == f"req-{i}"
        assert att.input_digest == tensors_digest(["x"], x)
        # bit-identical to the unbatched run: homogeneous redundancy still compares digests
        assert att.output_digest == tensors_digest(["probs"], runner.run(x))
        assert att.output_digest == tensors_digest(["probs"], res.outputs)


def test_dataplane_without_batching(mlp_batched, runner):
    dp = DataPlane(Ed25519PrivateKey.generate(), batch_window_s=None)
    m = mlp_batched.manifest
    dp.add(LoadedModel(m, TARGET, m.artifacts[TARGET].sha256, runner))
    assert dp.get("mlp-b").batcher is None
    x = _x(5)
    np.testing.assert_array_equal(dp.infer("r", "mlp-b", 0, x).outputs["probs"], runner.run(x)["probs"])


def test_check_bit_identical_reports_a_difference():
    info = batching.batch_info(2)
    solo = [{"y": np.ones((1, 2), np.float32)}, {"y": np.zeros((1, 2), np.float32)}]
    samples = [{"x": 0}, {"x": 1}]

    def mixing(size, items):  # a "kernel" whose rows leak into each other
        return [{"y": np.full((1, 2), 0.5, np.float32)} for _ in items]

    with pytest.raises(FailedPrecondition, match="differs from batch 1"):
        batching.check_bit_identical(mixing, info, solo, samples, "t")


# ------------------------------------------------------------------ compile errors


def test_compile_max_batch_out_of_range(mlp_onnx, tmp_path):
    for bad in ("0", "257"):
        assert_one_line_error(run_cli("compile", str(mlp_onnx), "--name", "m", "--out", str(tmp_path),
                                      "--input-shape", "x=1,64", "--max-batch", bad), "--max-batch", "256")


def test_compile_max_batch_needs_dynamic_batch_dim(tmp_path):
    cnn, _ = zoo.build_small("cnn", tmp_path)  # image[1,3,32,32]: batch fixed in the model
    assert_one_line_error(run_cli("compile", str(cnn), "--name", "c", "--out", str(tmp_path / "r"),
                                  "--max-batch", "4"), "dynamic batch dim", "'image'")


def test_compile_max_batch_needs_batch_1_shape(mlp_onnx, tmp_path):
    assert_one_line_error(run_cli("compile", str(mlp_onnx), "--name", "m", "--out", str(tmp_path),
                                  "--input-shape", "x=2,64", "--max-batch", "4"), "batch dim of 1", "'x'")
    assert not (tmp_path / "m" / "1").exists()


def test_retune_refuses_a_batched_package(mlp_batched):
    from hyperinfer.compile.retune import tune_package

    with pytest.raises(FailedPrecondition, match="--max-batch 4"):
        tune_package(mlp_batched.path, TARGET, trials=1)


def test_node_serves_unbatched_when_its_hardware_breaks_bit_identity(mlp_batched, runner):
    class Mixing:  # batch-1 runs are the real artifact's; batched rows come out slightly different
        def run(self, feeds):
            return runner.run(feeds)

        def run_batch(self, items, size=None):
            return [{"probs": runner.run(x)["probs"] + np.float32(1e-7)} for x in items]

    m = mlp_batched.manifest
    dp = DataPlane(Ed25519PrivateKey.generate(), batch_window_s=0.0)
    dp.add(LoadedModel(m, TARGET, m.artifacts[TARGET].sha256, Mixing()))
    assert dp.get("mlp-b").batcher is None
    x = _x(7)
    assert dp.infer("r", "mlp-b", 0, x).outputs["probs"].tobytes() == runner.run(x)["probs"].tobytes()

"""The vulkan target: TVM's WGSL kernels + plan, run natively by wgpu (lavapipe here), against ONNX Runtime."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from hyperinfer.errors import FailedPrecondition


@pytest.fixture(scope="module")
def adapter():
    from hyperinfer.runtime import webgpu

    found = webgpu.adapters()
    if not found:
        why = webgpu.why_not()
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: no WebGPU adapter: {why}")
        pytest.skip(why)
    return found[0]


@pytest.fixture(scope="module")
def cnn_vulkan(compiled_small, adapter):
    return compiled_small("cnn", targets=("cpu-x86_64", "vulkan"))


def test_package_carries_a_checked_zip_artifact(cnn_vulkan):
    info = cnn_vulkan.manifest.artifacts["vulkan"]
    assert info.file == "artifacts/vulkan.zip"
    assert info.target["target"]["kind"] == "webgpu"
    assert info.calibrated  # run against ONNX Runtime at compile time, on lavapipe here
    path = cnn_vulkan.artifact_path("vulkan", check=True)
    with zipfile.ZipFile(path) as z:
        plan = json.loads(z.read("plan.json"))
        names = set(z.namelist())
    assert {"plan.json", "constants.npz"} <= names
    assert plan["launches"] and all(f"kernels/{k}.wgsl" in names for k in plan["kernels"])
    # every launch names its kernel, bindings and a grid taken from TIR's thread extents
    for la in plan["launches"]:
        assert la["kernel"] in plan["kernels"]
        assert all(g >= 1 for g in la["grid"]) and la["grid"][2] == 1
    # TVM's memory planning reuses storage: fewer storage buffers than tensors written
    written = {(b["buffer"], b["offset"]) for la in plan["launches"] for b in la["bindings"]}
    storage = [b for b in plan["buffers"] if b["kind"] == "storage"]
    assert len(storage) < len(written)


def test_vulkan_matches_onnxruntime_within_tolerance(cnn_vulkan):
    from hyperinfer.runtime import ORTRunner
    from hyperinfer.runtime.runners import runner_for_package
    from hyperinfer.runtime.wgsl_runner import WGSLRunner
    from hyperinfer.verify.agreement import within_tolerance

    runner = runner_for_package(cnn_vulkan, "vulkan")
    assert isinstance(runner, WGSLRunner)
    ort = ORTRunner.for_package(cnn_vulkan)
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = {"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
        got, want = runner.run(x), ort.run(x)
        assert got["logits"].shape == want["logits"].shape == (1, 10)
        assert within_tolerance(got, want, cnn_vulkan.manifest.outputs).agree
        assert np.abs(got["logits"] - want["logits"]).max() < 1e-4
    # a second request on the same buffers gives the same bits (nothing left over between requests)
    again = runner.run(x)
    assert np.array_equal(again["logits"], got["logits"])


def test_self_test_runs_the_vulkan_artifact(cnn_vulkan):
    from hyperinfer.compile.pipeline import self_test

    seen = {}
    assert self_test(cnn_vulkan, report=lambda tid, ok, msg: seen.update({tid: (ok, msg)})) == []
    assert seen["vulkan"][0] and "within tolerance" in seen["vulkan"][1]


def test_two_input_model(compiled_small, adapter):
    from hyperinfer.runtime import ORTRunner
    from hyperinfer.runtime.runners import runner_for_package

    pkg = compiled_small("two-inputs", targets=("vulkan",))
    runner, ort = runner_for_package(pkg, "vulkan"), ORTRunner.for_package(pkg)
    rng = np.random.default_rng(3)
    x = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in pkg.manifest.inputs}
    got, want = runner.run(x), ort.run(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_int64_model_gets_a_clear_message_naming_model_and_kernel(small_onnx_dir, tmp_path, adapter):
    from hyperinfer import zoo
    from hyperinfer.compile import compile_model

    path, shapes = zoo.build_small("int-bool", small_onnx_dir)
    with pytest.raises(FailedPrecondition) as e:
        compile_model(path, "intbool", out_dir=tmp_path, targets=["vulkan"], input_shapes=shapes, progress=False)
    msg = str(e.value)
    assert "intbool" in msg and "64-bit integers" in msg and "argmax_kernel" in msg
    # with a CPU target as well, the package is built without the vulkan artifact and says why
    pkg = compile_model(path, "intbool", out_dir=tmp_path, targets=["cpu-x86_64", "vulkan"], input_shapes=shapes,
                        progress=False)
    assert set(pkg.manifest.artifacts) == {"cpu-x86_64"}
    assert any("vulkan not built" in w and "64-bit" in w for w in pkg.manifest.warnings)


def test_corrupt_artifact_is_a_clear_error(tmp_path, cnn_vulkan):
    from hyperinfer.runtime.wgsl_runner import WGSLRunner

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    m = cnn_vulkan.manifest
    with pytest.raises(FailedPrecondition, match="cannot load vulkan artifact"):
        WGSLRunner(bad, m.inputs, m.outputs)


def test_grid_packing_follows_tvm_webgpu_abi():
    from hyperinfer.runtime.wgsl_runner import pack_grid, pod_words

    assert pack_grid(10, 3, 1) == ((10, 3, 1), 10)
    (x, y, z), pack = pack_grid(70000, 1, 1)
    assert pack == 70000 and x < 65536 and x * z >= 70000 and z == 2
    (x, y, z), pack = pack_grid(200001, 1, 1)  # odd: padded up while halving
    assert x < 65536 and x * z >= 200001
    words = np.frombuffer(pod_words([["int32", -2], ["float32", 1.5]], 77), dtype=np.uint32)
    assert words[0] == np.array(-2, np.int32).view(np.uint32) and words[2] == 77
    assert np.array(words[1]).view(np.float32) == 1.5


def test_cli_targets_and_compile_error(small_onnx_dir, tmp_path, adapter):
    from support import assert_one_line_error, run_cli

    from hyperinfer import zoo

    proc = run_cli("targets")
    assert proc.returncode == 0, proc.stderr
    row = " ".join(ln for ln in proc.stdout.splitlines() if "vulkan" in ln or "Vulkan" in ln)
    assert "yes (" in row, proc.stdout  # builds here and runs here, on the adapter it names
    path, _ = zoo.build_small("int-bool", small_onnx_dir)
    assert_one_line_error(run_cli("compile", str(path), "--name", "ib", "--out", str(tmp_path),
                                  "--target", "vulkan"), "64-bit integers", "argmax_kernel", "ib")

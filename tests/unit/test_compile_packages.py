"""Compiled packages: layout, manifest, and CPU artifacts agreeing with ONNX Runtime
within the calibrated tolerance on fresh inputs (not the calibration ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperinfer.compile.cleanup import random_inputs
from hyperinfer.compile.targets import runnable_cpu_targets
from hyperinfer.package import ModelPackage
from hyperinfer.runtime import ORTRunner, TVMRunner
from hyperinfer.verify.agreement import within_tolerance

SMALL = ["mlp", "cnn", "two-inputs", "int-bool"]
ALL_VENDORS = ("cpu-x86_64", "cuda-sm90", "rocm-gfx942")


def fresh_inputs(package: ModelPackage, seed: int):
    return random_inputs(package.manifest.inputs, np.random.default_rng(1000 + seed))


@pytest.mark.parametrize("name", SMALL)
def test_small_model_matches_onnxruntime(compiled_small, name):
    package = compiled_small(name)
    ort = ORTRunner.for_package(package, threads=2)
    tvm_run = TVMRunner.for_package(package, "cpu-x86_64", threads=2)
    for seed in range(5):
        x = fresh_inputs(package, seed)
        result = within_tolerance(tvm_run.run(x), ort.run(x), package.manifest.outputs)
        assert result.agree, result.reason


@pytest.mark.parametrize("name", SMALL)
def test_small_model_builds_for_every_vendor(compiled_small, name):
    package = compiled_small(name, ALL_VENDORS)
    m = package.manifest
    assert set(m.artifacts) == set(ALL_VENDORS)
    for tid, info in m.artifacts.items():
        assert package.artifact_path(tid).stat().st_size == info.size
        assert info.calibrated == (tid in runnable_cpu_targets())
    # CUDA and ROCm artifacts are real device code: the GPU rules were applied
    assert package.artifact("cuda-sm90").target["target"]["arch"] == "sm_90"
    assert package.artifact("rocm-gfx942").target["target"]["mcpu"] == "gfx942"


def test_manifest_records_what_design_requires(compiled_small):
    package = compiled_small("mlp")
    d = json.loads(package.manifest_bytes)
    for key in ("name", "version", "source_sha256", "model", "inputs", "outputs", "tvm_version", "cleanup",
                "artifacts", "reference"):
        assert key in d, key
    (out,) = d["outputs"]
    assert out["tolerance"]["atol"] > 0 and out["max_abs_error"] >= 0
    (inp,) = d["inputs"]
    assert inp["shape"] == [1, 64] and inp["source_shape"] == ["batch", 64]
    assert any("fixed input x" in step for step in d["cleanup"])
    assert package.check_files() == []


def test_integer_and_bool_outputs_are_exact(compiled_small):
    package = compiled_small("int-bool")
    tol = {o.name: o.tolerance for o in package.manifest.outputs}
    assert tol["label"].atol == 0 and tol["positive"].atol == 0
    assert tol["scaled"].atol > 0
    dtypes = {o.name: o.dtype for o in package.manifest.outputs}
    assert dtypes == {"label": "int64", "positive": "bool", "scaled": "float32"}


def test_tolerance_rejects_a_perturbed_result(compiled_small):
    """The calibrated tolerance is tight enough to catch a small tampering."""
    package = compiled_small("cnn")
    ort = ORTRunner.for_package(package, threads=2)
    x = fresh_inputs(package, 7)
    ref = ort.run(x)
    tampered = {k: v + np.float32(1e-3) * np.abs(v).max() for k, v in ref.items()}
    assert not within_tolerance(tampered, ref, package.manifest.outputs).agree


def test_runner_rejects_bad_inputs(compiled_small):
    from hyperinfer.errors import InvalidArgument

    package = compiled_small("two-inputs")
    run = TVMRunner.for_package(package, "cpu-x86_64", threads=2)
    good = fresh_inputs(package, 0)
    with pytest.raises(InvalidArgument, match="missing input 'b'"):
        run.run({"a": good["a"]})
    with pytest.raises(InvalidArgument, match="unknown input 'c'"):
        run.run({**good, "c": good["a"]})
    with pytest.raises(InvalidArgument, match="input 'a': dtype float64"):
        run.run({**good, "a": good["a"].astype(np.float64)})
    with pytest.raises(InvalidArgument, match=r"input 'b': shape \[2, 15\]"):
        run.run({**good, "b": good["b"][:, :15]})

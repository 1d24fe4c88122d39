"""Compatibility: public architectures compile for the native CPU and match ONNX Runtime.

Each network of hyperinfer/zoo_arch.py (reduced depth, width and input size so
the file stays fast; the operators and graph structure are those of the
published exports) goes through ``compile_model`` for the native target; the
artifact's outputs on a fresh random input must match ONNX Runtime within the
model's tolerance, calibrated once from the measured error (relative to the
output's scale). What TVM cannot import is a tested one-line error.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperinfer import zoo_arch
from support import assert_one_line_error, run_cli

# max |TVM - ORT| / max(1, max |ORT|): measured errors were 1e-8..1e-6; the bound leaves
# room for other ISAs' summation order, not for a wrong kernel
TOLERANCE = {
    "resnet50": 1e-4,
    "resnet18": 1e-4,
    "resnet50-caffe2": 1e-4,
    "mobilenetv2": 1e-4,
    "densenet121": 1e-4,
    "inception": 1e-4,
    "squeezenet": 1e-4,
    "transformer": 1e-4,
    "detector": 1e-4,
}
UNSUPPORTED = {"lstm": ("LSTM node", "unrolled")}


def test_every_architecture_is_covered():
    assert set(TOLERANCE) | set(UNSUPPORTED) == set(zoo_arch.ARCHS)


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_compiles_and_matches_onnxruntime(name, tmp_path):
    from hyperinfer.compile import compile_model, targets
    from hyperinfer.compile.cleanup import random_inputs
    from hyperinfer.runtime import ORTRunner, TVMRunner

    src = zoo_arch.save(name, tmp_path / f"{name}.onnx", reduced=True)
    target = targets.resolve(["native"])[0]
    package = compile_model(src, name.replace("-", "_"), out_dir=tmp_path / "repo", targets=[target.id],
                            progress=False, samples=1, threads=2)
    m = package.manifest
    ort = ORTRunner.for_package(package, threads=2)
    tvm = TVMRunner.for_package(package, target.id, threads=2)
    x = random_inputs(m.inputs, np.random.default_rng(7))
    want, got = ort.run(x), tvm.run(x)
    assert set(got) == {o.name for o in m.outputs}
    for out in m.outputs:
        a, b = np.asarray(want[out.name], np.float64), np.asarray(got[out.name], np.float64)
        assert a.shape == b.shape == tuple(out.shape)
        assert np.isfinite(a).all() and float(np.abs(a).max()) > 0  # the reference is not degenerate
        rel = float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
        assert rel <= TOLERANCE[name], f"{out.name}: relative error {rel:.2e}"


def test_caffe2_zoo_model_cleanup_steps(tmp_path):
    """IR 3 / opset 9 with every initializer a graph input: one real input after clean-up."""
    from hyperinfer.compile import cleanup

    clean = cleanup.clean(zoo_arch.build("resnet50-caffe2", reduced=True), {}, threads=2)
    assert [i.name for i in clean.inputs] == ["gpu_0/data_0"]
    steps = " | ".join(clean.steps)
    assert "initializers listed as graph inputs made constants" in steps
    assert "1 unused initializers dropped" in steps
    assert "opset 9 -> 13" in steps and "IR version 3 -> " in steps


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_architecture_is_one_clear_error(name, tmp_path):
    src = zoo_arch.save(name, tmp_path / f"{name}.onnx", reduced=True)
    proc = run_cli("compile", str(src), "--name", "m", "--out", str(tmp_path / "repo"), "--target", "native")
    assert_one_line_error(proc, "import into TVM Relax", *UNSUPPORTED[name])
    assert "internal error" not in proc.stderr


def test_token_ids_outside_the_vocabulary_stay_in_bounds(tmp_path):
    """Negative token ids mean what ONNX says (-1: the last row, as ONNX Runtime computes), and an
    id past the vocabulary reads inside the embedding (TVM's default ``take`` would read outside)."""
    import onnx

    from hyperinfer.compile import build, cleanup, importer, targets
    from hyperinfer.runtime import ORTRunner, TVMRunner

    m = zoo_arch.build("transformer", seq=8, vocab=50, hidden=16, heads=2, layers=1)
    clean = cleanup.clean(m, {}, threads=2)
    mod = importer.import_onnx(clean.model)
    assert 'mode="fast"' not in mod["main"].script() and "wrap" in mod["main"].script()
    target = targets.resolve(["native"])[0]
    build.build_artifact(mod, target, tmp_path / "t.so")
    onnx.save(clean.model, str(tmp_path / "t.onnx"))
    tvm = TVMRunner(tmp_path / "t.so", clean.inputs, clean.outputs, threads=2)
    ort = ORTRunner(tmp_path / "t.onnx", clean.inputs, [o.name for o in clean.outputs], threads=2)
    neg = {"input_ids": np.array([[-1, -50, 0, 1, 2, 3, 4, 49]], np.int64)}
    np.testing.assert_allclose(tvm.run(neg)["last_hidden_state"], ort.run(neg)["last_hidden_state"],
                               rtol=1e-4, atol=1e-4)
    past = {"input_ids": np.array([[50, 51, 0, 1, 2, 3, 4, 10**9]], np.int64)}
    wrapped = {"input_ids": np.array([[0, 1, 0, 1, 2, 3, 4, 10**9 % 50]], np.int64)}
    np.testing.assert_array_equal(tvm.run(past)["last_hidden_state"], tvm.run(wrapped)["last_hidden_state"])

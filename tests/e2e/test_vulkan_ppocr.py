"""PP-OCR compiled for vulkan (TVM's WGSL kernels run by wgpu-native; lavapipe here) matches
ONNX Runtime within the calibrated tolerance on rendered text pages and on noise.

ppocr-cls always runs (slow marker); rec and det take minutes on lavapipe (a CPU emulation of a
GPU: det is ~250x ONNX Runtime's latency there), so they run only with HYPERINFER_LONG=1 (as
scripts/check_vulkan_pool.sh does for the pool).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hyperinfer import zoo
from hyperinfer.compile import compile_model
from hyperinfer.compile.reference import default_inputs
from hyperinfer.runtime import ORTRunner
from hyperinfer.runtime.runners import runner_for_package
from hyperinfer.verify.agreement import within_tolerance

pytestmark = pytest.mark.slow
LONG = os.environ.get("HYPERINFER_LONG", "") == "1"


@pytest.mark.parametrize("name", [
    "ppocr-cls",
    pytest.param("ppocr-rec", marks=pytest.mark.skipif(not LONG, reason="minutes on lavapipe: HYPERINFER_LONG=1")),
    pytest.param("ppocr-det", marks=pytest.mark.skipif(not LONG, reason="minutes on lavapipe: HYPERINFER_LONG=1")),
])
def test_ppocr_vulkan_matches_onnxruntime(name, ppocr_paths, tmp_path):
    from hyperinfer.runtime import webgpu

    if not webgpu.adapters():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: no WebGPU adapter: {webgpu.why_not()}")
        pytest.skip(webgpu.why_not())
    package = compile_model(ppocr_paths[name], name, out_dir=tmp_path, targets=["vulkan"],
                            input_shapes={"x": zoo.PPOCR[name].input_shape}, progress=False, samples=1, threads=2)
    m = package.manifest
    assert m.artifacts["vulkan"].calibrated and m.artifacts["vulkan"].file.endswith(".zip")
    runner, ort = runner_for_package(package, "vulkan"), ORTRunner.for_package(package, threads=2)
    samples, _ = default_inputs(m.inputs, 1, seed=99)  # another rendered text page than calibration's
    rng = np.random.default_rng(5)
    samples.append({s.name: (rng.standard_normal(s.shape) * 0.5).astype(s.dtype) for s in m.inputs})
    for x in samples:
        got, want = runner.run(x), ort.run(x)
        res = within_tolerance(got, want, m.outputs)
        assert res.agree, res.reason

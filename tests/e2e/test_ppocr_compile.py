"""The three real PP-OCR models compile for CPU, CUDA and ROCm; the CPU artifact
matches ONNX Runtime within the calibrated tolerance on fresh inputs."""

from __future__ import annotations

import numpy as np
import pytest

from hyperinfer import zoo
from hyperinfer.compile import compile_model
from hyperinfer.compile.reference import default_inputs
from hyperinfer.runtime import ORTRunner, TVMRunner
from hyperinfer.verify.agreement import within_tolerance

pytestmark = pytest.mark.slow
TARGETS = ["cpu-x86_64", "cuda-sm90", "rocm-gfx942"]


@pytest.fixture(scope="module")
def ppocr_repo(tmp_path_factory, ppocr_paths):
    repo = tmp_path_factory.mktemp("ppocr")
    return repo


@pytest.mark.parametrize("name", ["ppocr-cls", "ppocr-rec", "ppocr-det"])
def test_ppocr_compiles_and_matches_onnxruntime(name, ppocr_paths, ppocr_repo):
    model = zoo.PPOCR[name]
    package = compile_model(ppocr_paths[name], name, out_dir=ppocr_repo, targets=TARGETS,
                            input_shapes={"x": model.input_shape}, progress=False, samples=2)
    m = package.manifest
    assert set(m.artifacts) == set(TARGETS)
    assert m.artifacts["cuda-sm90"].size > 0 and m.artifacts["rocm-gfx942"].size > 0
    assert not [w for w in m.warnings if "near-constant" in w], m.warnings
    ort = ORTRunner.for_package(package, threads=2)
    cpu = TVMRunner.for_package(package, "cpu-x86_64", threads=2)
    # fresh inputs: other rendered pages than calibration, and plain noise
    samples, _ = default_inputs(m.inputs, 2, seed=99)
    rng = np.random.default_rng(5)
    samples.append({s.name: (rng.standard_normal(s.shape) * 0.5).astype(s.dtype) for s in m.inputs})
    for x in samples:
        res = within_tolerance(cpu.run(x), ort.run(x), m.outputs)
        assert res.agree, res.reason

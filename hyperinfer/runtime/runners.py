"""One place that picks the runner for an artifact by its target's kind.

CPU/CUDA/ROCm artifacts are TVM shared libraries (tvm_runner); a ``vulkan``
artifact is a zip of WGSL kernels and their plan (wgsl_runner over wgpu).
"""

from __future__ import annotations

import os
from typing import Sequence

from hyperinfer.package import BatchInfo, ModelPackage, TensorSpec


def kind_of(target_id: str) -> str:
    return target_id.split("-", 1)[0]


def make_runner(path: str | os.PathLike, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                target_id: str, threads: int | None = None, batch: BatchInfo | None = None):
    if kind_of(target_id) == "vulkan":
        from hyperinfer.runtime.wgsl_runner import WGSLRunner

        return WGSLRunner(path, inputs, outputs, threads, batch)
    from hyperinfer.runtime.tvm_runner import TVMRunner

    return TVMRunner(path, inputs, outputs, kind_of(target_id), threads, batch)


def runner_for_package(package: ModelPackage, target_id: str, threads: int | None = None):
    path = package.artifact_path(target_id, check=True)
    m = package.manifest
    return make_runner(path, m.inputs, m.outputs, target_id, threads, m.batch)


def runs_here(target_id: str) -> tuple[bool, str]:
    """(whether this machine can run artifacts of ``target_id``, why not)."""
    from hyperinfer.compile import targets

    if kind_of(target_id) == "vulkan":
        from hyperinfer.runtime import webgpu

        found = webgpu.adapters()
        return (True, "") if found else (False, webgpu.why_not())
    if target_id in targets.runnable_cpu_targets():
        return True, ""
    return False, ""

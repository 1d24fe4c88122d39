"""Build the ``vulkan`` artifact: TVM's WebGPU (WGSL) kernels plus the plan that runs them.

The Relax pipeline and GPU schedules are the same as for CUDA/ROCm (dlight,
per function with fall-through); the TVM target is ``webgpu`` with an LLVM
host. One compile gives everything the artifact needs:

- the WGSL of every kernel and its launch ABI (``inspect_source("wgsl")`` and
  ``("func_info")`` of the webgpu module imported under the host module);
- the Relax ``main`` after memory planning (captured from the pipeline);
- the TIR host functions right after ``SplitHostDevice`` (captured with a pass
  instrument), which say which buffers, POD values and grid each launch gets.

The artifact is one zip: ``plan.json``, ``kernels/<name>.wgsl``,
``constants.npz``. It carries no native code; wgpu-native (runtime/
wgsl_runner.py) compiles the WGSL for whatever GPU the node has (Vulkan, also
Metal and D3D12), and lavapipe runs it on a CPU.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile
from pathlib import Path

import numpy as np

from hyperinfer.compile.targets import TargetInfo
from hyperinfer.compile.wgsl_plan import PlanError, build_plan, split_wgsl
from hyperinfer.errors import FailedPrecondition

log = logging.getLogger("hyperinfer.compile")

# WebGPU's guaranteed minimum; adapters may allow more (lavapipe: 32)
DEFAULT_STORAGE_BUFFERS_PER_STAGE = 8
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed: the same build gives the same bytes


def _explain(model: str, text: str) -> str:
    """One sentence for a TVM WebGPU codegen failure, naming the WGSL limit that bit."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    low = text.lower()
    kernel = re.search(r"def (\w+_kernel)\(", text) or re.search(r"\b(\w+_kernel)\b", text)
    hint = ""
    if "int64" in low or "i64" in low:
        hint = "WGSL has no 64-bit integers (int64 tensors or indices)"
    elif "float64" in low or "f64" in low:
        hint = "WGSL has no 64-bit floats"
    elif "shared" in low and "memory" in low:
        hint = "a kernel needs more workgroup memory than WebGPU allows"
    elif "blockidx.z" in low:
        hint = "TVM's WebGPU ABI reserves blockIdx.z"
    elif "f16" in low:
        hint = "a float16 kernel needs the WGSL f16 extension"
    msg = f"building vulkan for {model} failed"
    if hint:
        msg += f": {hint}"
    msg += f" ({last[:300]})"
    if kernel:
        msg += f" in kernel {kernel.group(1)}"
    return msg


def build_wgsl_artifact(mod, target: TargetInfo, out_path: Path, model: str = "model"):
    """Compile ``mod`` for the WebGPU target and write the zip artifact; returns a BuildResult."""
    import tvm

    from hyperinfer.compile import build as b

    tvm_target = target.tvm_target()
    start = time.perf_counter()
    report = b.GpuScheduleReport()
    inner = b._pipeline(target, tvm_target, [b.robust_gpu_schedule(report)])
    captured: dict = {}

    @tvm.transform.module_pass(opt_level=0, name="HyperinferCaptureRelax")
    def relax_pipeline(m, ctx):
        out = inner(m)
        captured["relax"] = out
        return out

    @tvm.instrument.pass_instrument
    class CaptureSplit:
        def run_after_pass(self, m, info):
            if info.name.endswith("SplitHostDevice"):
                captured["split"] = m

    try:
        with tvm.transform.PassContext(opt_level=3, instruments=[CaptureSplit()]):
            ex = tvm.compile(mod, target=tvm_target, relax_pipeline=relax_pipeline)
    except FailedPrecondition:
        raise
    except Exception as e:  # TVM's codegen checks (int64, f64, limits) raise with C++ traces
        raise FailedPrecondition(_explain(model, str(e))) from None
    if "relax" not in captured or "split" not in captured:
        raise FailedPrecondition(f"building vulkan for {model}: the TVM build did not go through the expected "
                                 "pipeline stages (Relax main, SplitHostDevice)")
    sources, func_info = "", {}

    def walk(m):
        nonlocal sources, func_info
        if m.kind == "webgpu":
            sources += m.inspect_source("wgsl")
            func_info.update(json.loads(m.inspect_source("func_info") or "{}"))
        for sub in m.imports:
            walk(sub)

    walk(ex.mod)
    wgsl = split_wgsl(sources)
    try:
        plan = build_plan(model, captured["relax"]["main"], captured["split"], func_info, wgsl)
    except PlanError:
        raise
    if not plan.launches:
        raise FailedPrecondition(f"building vulkan for {model}: the model launches no kernel")
    notes = []
    if report.failures:
        notes.append(f"{len(report.failures)} GPU rule fallbacks")
        for f in report.failures:
            log.info("vulkan: %s", f)
    notes.append("GPU rules: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_rule.items())))
    wide = {k: v["storage_buffers"] for k, v in plan.kernels.items()
            if v["storage_buffers"] > DEFAULT_STORAGE_BUFFERS_PER_STAGE}
    if wide:  # fused elementwise tails bind many weights; desktop Vulkan drivers allow far more than 8
        for k, n in sorted(wide.items()):
            log.info("vulkan: %s: kernel %s binds %d storage buffers", model, k, n)
        notes.append(f"{len(wide)} kernels bind up to {max(wide.values())} storage buffers (WebGPU guarantees "
                     f"{DEFAULT_STORAGE_BUFFERS_PER_STAGE}; they run on adapters that allow more, a node "
                     "whose adapter does not says so at load)")
    write_artifact(out_path, plan, {k: wgsl[k] for k in plan.kernels})
    notes.insert(0, f"{len(plan.kernels)} WGSL kernels, {len(plan.launches)} launches, "
                    f"{len(plan.buffers)} buffers")
    return b.BuildResult(target, out_path, time.perf_counter() - start, False, notes, len(plan.kernels))


def write_artifact(out_path: Path, plan, kernels: dict[str, str]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    consts = io.BytesIO()
    np.savez(consts, **plan.constant_data)

    def add(z: zipfile.ZipFile, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, _ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)

    with zipfile.ZipFile(out_path, "w") as z:
        add(z, "plan.json", plan.dumps())
        for name in sorted(kernels):
            add(z, f"kernels/{name}.wgsl", kernels[name].encode())
        add(z, "constants.npz", consts.getvalue())

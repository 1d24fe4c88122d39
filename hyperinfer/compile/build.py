"""Build one TVM artifact (a Relax VM executable in a shared library) per target.

The pipeline is TVM's own per-backend pipeline (library dispatch, legalize,
fuse, lower, finalize) with the scheduling step replaced:

- CPU: hyperinfer's rule-based schedules (compile/schedules/cpu.py), applied
  per function, optionally replaced by tuned MetaSchedule records.
- GPU (CUDA, ROCm): TVM's default GPU rules (dlight), tried per function in
  order; a rule that throws on one function falls through to the next rule for
  that function only, so one unusual fused kernel never fails the whole build.
  Afterwards every kernel is checked to be bound to GPU threads.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperinfer.compile import importer, passes, toolchain
from hyperinfer.compile.targets import TargetInfo
from hyperinfer.errors import FailedPrecondition

log = logging.getLogger("hyperinfer.compile")


@dataclass
class BuildResult:
    target: TargetInfo
    path: Path
    seconds: float
    tuned: bool = False
    notes: list[str] = field(default_factory=list)
    kernels: int = 0


def import_onnx(model):
    """ONNX (cleaned, static shapes) -> Relax IRModule (see compile/importer.py)."""
    return importer.import_onnx(model)


def _backend(kind: str):
    from tvm.relax import backend

    if kind == "cuda":
        from tvm.relax.backend.cuda import pipeline
    elif kind == "rocm":
        from tvm.relax.backend.rocm import pipeline
    elif kind == "vulkan":
        from tvm.relax.backend.gpu_generic import pipeline
    else:
        from tvm.relax.backend.cpu_generic import pipeline
    return backend, pipeline


class GpuScheduleReport:
    def __init__(self):
        self.by_rule: dict[str, int] = {}
        self.failures: list[str] = []


def robust_gpu_schedule(report: GpuScheduleReport):
    """dlight's default GPU rules, per function, falling through on a rule that throws."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]

    @tvm.transform.module_pass(opt_level=0, name="HyperinferGpuSchedule")
    def apply(mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        updated = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", 0) == 1:
                continue
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except Exception as e:  # noqa: BLE001 - a rule that cannot handle this function
                    report.failures.append(f"{gv.name_hint}: {type(rule).__name__} failed ({str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__}), trying the next rule")
                    continue
                if space is None:
                    continue
                sch = space[0] if isinstance(space, list) else space
                updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                name = type(rule).__name__
                report.by_rule[name] = report.by_rule.get(name, 0) + 1
                break
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    return apply


def _pipeline(target: TargetInfo, tvm_target, schedule_passes, pre_passes=(), post_fusion=(), post_schedule=()):
    import tvm

    backend, pipeline = _backend(target.kind)

    @tvm.transform.module_pass(opt_level=0, name="HyperinferPipeline")
    def run(mod, _ctx):
        with tvm_target:
            seq = tvm.transform.Sequential(
                pipeline.library_dispatch_passes(tvm_target)
                + list(pre_passes)
                + passes.fusion_passes()
                + list(post_fusion)
                + schedule_passes
                + list(post_schedule)
                + pipeline.dataflow_lower_passes(tvm_target)
                + pipeline.finalize_passes(tvm_target)
            )
            return seq(mod)

    return run


_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\((\d+)\)\s*)?(\w+)\s*\(")


def cuda_kernel_threads(executable) -> dict[str, int]:
    """{kernel name: threads per block} from the generated CUDA source (0 = no launch bound)."""
    sources = []

    def walk(m):
        if m.kind == "cuda":
            sources.append(m.inspect_source("cuda"))
        for sub in m.imports:
            walk(sub)

    walk(executable.mod)
    threads: dict[str, int] = {}
    for src in sources:
        for n, name in _KERNEL_RE.findall(src):
            threads[name] = max(threads.get(name, 0), int(n) if n else 0)
    return threads


def build_artifact(mod, target: TargetInfo, out_path: Path, threads: int | None = None,
                   tuning_db: Path | None = None, model: str = "model", layout: str | None = None) -> BuildResult:
    """Compile ``mod`` for ``target`` and export the artifact to ``out_path``. ``layout``: the
    CPU activation layout (None: the one the tuning database chose, else the target's default)."""
    import tvm

    toolchain.prepare(target)
    if target.kind == "vulkan":  # WGSL kernels + plan, run by wgpu-native (no TVM runtime module)
        from hyperinfer.compile.wgsl_build import build_wgsl_artifact

        return build_wgsl_artifact(mod, target, out_path, model=model)
    tvm_target = target.tvm_target()
    start = time.perf_counter()
    notes: list[str] = []
    tuned = False
    pre_passes: list = []
    post_fusion: list = []
    post_schedule: list = []
    if target.kind in ("cuda", "rocm", "vulkan"):
        report = GpuScheduleReport()
        schedule = [robust_gpu_schedule(report)]
    else:
        from hyperinfer.compile.schedules import cpu as cpu_sched

        report = None
        if layout is None and tuning_db is not None:
            from hyperinfer.compile import tune

            layout = tune.layout_choice(tuning_db)
            tuned = tune.layout_changed(tuning_db)
        pre_passes = passes.cpu_pre_fusion_passes(target, layout)
        post_fusion = passes.cpu_post_fusion_passes()
        post_schedule = passes.cpu_post_schedule_passes()
        schedule = [cpu_sched.schedule_pass(target)]
        if tuning_db is not None:
            from hyperinfer.compile import tune

            knobs = tune.rule_knobs(tuning_db)
            if knobs:  # the rule knobs that won on the tuning machine, per function
                schedule = [cpu_sched.schedule_pass(target, knobs_for=lambda f: knobs.get(tune.function_key(f)))]
                tuned = True
            tuned_pass = tune.apply_database_pass(tuning_db, tvm_target)
            if tuned_pass is not None:
                schedule = [tuned_pass, *schedule]
                tuned = True
    def compile_with(pre):
        nonlocal tuned
        try:
            with tvm.transform.PassContext(opt_level=3):
                return tvm.compile(mod, target=tvm_target,
                                   relax_pipeline=_pipeline(target, tvm_target, schedule, pre, post_fusion,
                                                            post_schedule))
        except Exception as e:  # noqa: BLE001 - compile-time weight packing is an optimization: build without
            if not post_fusion:
                raise
            first = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1:] or [type(e).__name__]
            log.warning("%s: compile-time weight packing failed (%s); weights are repacked per call instead",
                        target.id, first[0][:200])
            notes.append("built without compile-time weight packing")
            tuned = False  # tuned records are keyed by the functions with their layout-free weights marked
            with tvm.transform.PassContext(opt_level=3):
                return tvm.compile(mod, target=tvm_target, relax_pipeline=_pipeline(target, tvm_target, schedule,
                                                                                     pre))

    try:
        try:
            ex = compile_with(pre_passes)
        except Exception as e:  # noqa: BLE001 - the channel-blocked layout is an optimization: NCHW
            if not pre_passes or (layout or passes.cpu_layout(target)) == "NCHW":
                raise
            first = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1:] or [type(e).__name__]
            log.warning("%s: the build in the channel-blocked layout failed (%s); building in NCHW",
                        target.id, first[0][:200])
            notes.append("built in NCHW (the channel-blocked layout failed)")
            tuned = False  # tuned records are keyed by the blocked layout's functions
            ex = compile_with(passes.cpu_pre_fusion_passes(target, layout="NCHW"))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        ex.export_library(str(out_path), **toolchain.export_kwargs(target))
    except FailedPrecondition:
        raise
    except Exception as e:  # TVM raises TVMError/InternalError/RuntimeError with long C++ traces
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else type(e).__name__
        raise FailedPrecondition(f"building {target.id} failed: {detail[:400]}") from None
    kernels = 0
    if report is not None:
        if report.failures:
            notes.append(f"{len(report.failures)} GPU rule fallbacks")
            for f in report.failures:
                log.info("%s: %s", target.id, f)
        notes.append("GPU rules: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_rule.items())))
    if target.kind == "cuda":
        threads_by_kernel = cuda_kernel_threads(ex)
        kernels = len(threads_by_kernel)
        if kernels == 0:
            raise FailedPrecondition(f"building {target.id}: no CUDA kernels found in the artifact")
        unbound = sorted(k for k, n in threads_by_kernel.items() if n == 0)
        if unbound:
            raise FailedPrecondition(
                f"building {target.id}: {len(unbound)} kernels are not bound to GPU threads: {', '.join(unbound[:5])}"
            )
        single = sorted(k for k, n in threads_by_kernel.items() if n == 1)
        notes.append(f"{kernels} CUDA kernels bound to GPU threads"
                     + (f" ({len(single)} with a single thread per block)" if single else ""))
    return BuildResult(target, out_path, time.perf_counter() - start, tuned, notes, kernels)

"""MetaSchedule tuning for CPU targets, kept per function only where it beats the default.

    report = tune(mod, target_info, db_dir, trials=512, minutes=30, threads=2, progress=print)
    build.build_artifact(mod, target_info, out, tuning_db=db_dir)   # applies what won

``db_dir`` (a package's ``tuning/<target-id>/``) holds:

- ``database_workload.json``, ``database_tuning_record.json``: MetaSchedule's JSON
  database. Tuning again loads it (the search starts from the best records
  found so far) and appends to it.
- ``choices.json``: per tuned function (structural hash), the measured latency
  of the default rule-based schedule, of the rules with the best knobs found and of
  the best MetaSchedule one, and which won (``default``, ``rules`` or ``tuned``).
  :func:`apply_database_pass` applies only the MetaSchedule schedules that won;
  :func:`rule_knobs` gives the build the knobs that won.

Before MetaSchedule, each function's rule-based schedule is tried with other values of
its knobs (:class:`~hyperinfer.compile.schedules.cpu.ScheduleKnobs`: register tile,
channel vectors, input chunk, L2 and L1-slice sizes), one knob at a time from the best
so far, each distinct schedule built alone and timed on this machine: a few dozen builds
per function where MetaSchedule needs hundreds of trials, and the search space is the
rules that are already fast here. ``trials=0`` runs only this search.

Ctrl-C during :func:`tune` stops the search after the batch being measured
and keeps every record already measured (the JSON database is written as
records arrive); the comparison with the default schedule still runs for
what was found. A second Ctrl-C stops at once. The time limit and Ctrl-C
take effect when a batch has been measured: MetaSchedule's first pass
(design spaces and a first search for every task) is not interruptible
that way and takes several minutes for a model with ~50 tasks.

Tasks are the fused PrimFuncs of the same pipeline the build uses (library
dispatch, CPU rewrites, legalize, fuse), so tuned records match the build's
functions exactly. ``tune(..., only=keys)`` tunes a subset: usually the
hottest functions by :func:`profile_functions` (each function's default
schedule built alone and timed; the fastest of several repeats, so other
processes on the machine do not reorder the ranking), see
``hyperinfer.compile.retune``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hyperinfer.compile.targets import TargetInfo
from hyperinfer.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("hyperinfer.compile")

CHOICES = "choices.json"
# a tuned schedule replaces the default only if it measured this much faster: smaller
# differences are within what load from other processes does to a measurement here, and
# taking them made tuned builds end-to-end a few percent slower than the default
TUNED_MARGIN = 0.05
# rule knobs other than the defaults are kept if they measured this much faster (the winner is
# re-timed against the default, alternating, before it counts)
RULES_MARGIN = 0.03
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


@dataclass
class TaskResult:
    name: str
    key: str  # structural hash of the function (the choice key)
    weight: int  # how many times the model calls it
    trials: int = 0
    best_tuned_us: float | None = None  # best measured by the tuner
    default_us: float | None = None  # re-measured side by side at the end
    tuned_us: float | None = None
    rules_us: float | None = None  # the rules with ``knobs``
    knobs: dict = field(default_factory=dict)  # rule knobs that differ from the defaults (the best found)
    variants: int = 0  # distinct rule schedules measured
    choice: str = "default"  # "default", "rules" (the knobs) or "tuned" (MetaSchedule's)


@dataclass
class TuneReport:
    target: str
    db_dir: Path
    tasks: list[TaskResult] = field(default_factory=list)
    trials: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by_time: bool = False

    @property
    def tuned_functions(self) -> int:
        """Functions whose build differs from the default: MetaSchedule's schedule or other rule knobs."""
        return sum(1 for t in self.tasks if t.choice != "default")

    def estimated_speedup(self) -> float | None:
        """Sum of default latencies / sum of chosen latencies, weighted by calls."""
        d = c = 0.0
        for t in self.tasks:
            if t.default_us is None:
                continue
            d += t.weight * t.default_us
            chosen = {"tuned": t.tuned_us, "rules": t.rules_us}.get(t.choice)
            c += t.weight * (chosen if chosen is not None else t.default_us)
        return d / c if c else None


@dataclass
class FunctionProfile:
    """One fused function's default-schedule latency (see :func:`profile_functions`)."""

    name: str
    key: str
    weight: int
    us: float

    @property
    def total_us(self) -> float:
        return self.us * self.weight


@dataclass
class Progress:
    """What the progress callback receives after every measured batch."""

    phase: str  # "extract", "rules", "tune", "compare", "done"
    tasks: int
    task: str = ""
    trials: int = 0  # measured so far in this run
    max_trials: int = 0
    best_us: dict[str, float] = field(default_factory=dict)  # per task, best tuned latency so far
    elapsed: float = 0.0
    message: str = ""


# ---------------------------------------------------------------- tasks

def fused_module(mod, target: TargetInfo, layout: str | None = None):
    """The Relax module after the build's pre-scheduling passes (the functions the CPU schedule
    sees); ``layout``: the activation layout (None: the target's default, see passes.cpu_layout)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    from hyperinfer.compile import passes

    tvm_target = target.tvm_target()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        seq = tvm.transform.Sequential(
            pipeline.library_dispatch_passes(tvm_target) + passes.cpu_pre_fusion_passes(target, layout) + passes.fusion_passes()
            + passes.cpu_post_fusion_passes()
        )
        return seq(mod)


def tuning_target(target: TargetInfo, threads: int):
    """The build target with ``num-cores`` (MetaSchedule needs it); records match the build target's kind/keys."""
    import tvm

    spec = dict(target.spec)
    spec["num-cores"] = int(threads)
    return tvm.target.Target(spec, host=target.host) if target.host is not None else tvm.target.Target(spec)


def _task_mod(func):
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def function_key(func) -> str:
    """Key of a PrimFunc in choices.json: structural hash of its task module."""
    try:
        from tvm_ffi.structural import structural_hash
    except ImportError:  # TVM < 0.27
        from tvm.ir import structural_hash

    return f"{structural_hash(_task_mod(func)) & 0xFFFFFFFFFFFFFFFF:016x}"


def extract_tasks(mod, target: TargetInfo, layout: str | None = None) -> list[tuple[str, object, int]]:
    """[(name, PrimFunc, weight)] of the unscheduled fused functions, deduplicated."""
    from tvm import relax, tirx

    fused = fused_module(mod, target, layout)
    calls: dict[str, int] = {}

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir":
            gv = e.args[0]
            calls[gv.name_hint] = calls.get(gv.name_hint, 0) + 1

    for _, f in fused.functions_items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    tasks: dict[str, tuple[str, object, int]] = {}
    for gv, f in fused.functions_items():
        if not isinstance(f, tirx.PrimFunc) or f.attrs.get("tirx.is_scheduled", 0) == 1:
            continue
        key = function_key(f)
        w = calls.get(gv.name_hint, 1)
        if key in tasks:
            n, f0, w0 = tasks[key]
            tasks[key] = (n, f0, w0 + w)
        else:
            tasks[key] = (gv.name_hint, f, w)
    return list(tasks.values())


# ---------------------------------------------------------------- measuring

def _random_args(func):
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        shape = [int(d) for d in p.shape]
        dtype = str(p.dtype)
        if dtype.startswith("float"):
            a = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            a = rng.integers(0, 2, shape).astype(bool)
        else:
            a = rng.integers(0, 4, shape).astype(dtype)
        args.append(tvm.runtime.tensor(np.asarray(a)))
    return args


def compile_function(func, tvm_target):
    """One scheduled PrimFunc built alone: (runtime module, the IRModule built). Constant weights
    are repacked at compile time in the build, so the function is built on weights already in
    its layout (as MetaSchedule's candidates are), without the repack."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    task = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(_task_mod(func))
    lib = tvm.compile(task, target=tvm_target)
    return (lib.mod if hasattr(lib, "mod") else lib), task


def measure_function(func, tvm_target, repeat: int = 5, min_repeat_ms: int = 40, best: bool = False) -> float:
    """Median latency in microseconds of one scheduled PrimFunc (built alone); with ``best``, the
    fastest repeat (robust to other processes on the machine: a parallel loop whose thread is
    descheduled waits milliseconds at its barrier, which a median over few repeats keeps)."""
    import statistics

    import tvm

    mod, task = compile_function(func, tvm_target)
    args = _random_args(task["main"])
    ev = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    res = ev(*args).results
    return (min(res) if best else statistics.median(res)) * 1e6


# ---------------------------------------------------------------- tuning

def build_candidate(mod, target, _params=None):
    """MetaSchedule's default build without importing ``tvm.s_tir.tensor_intrin``.

    The default build imports every tensor intrinsic first (about 27 s on this
    machine), and the LocalBuilder starts fresh worker processes for every
    batch, so every batch would pay it and time out. CPU float32 candidates
    here use no tensor intrinsics.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _database(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(db_dir / WORKLOADS), str(db_dir / RECORDS), module_equality="structural")


def load_choices(db_dir: Path) -> dict[str, dict]:
    p = Path(db_dir) / CHOICES
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return dict(data.get("functions", {}))


def layout_changed(db_dir: Path | None) -> bool:
    """Whether the tuning run kept another activation layout than the untuned build's (then a
    build with this database differs from the default build even if no function's schedule does)."""
    layout = layout_choice(db_dir)
    if layout is None:
        return False
    try:
        default = json.loads((Path(db_dir) / CHOICES).read_text()).get("layout_default")
    except (OSError, ValueError, AttributeError):
        return False
    return default is not None and default != layout


def layout_choice(db_dir: Path | None) -> str | None:
    """The activation layout a tuning run chose (``choices.json``), or None (the target's default)."""
    from hyperinfer.compile.schedules.blocked import LAYOUTS

    if db_dir is None:
        return None
    p = Path(db_dir) / CHOICES
    try:
        layout = json.loads(p.read_text()).get("layout") if p.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return layout if layout in LAYOUTS else None


def rule_knobs(db_dir: Path | None) -> dict:
    """{function key: ScheduleKnobs} for the functions whose rule knobs won (for the build)."""
    from hyperinfer.compile.schedules.cpu import ScheduleKnobs

    if db_dir is None:
        return {}
    out = {}
    for key, v in load_choices(Path(db_dir)).items():
        if v.get("choice") == "rules" and isinstance(v.get("knobs"), dict):
            try:
                out[key] = ScheduleKnobs.from_changed(v["knobs"])
            except (TypeError, ValueError):
                continue  # a damaged record: the defaults
    return out


def search_knobs(func, target_info: TargetInfo, tvm_target, threads: int, rounds: int = 2,
                 on_variant: Callable[[int, float], None] | None = None) -> tuple[dict, float, float, int]:
    """Coordinate search over the rule knobs of one function: from the defaults, each knob's other
    values in turn (the rest at the best so far), every distinct schedule built alone and timed
    (fastest of 9); ``rounds`` passes over the knobs. The winner is re-timed against the
    default three times, alternating, and kept only if it is ``RULES_MARGIN`` faster.
    Returns ``(changed knobs, default us, best us, distinct schedules measured)``."""
    from dataclasses import replace

    from hyperinfer.compile.schedules import cpu as cpu_sched

    def sched(k):
        return cpu_sched.schedule_function(func, target_info, threads, knobs=k)

    def timed(f):
        return measure_function(f, tvm_target, repeat=9, min_repeat_ms=5, best=True)

    base = cpu_sched.ScheduleKnobs()
    default_fn = sched(base)
    seen = {str(default_fn.script())}
    best, best_fn = base, default_fn
    default_us = best_us = timed(default_fn)
    n = 1
    for _ in range(rounds):
        improved = False
        for name, values in cpu_sched.KNOB_VALUES.items():
            for v in values:
                k = replace(best, **{name: v})
                fn = sched(k)
                text = str(fn.script())
                if text in seen:
                    continue  # this knob does not change this function's schedule
                seen.add(text)
                try:
                    us = timed(fn)
                except Exception as e:  # noqa: BLE001 - a variant that does not build is not a candidate
                    log.info("knobs %s: not measured (%s)", k.changed(), str(e).strip().splitlines()[-1:])
                    continue
                n += 1
                if on_variant is not None:
                    on_variant(n, us)
                if us < best_us * (1.0 - RULES_MARGIN / 2):
                    best, best_fn, best_us, improved = k, fn, us, True
        if not improved:
            break
    if best is base:
        return {}, default_us, default_us, n
    d, b = [default_us], [best_us]
    for _ in range(3):
        d.append(timed(default_fn))
        b.append(timed(best_fn))
    default_us, best_us = min(d), min(b)
    if best_us < default_us * (1.0 - RULES_MARGIN):
        return best.changed(), default_us, best_us, n
    return {}, default_us, default_us, n


def _write_choices(db_dir: Path, target: TargetInfo, results: list[TaskResult], layout: str | None = None,
                   layout_default: str | None = None) -> None:
    Path(db_dir).mkdir(parents=True, exist_ok=True)
    old = load_choices(db_dir)
    prev = layout_choice(db_dir)
    if layout is not None and prev is not None and layout != prev:
        old = {}  # records of functions extracted in another layout match nothing now
    for r in results:
        if r.default_us is None:
            continue
        old[r.key] = {"name": r.name, "default_us": r.default_us, "tuned_us": r.tuned_us, "choice": r.choice,
                      "weight": r.weight, "rules_us": r.rules_us, "knobs": r.knobs}
    tmp = Path(db_dir) / (CHOICES + ".tmp")
    doc = {"target": target.id, "functions": old}
    if layout is not None:
        doc["layout"] = layout
        if layout_default is not None:
            doc["layout_default"] = layout_default
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(Path(db_dir) / CHOICES)


def profile_functions(mod, target_info: TargetInfo, threads: int = 0,
                      progress: Callable[[str], None] | None = None, layout: str | None = None) -> list[FunctionProfile]:
    """Every fused function of ``mod`` with its default (rule-based) schedule, built alone and
    timed on random inputs; hottest first (latency x calls per inference)."""
    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.runtime.tvm_runner import configure_threads

    threads = configure_threads(threads or None)
    tvm_target = tuning_target(target_info, threads)
    out = []
    for name, func, weight in extract_tasks(mod, target_info, layout):
        try:
            us = measure_function(cpu_sched.schedule_function(func, target_info, threads), tvm_target,
                                  repeat=9, min_repeat_ms=2, best=True)
        except Exception as e:  # noqa: BLE001 - an unmeasurable function is not a tuning candidate
            log.info("%s: not profiled (%s)", name, str(e).strip().splitlines()[-1:])
            us = 0.0
        out.append(FunctionProfile(name, function_key(func), weight, us))
        if progress is not None:
            progress(f"profiled {name}: {us:.0f} us x {weight}")
    out.sort(key=lambda f: -f.total_us)
    return out


def hottest(profile: list[FunctionProfile], fraction: float = 0.8, max_functions: int = 12) -> list[FunctionProfile]:
    """The hottest functions that together take ``fraction`` of the profiled time (at most ``max_functions``)."""
    total = sum(f.total_us for f in profile)
    picked, acc = [], 0.0
    for f in profile:
        if len(picked) >= max_functions or (total and acc >= fraction * total) or f.total_us <= 0:
            break
        picked.append(f)
        acc += f.total_us
    return picked


# MetaSchedule's default evolutionary search samples and evolves 512 candidates per task
# before its first measurement: minutes per fused conv on 2 cores, so a 30-minute budget
# could pass without one measured candidate. A smaller population measures within a
# minute per task; the search still learns from every measured batch.
POPULATION = 128


def _search_strategy():
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(
        population_size=POPULATION, init_measured_ratio=0.2, init_min_unmeasured=16,
        genetic_num_iters=2, genetic_mutate_prob=0.85, genetic_max_fail_count=4, eps_greedy=0.05)


def tune(mod, target_info: TargetInfo, db_dir: Path, trials: int = 512, minutes: float | None = None,
         threads: int = 0, progress: Callable[[Progress], None] | None = None,
         only: set[str] | None = None, layout: str | None = None, layout_default: str | None = None) -> TuneReport:
    """Tune the CPU functions of ``mod`` into ``db_dir``: rule knobs, then MetaSchedule; see the
    module docstring.

    ``trials``: MetaSchedule's measured candidates in this run over all tasks (0: the rule knobs
    only); ``minutes``: stop the search
    after this wall time (the comparison with the default schedules runs after it);
    ``threads``: threads for the builder/runner and the measured kernels (0: all cores);
    ``progress``: called with a :class:`Progress` after every measured batch;
    ``only``: function keys (:func:`function_key`) to tune, e.g. the hottest ones from
    :func:`profile_functions` (None: every function); ``layout``: the activation layout the
    functions are extracted in (recorded in ``choices.json``; the build then uses it), and
    ``layout_default`` the one the build would use untuned (recorded too: see :func:`layout_changed`).
    """
    from tvm.s_tir import meta_schedule as ms

    try:
        from tvm.ir.utils import derived_object
    except ImportError:  # TVM < 0.27
        from tvm.meta_schedule.utils import derived_object

    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.runtime.tvm_runner import configure_threads

    if not target_info.is_cpu:
        raise InvalidArgument(f"tuning here covers CPU targets; {target_info.id} is tuned on a node that has it")
    if trials < 0:
        raise InvalidArgument(f"trials must be >= 0, got {trials}")
    db_dir = Path(db_dir)
    threads = configure_threads(threads or None)
    tvm_target = tuning_target(target_info, threads)
    start = time.perf_counter()
    report = TuneReport(target_info.id, db_dir)
    deadline = start + minutes * 60 if minutes else None
    emit = progress or (lambda _p: None)
    tasks = extract_tasks(mod, target_info, layout)
    if only is not None:
        tasks = [t for t in tasks if function_key(t[1]) in only]
    report.tasks = [TaskResult(n, function_key(f), w) for n, f, w in tasks]
    emit(Progress("extract", len(tasks), message=f"{len(tasks)} tasks"))
    if not tasks:
        return report
    # rule knobs first: minutes at most, and what MetaSchedule's result is compared with
    for i, (name, func, _w) in enumerate(tasks):
        r = report.tasks[i]
        emit(Progress("rules", len(tasks), name, elapsed=time.perf_counter() - start,
                      message=f"rule knobs of {name} ({i + 1}/{len(tasks)})"))
        try:
            r.knobs, r.default_us, r.rules_us, r.variants = search_knobs(func, target_info, tvm_target, threads)
        except KeyboardInterrupt:
            report.interrupted = True
            break
        except Exception as e:  # noqa: BLE001 - a function we cannot measure keeps its default schedule
            log.info("%s: rule knobs not searched (%s)", name, str(e).strip().splitlines()[-1:])
            continue
        if r.knobs:
            r.choice = "rules"
        emit(Progress("rules", len(tasks), name, elapsed=time.perf_counter() - start,
                      message=f"  {name}: {r.variants} rule variants, default {r.default_us:.0f} us"
                      + (f", best {r.rules_us:.0f} us with {r.knobs}" if r.knobs else ", default kept")))
        if deadline is not None and time.perf_counter() > deadline:
            report.stopped_by_time = trials == 0  # else MetaSchedule stops after its first batch
            break
    if trials == 0 or report.interrupted:
        _write_choices(db_dir, target_info, report.tasks, layout, layout_default)
        report.seconds = time.perf_counter() - start
        emit(Progress("done", len(tasks), elapsed=report.seconds,
                      message=f"{report.tuned_functions} of {len(tasks)} functions tuned"))
        return report
    database = _database(db_dir)
    by_name = {r.name: r for r in report.tasks}
    best: dict[str, float] = {}
    state = {"trials": 0, "stop": False, "interrupted": False}

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            name = tasks[task_id][0]
            for b in builder_results:
                if b.error_msg:
                    log.debug("%s: build failed: %s", name, b.error_msg.strip().splitlines()[-1:])
            for res in runner_results:
                if res.error_msg:
                    log.debug("%s: run failed: %s", name, res.error_msg.strip().splitlines()[-3:])
                secs = [float(s) for s in (res.run_secs or [])]
                if res.error_msg is None and secs:
                    us = sum(secs) / len(secs) * 1e6
                    if us < best.get(name, float("inf")):
                        best[name] = us
            state["trials"] += len(runner_results)
            by_name[name].trials += len(runner_results)
            timed_out = deadline is not None and time.perf_counter() > deadline
            if (timed_out or state["interrupted"]) and not state["stop"]:
                state["stop"] = True
                report.stopped_by_time = timed_out and not state["interrupted"]
                for i in range(len(tasks)):
                    try:
                        task_scheduler.terminate_task(i)
                    except Exception:  # noqa: BLE001 - already finished
                        pass
            emit(Progress("tune", len(tasks), name, state["trials"], trials, dict(best),
                          time.perf_counter() - start))

    contexts = []
    for i, (name, func, _w) in enumerate(tasks):
        contexts.append(ms.TuneContext(
            mod=_task_mod(func), target=tvm_target, space_generator="post-order-apply",
            search_strategy=_search_strategy(), task_name=name, rand_state=1 + i, num_threads=threads,
            logger=logging.getLogger("hyperinfer.tune"),
        ).clone())
    # MetaSchedule's gradient scheduler first visits every task once (sample, build, run a batch)
    # before the first results come back: small batches get every task measured within minutes
    per_iter = max(4, min(32, trials // max(1, len(tasks))))
    # Ctrl-C: a KeyboardInterrupt raised inside MetaSchedule's C++ loop aborts the process, so the
    # first Ctrl-C only sets a flag; the next measured batch ends every task and tune_tasks returns
    # normally with its records committed. A second Ctrl-C interrupts at once.
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def _on_sigint(_sig, _frame):
            if state["interrupted"]:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            state["interrupted"] = True
            log.warning("interrupt: stopping after the current batch (Ctrl-C again to stop now)")

        old_handler = signal.signal(signal.SIGINT, _on_sigint)
    try:
        ms.tune_tasks(
            tasks=contexts, task_weights=[float(w) for _n, _f, w in tasks], work_dir=str(db_dir),
            max_trials_global=trials, num_trials_per_iter=per_iter, database=database,
            builder=ms.builder.LocalBuilder(max_workers=threads, timeout_sec=120, f_build=build_candidate),
            runner=ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Progress()],
            cost_model=ms.cost_model.XGBModel(num_tuning_cores=threads),
            task_scheduler="gradient", module_equality="structural",
        )
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("tuning interrupted: keeping the %d records measured so far", state["trials"])
    except Exception as e:  # noqa: BLE001 - MetaSchedule raises TVMError with long traces
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        if not state["stop"]:
            raise FailedPrecondition(
                f"tuning {target_info.id} failed: {lines[-1][:300] if lines else type(e).__name__}") from None
        # after the time limit / Ctrl-C ended the tasks, MetaSchedule's scheduler may still try to
        # end a task itself and trip its own check ("!task->is_terminated"): the search is over
        # either way and every measured record is already in the database
        log.info("search stopped (%s)", lines[-1][:200] if lines else type(e).__name__)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    report.interrupted = report.interrupted or state["interrupted"]
    report.trials = state["trials"]
    # default vs tuned, side by side, per function; the faster one is recorded in choices.json
    database = _database(db_dir)  # re-read: everything committed so far
    for i, (name, func, _w) in enumerate(tasks):
        r = report.tasks[i]
        emit(Progress("compare", len(tasks), name, state["trials"], trials, dict(best), time.perf_counter() - start,
                      f"comparing {name} with the default schedule"))
        try:
            sch = database.query_schedule(_task_mod(func), tvm_target, workload_name="main")
        except Exception:  # noqa: BLE001
            sch = None
        try:
            default = cpu_sched.schedule_function(func, target_info, threads)
            r.default_us = measure_function(default, tvm_target, repeat=9, min_repeat_ms=10, best=True)
            if r.choice == "rules":  # the rule knobs' winner, re-timed beside the default
                ruled = cpu_sched.schedule_function(func, target_info, threads,
                                                    knobs=cpu_sched.ScheduleKnobs.from_changed(r.knobs))
                r.rules_us = measure_function(ruled, tvm_target, repeat=9, min_repeat_ms=10, best=True)
            if sch is not None:
                r.tuned_us = measure_function(sch.mod["main"], tvm_target, repeat=9, min_repeat_ms=10, best=True)
                r.best_tuned_us = best.get(name)
                chosen = r.rules_us if r.choice == "rules" and r.rules_us is not None else r.default_us
                if r.tuned_us < chosen * (1.0 - TUNED_MARGIN):
                    r.choice = "tuned"
        except KeyboardInterrupt:
            report.interrupted = True
            break
        except Exception as e:  # noqa: BLE001 - a function we cannot measure keeps the default schedule
            log.info("%s: not compared (%s); keeping the default schedule", name, str(e).strip().splitlines()[-1:] )
    _write_choices(db_dir, target_info, report.tasks, layout, layout_default)
    report.seconds = time.perf_counter() - start
    emit(Progress("done", len(tasks), trials=state["trials"], max_trials=trials, best_us=dict(best),
                  elapsed=report.seconds, message=f"{report.tuned_functions} of {len(tasks)} functions tuned"))
    return report


def has_records(db_dir: Path | None) -> bool:
    if db_dir is None:
        return False
    p = Path(db_dir) / RECORDS
    return p.is_file() and p.stat().st_size > 0


def has_tuning(db_dir: Path | None) -> bool:
    """Anything a build would use: MetaSchedule records, rule knobs that won, another layout."""
    return has_records(db_dir) or bool(rule_knobs(db_dir)) or layout_changed(db_dir)


def apply_database_pass(db_dir: Path, tvm_target, only_winners: bool = True):
    """Module pass applying the tuned schedules that beat the default ones; None if there are none.

    ApplyDatabase semantics (query the best record of each function's workload,
    replace the function with it, mark it scheduled), restricted to the
    functions whose choice in choices.json is "tuned". Everything else is left
    to the rule-based CPU schedule that runs after this pass.
    ``only_winners=False`` applies every tuned record (tests, comparisons).
    """
    db_dir = Path(db_dir)
    if not has_records(db_dir):
        return None
    choices = load_choices(db_dir)
    winners = {k for k, v in choices.items() if v.get("choice") == "tuned"}
    if only_winners and not winners:
        return None
    import tvm
    from tvm import tirx

    database = _database(db_dir)

    @tvm.transform.module_pass(opt_level=0, name="HyperinferApplyTuned")
    def apply(mod, _ctx):
        updated = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", 0) == 1:
                continue
            if only_winners and function_key(func) not in winners:
                continue
            try:
                sch = database.query_schedule(_task_mod(func), tvm_target, workload_name="main")
            except Exception:  # noqa: BLE001 - a stale record: keep the default schedule
                sch = None
            if sch is None:
                continue
            new = sch.mod["main"].without_attr("global_symbol")
            updated[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    return apply


def report_dict(report: TuneReport) -> dict:
    d = asdict(report)
    d["db_dir"] = str(report.db_dir)
    return d


__all__ = ["tune", "profile_functions", "hottest", "FunctionProfile", "apply_database_pass", "TuneReport", "TaskResult", "Progress", "extract_tasks",
           "load_choices", "has_records", "has_tuning", "function_key", "rule_knobs", "search_knobs"]

"""Re-tune one target of an existing model package, on the machine that has that hardware.

    result = tune_package("model-repository/ppocr-rec/1", "cpu-x86_64-avx2", trials=512, minutes=30)

Steps:

1. check the package and that the target is in it and can run here (measuring needs the hardware);
1b. on a CPU target with 16-lane vectors whose convs can take the channel-blocked layout
   (``schedules/blocked.py``): build the model in NCHW and blocked, time both whole, and keep
   the default unless the other is ``LAYOUT_MARGIN`` faster (the default blocks a graph only
   when every conv blocks; one that switches layouts can still win: Inception's 5x5 branch);
   the rest of the run works in the layout kept, which ``choices.json`` records;
2. profile the default build per fused function and pick the hottest ones (most of the
   time sits in a few functions; MetaSchedule's first pass over every task of a model is
   slow, so a time budget goes further on the functions that matter);
3. tune those with MetaSchedule into a copy of the package's ``tuning/<target>/``
   (records already there are the starting point), compare each with its default
   schedule and keep the faster one per function (``choices.json``);
4. rebuild the target's artifact from the package's ``model.onnx`` with the winners;
5. run the package's reference inputs through it: every output must be within the
   manifest's tolerances (the tolerances are a contract with other nodes and are not
   widened here; a tuned artifact outside them is rejected and the package stays as it was);
6. move the new artifact and tuning database into place and rewrite the manifest (artifact
   sha256, size, ``tuned``) with an atomic rename; sign it again when a key is given.
   Without a key, an existing ``manifest.sig`` no longer matches the manifest: it is
   removed and the result says so (re-sign with ``--sign-key``).

Readers of the package check every artifact's sha256 against the manifest, so a reader
racing the two renames (artifact, then manifest) gets a checksum error, never a wrong artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from hyperinfer import package as pkg
from hyperinfer.compile import targets
from hyperinfer.errors import FailedPrecondition, InvalidArgument, NotFound

DEFAULT_TRIALS = 256
LAYOUT_MARGIN = 0.03  # the non-default activation layout is kept only if this much faster
LAYOUT_ROUNDS = 9  # alternating rounds of that comparison (a noisy shared host: 5 were too few)
HOT_FRACTION = 0.85
MAX_FUNCTIONS = 12


@dataclass
class TunePackageResult:
    package: Path
    target: str
    tuned_functions: int = 0  # functions whose rule knobs or MetaSchedule schedule beat the default
    candidates: list[str] = field(default_factory=list)  # functions tuned this run (hottest first)
    profiled_us: float = 0.0  # sum over functions of default latency x calls (built alone)
    candidates_us: float = 0.0  # the part of it in the tuned candidates
    estimated_speedup: float | None = None  # over the tuned candidates, from the side-by-side comparison
    trials: int = 0
    tune_seconds: float = 0.0
    build_seconds: float = 0.0
    seconds: float = 0.0
    artifact_sha256: str = ""
    artifact_size: int = 0
    max_errors: dict[str, float] = field(default_factory=dict)  # per output, against the reference
    signed: bool = False
    signature_removed: bool = False
    stopped_by_time: bool = False
    interrupted: bool = False
    layout: str = ""  # the activation layout of the tuned build ("" : the target's default, not compared)
    layout_default: str = ""  # the untuned build's layout, when both were compared
    layout_ms: dict[str, float] = field(default_factory=dict)  # whole-model latency per layout compared
    warnings: list[str] = field(default_factory=list)


def _can_measure_here(t: targets.TargetInfo) -> str | None:
    """Why ``t`` cannot be measured on this machine (None: it can)."""
    if t.is_cpu:
        if t.id in targets.runnable_cpu_targets():
            return None
        need = ", ".join(t.requires) or t.arch
        return (f"target {t.id} cannot run on this machine ({targets.machine_arch()}; needs {need}): "
                "tune it on a machine that has that CPU")
    try:
        import tvm

        present = tvm.device(t.kind, 0).exist
    except Exception:  # noqa: BLE001 - no runtime for that device kind in this TVM build
        present = False
    if not present:
        return f"target {t.id} cannot run on this machine (no {t.kind} device): tune it on a node that has one"
    return (f"tuning {t.kind} targets is not supported yet (MetaSchedule tuning here covers CPU targets); "
            f"{t.id} keeps its default GPU schedules")


def _layout_candidates(mod, t: targets.TargetInfo) -> tuple[str, str] | None:
    """(default layout, the other) when ``t`` has a choice for ``mod``, else None."""
    import tvm

    from hyperinfer.compile import passes
    from hyperinfer.compile.schedules import blocked

    if not t.is_cpu or t.vector_lanes < blocked.BLOCK or os.environ.get("HYPERINFER_LAYOUT"):
        return None
    blocked_layout = blocked.LAYOUTS[1]

    def layouts(layout):
        with t.tvm_target(), tvm.transform.PassContext(opt_level=3):
            return blocked.conv_layouts(tvm.transform.Sequential(passes.cpu_pre_fusion_passes(t, layout))(mod))

    if all(lay == "NCHW" for lay in layouts(blocked_layout)):
        return None  # no conv blocks: nothing to compare
    default = "NCHW" if all(lay == "NCHW" for lay in layouts("auto")) else blocked_layout
    return default, ("NCHW" if default != "NCHW" else blocked_layout)


def pick_layout(default: str, other: str, default_ms: list[float], other_ms: list[float]) -> tuple[str, float]:
    """(the layout to keep, other / default): the median over rounds of each round's ratio; the
    other layout only when it is ``LAYOUT_MARGIN`` faster."""
    import statistics

    ratio = statistics.median(o / d for o, d in zip(other_ms, default_ms))
    return (other if ratio <= 1 - LAYOUT_MARGIN else default), ratio


def _choose_layout(mod, t: targets.TargetInfo, package, threads: int, work: Path, say, result) -> str | None:
    """Build ``mod`` in both activation layouts, time each whole on the package's first reference
    input (alternating blocks, ``LAYOUT_ROUNDS`` rounds of 5 runs after 2 warm-up runs) and return
    the layout to tune in."""
    import statistics

    from hyperinfer.compile import build
    from hyperinfer.runtime import TVMRunner

    pair = _layout_candidates(mod, t)
    if pair is None:
        return None
    m = package.manifest
    inputs, _ = package.load_reference()
    runners = {}
    for layout in pair:
        say(f"building {t.id} in the {layout} layout to compare")
        so = work / f"layout-{layout}.so"
        build.build_artifact(mod, t, so, threads=threads, layout=layout)
        runners[layout] = TVMRunner(so, m.inputs, m.outputs, device="cpu", threads=threads)
    rounds: dict[str, list[float]] = {k: [] for k in pair}
    for r in range(LAYOUT_ROUNDS):
        for layout in (pair if r % 2 == 0 else pair[::-1]):  # neither always runs first
            runner = runners[layout]
            for _ in range(2):
                runner.run(inputs[0])
            ts = []
            for _ in range(5):
                start = time.perf_counter()
                runner.run(inputs[0])
                ts.append((time.perf_counter() - start) * 1e3)
            rounds[layout].append(statistics.median(ts))
    default, other = pair
    result.layout_default = default
    result.layout_ms = {k: round(statistics.median(v), 3) for k, v in rounds.items()}
    chosen, ratio = pick_layout(default, other, rounds[default], rounds[other])
    say(f"layout: {default} {result.layout_ms[default]:.2f} ms, {other} {result.layout_ms[other]:.2f} ms "
        f"(x{ratio:.3f}) -> {chosen}")
    return chosen


def _keep_records(db: Path, previous: Path) -> None:
    """A failed run keeps what it measured: the extended database replaces ``tuning/<target>/``
    (which the manifest does not cover; the next run starts from it)."""
    from hyperinfer.compile import tune as tuner

    if not tuner.has_tuning(db):
        return
    try:
        previous.parent.mkdir(exist_ok=True)
        if previous.exists():
            shutil.rmtree(previous)
        shutil.copytree(db, previous)
    except OSError:
        pass


def tune_package(
    package_dir: str | os.PathLike,
    target: str,
    trials: int = DEFAULT_TRIALS,
    minutes: float | None = None,
    sign_key: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int | None = None,
    max_functions: int = MAX_FUNCTIONS,
    hot_fraction: float = HOT_FRACTION,
) -> TunePackageResult:
    """Re-tune ``target`` of the package at ``package_dir`` in place; see the module docstring."""
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    root = Path(package_dir)
    if not root.is_dir():
        raise NotFound(f"no model package at {root}")
    package = pkg.ModelPackage.open(root)
    m = package.manifest
    if target == "native":
        target = targets.native_target()
    info = package.artifact(target)  # NotFound lists the package's targets
    if m.batch is not None:  # the rebuild below would drop the batched entry points
        raise FailedPrecondition(f"package {root} was compiled with --max-batch {m.batch.max_batch}; re-tune it "
                                 "with `hyperinfer compile --tune --max-batch` instead")
    t = targets.get(target)
    why = _can_measure_here(t)
    if why:
        raise FailedPrecondition(why)
    if trials < 0:
        raise InvalidArgument(f"--trials must be >= 0, got {trials}")
    if minutes is not None and minutes <= 0:
        raise InvalidArgument(f"--minutes must be > 0, got {minutes:g}")
    if max_functions < 1:
        raise InvalidArgument(f"max_functions must be >= 1, got {max_functions}")
    problems = package.check_files()
    if problems:
        raise FailedPrecondition(f"package {root} is damaged: {problems[0]}")
    signing_key = None
    if sign_key is not None:
        from hyperinfer.identity import load_key

        signing_key = load_key(sign_key)

    import onnx

    from hyperinfer.compile import build
    from hyperinfer.compile import tune as tuner
    from hyperinfer.runtime import TVMRunner, configure_threads
    from hyperinfer.verify.agreement import within_tolerance

    threads = configure_threads(threads or os.cpu_count() or 1)
    result = TunePackageResult(root, t.id)
    mod = build.import_onnx(onnx.load(str(package.onnx_path)))

    staging = Path(tempfile.mkdtemp(prefix=f".tune-{t.id}-", dir=root))
    try:
        layout = _choose_layout(mod, t, package, threads, staging, say, result)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.layout = layout or ""

    say("profiling the default build per function")
    try:
        profile = tuner.profile_functions(mod, t, threads, layout=layout)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    hot = tuner.hottest(profile, hot_fraction, max_functions)
    if not hot:
        shutil.rmtree(staging, ignore_errors=True)
        raise FailedPrecondition(f"no function of {m.name} could be profiled for {t.id}")
    result.profiled_us = sum(f.total_us for f in profile)
    result.candidates_us = sum(f.total_us for f in hot)
    result.candidates = [f.name for f in hot]
    share = result.candidates_us / result.profiled_us if result.profiled_us else 0.0
    say(f"tuning the {len(hot)} hottest of {len(profile)} functions ({share:.0%} of the profiled time)")
    for f in hot:
        say(f"  {f.name}: {f.us:.0f} us x {f.weight}")

    try:
        db = staging / "tuning"
        previous = root / "tuning" / t.id
        if previous.is_dir():
            shutil.copytree(previous, db)
        db.mkdir(parents=True, exist_ok=True)

        def on_progress(p):
            if p.phase == "tune":
                say(f"{p.trials}/{p.max_trials} trials, {p.elapsed / 60:.1f} min, "
                    f"{len(p.best_us)} of {p.tasks} functions measured")
            elif p.message:
                say(p.message)

        try:
            report = tuner.tune(mod, t, db, trials=trials, minutes=minutes, threads=threads,
                                progress=on_progress, only={f.key for f in hot}, layout=layout,
                                layout_default=result.layout_default or None)
        except BaseException:
            _keep_records(db, previous)
            raise
        result.trials = report.trials
        result.tune_seconds = report.seconds
        result.tuned_functions = report.tuned_functions
        result.estimated_speedup = report.estimated_speedup()
        result.stopped_by_time = report.stopped_by_time
        result.interrupted = report.interrupted
        for r in report.tasks:
            if r.default_us is not None:
                say(f"  {r.name}: default {r.default_us:.0f} us, rule knobs "
                    + (f"{r.rules_us:.0f} us {r.knobs}" if r.knobs else "default") + ", tuned "
                    + (f"{r.tuned_us:.0f} us" if r.tuned_us is not None else "none") + f" -> {r.choice}")

        say(f"building {t.id}")
        artifact = staging / f"{t.id}.so"
        built = build.build_artifact(mod, t, artifact, threads=threads, tuning_db=db, layout=layout)
        result.build_seconds = built.seconds

        say("checking the reference samples")
        inputs, outputs = package.load_reference()
        runner = TVMRunner(artifact, m.inputs, m.outputs, device="cpu", threads=threads)
        worst: dict[str, float] = {}
        for i, (x, y) in enumerate(zip(inputs, outputs)):
            got = runner.run(x)
            res = within_tolerance(got, y, m.outputs)
            if not res.agree:
                raise FailedPrecondition(
                    f"the tuned {t.id} artifact disagrees with reference sample {i}: {res.reason}; "
                    f"package left unchanged")
            for o in m.outputs:
                import numpy as np

                a, b = np.asarray(got[o.name]), np.asarray(y[o.name])
                if a.dtype.kind == "f" and a.size:
                    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
                    d = d[np.isfinite(d)]
                    worst[o.name] = max(worst.get(o.name, 0.0), float(d.max()) if d.size else 0.0)
        del runner
        result.max_errors = worst

        # move into place: artifact, tuning database, then the manifest (one rename each)
        sha, size = pkg.sha256_file(artifact), artifact.stat().st_size
        result.artifact_sha256, result.artifact_size = sha, size
        new_outputs = [replace(o, max_abs_error=max(o.max_abs_error, worst.get(o.name, 0.0))) for o in m.outputs]
        m.outputs = new_outputs
        m.artifacts[t.id] = replace(info, sha256=sha, size=size, tuned=built.tuned,
                                    build_seconds=round(built.seconds, 2), calibrated=True)
        data = m.dumps()
        target_file = (root / info.file)
        os.replace(artifact, target_file)
        (root / "tuning").mkdir(exist_ok=True)
        old_db = None
        if previous.exists():
            old_db = staging / "previous-tuning"
            previous.rename(old_db)
        db.rename(previous)
        tmp_manifest = root / (pkg.MANIFEST + ".tmp")
        tmp_manifest.write_bytes(data)
        os.replace(tmp_manifest, root / pkg.MANIFEST)
        sig = root / pkg.SIGNATURE
        if signing_key is not None:
            from hyperinfer.verify.publisher import sign_manifest

            tmp_sig = root / (pkg.SIGNATURE + ".tmp")
            tmp_sig.write_bytes(sign_manifest(signing_key, data))
            os.replace(tmp_sig, sig)
            result.signed = True
        elif sig.exists():
            sig.unlink()
            result.signature_removed = True
            result.warnings.append(
                f"{pkg.SIGNATURE} removed: the manifest changed, so the old signature no longer matched it; "
                "nodes that require signed packages will refuse this one until it is signed again "
                "(hyperinfer tune ... --sign-key KEY)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["tune_package", "TunePackageResult"]

"""``compile_model``: ONNX file -> model package (design §3).

Stages: load and clean up, import into TVM, build each target, run the
reference inputs through ONNX Runtime and every artifact this machine can run,
calibrate tolerances, write the package. The package is assembled in a
temporary folder next to its destination and moved into place at the end, so
a failed or interrupted compile leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from hyperinfer import package as pkg
from hyperinfer.compile import batching, build, calibrate, cleanup, reference, targets, toolchain
from hyperinfer.errors import AlreadyExists, FailedPrecondition, InvalidArgument

DEFAULT_REPOSITORY = "model-repository"
DEFAULT_SAMPLES = 4


class Progress:
    """Stage-by-stage progress with timings; silent when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    @contextmanager
    def stage(self, title: str) -> Iterator[dict]:
        info: dict = {"detail": ""}
        start = time.perf_counter()
        if not self.enabled:
            yield info
            return
        try:
            with self.console.status(f"{title}…", spinner="dots"):
                yield info
        except BaseException:
            self.console.print(f"[red]✗[/red] {title} ({time.perf_counter() - start:.1f} s)")
            raise
        detail = f" — {info['detail']}" if info["detail"] else ""
        self.console.print(f"[green]✓[/green] {title} ({time.perf_counter() - start:.1f} s){detail}")

    def warn(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]![/yellow] {message}")

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"  {message}")


def _runnable_here(t: targets.TargetInfo) -> bool:
    if t.kind == "vulkan":  # WGSL through wgpu: any adapter, lavapipe included
        from hyperinfer.runtime.runners import runs_here

        return runs_here(t.id)[0]
    return t.is_cpu and t.id in targets.runnable_cpu_targets()


def compile_model(
    onnx_path: str | os.PathLike,
    name: str,
    out_dir: str | os.PathLike = DEFAULT_REPOSITORY,
    targets_: list[str] | None = None,
    version: int = 1,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    calibration_data: str | os.PathLike | None = None,
    samples: int = DEFAULT_SAMPLES,
    sign_key: str | os.PathLike | None = None,
    threads: int | None = None,
    tune: bool = False,
    tune_trials: int = 256,
    tune_minutes: float | None = None,
    progress: bool | Progress = True,
    max_batch: int = 1,
    **kwargs,
) -> pkg.ModelPackage:
    """Compile ``onnx_path`` for ``targets_`` into ``out_dir/name/version``; returns the package."""
    if "targets" in kwargs:  # friendlier keyword for library callers
        targets_ = kwargs.pop("targets")
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    ui = progress if isinstance(progress, Progress) else Progress(bool(progress))
    pkg.validate_model_name(name)
    if version < 1:
        raise InvalidArgument(f"--version must be >= 1, got {version}")
    if samples < 1:
        raise InvalidArgument(f"--samples must be >= 1, got {samples}")
    batch_info = batching.batch_info(max_batch) if max_batch != 1 else None  # checks the range
    wanted = targets.resolve(list(targets_ or ["native"]))
    dest = Path(out_dir) / name / str(version)
    if dest.exists() and not force:
        raise AlreadyExists(f"{dest} already exists; pass --force to overwrite it")
    buildable, skipped = [], {}
    for t in wanted:
        problem = toolchain.check(t)
        if problem:
            skipped[t.id] = problem
        else:
            buildable.append(t)
    if not buildable:
        raise FailedPrecondition("; ".join(f"cannot build {tid}: {why}" for tid, why in skipped.items()))
    for tid, why in skipped.items():
        ui.warn(f"skipping {tid}: {why}")
    threads = threads or os.cpu_count() or 1
    signing_key = None
    if sign_key is not None:
        from hyperinfer.identity import load_key

        signing_key = load_key(sign_key)

    with ui.stage(f"Load and clean up {Path(onnx_path).name}") as st:
        source_sha = pkg.sha256_file(onnx_path) if Path(onnx_path).is_file() else ""
        model = cleanup.load_onnx(onnx_path)
        clean = cleanup.clean(model, dict(input_shapes or {}), threads=threads)
        st["detail"] = ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in clean.inputs) + \
            f" → {len(clean.model.graph.node)} nodes"

    with ui.stage("Import into TVM Relax") as st:
        mod = build.import_onnx(clean.model)
        st["detail"] = f"{sum(1 for _ in mod.functions_items())} functions"

    if batch_info is not None:
        with ui.stage(f"Import batch sizes {', '.join(map(str, batch_info.sizes[1:]))} (--max-batch)") as st:
            by_size = {1: mod}
            batching.batched_shapes(clean.inputs, 2)  # a clear error for a model without a batch dim
            for size in batch_info.sizes[1:]:
                batched = cleanup.clean(model, batching.batched_shapes(clean.inputs, size), threads=threads)
                batching.check_outputs_follow(clean.outputs, batched.outputs, size)
                by_size[size] = build.import_onnx(batched.model)
            mod = batching.merge_entry_points(by_size)
            st["detail"] = f"{sum(1 for _ in mod.functions_items())} functions, entry points " + \
                ", ".join(batch_info.entry_point(s) for s in batch_info.sizes)

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / name).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=Path(out_dir) / name))
    try:
        (staging / "artifacts").mkdir()
        tuning_root = dest / "tuning" if dest.exists() else None
        artifacts: dict[str, pkg.ArtifactInfo] = {}
        for t in buildable:
            artifact = staging / "artifacts" / f"{t.id}{t.artifact_suffix}"
            db = None
            if t.is_cpu:
                db = _tuning_dir(staging, dest, t.id, tune, mod, t, tune_trials, tune_minutes, threads, ui)
            try:
                with ui.stage(f"Build {t.id}") as st:
                    if t.kind == "vulkan" and batch_info is not None:
                        raise FailedPrecondition("the vulkan target has no batched entry points yet "
                                                 "(build it without --max-batch)")
                    result = build.build_artifact(mod, t, artifact, threads=threads, tuning_db=db, model=name)
                    size = artifact.stat().st_size
                    st["detail"] = f"{size / 1e6:.2f} MB" + ("; tuned" if result.tuned else "") + \
                        ("; " + "; ".join(result.notes) if result.notes else "")
            except FailedPrecondition as e:
                # WGSL limits (int64, f64, ...) rule out the vulkan artifact, not the whole package
                if t.kind != "vulkan" or len(buildable) == 1:
                    raise
                skipped[t.id] = str(e)
                ui.warn(f"skipping {t.id}: {e}")
                continue
            artifacts[t.id] = pkg.ArtifactInfo(
                t.id, {"target": t.spec, "host": t.host} if t.host else {"target": t.spec},
                f"artifacts/{t.id}{t.artifact_suffix}", pkg.sha256_file(artifact), size, result.tuned,
                round(result.seconds, 2), calibrated=_runnable_here(t),
            )
        del tuning_root

        with ui.stage("Calibrate against ONNX Runtime") as st:
            if calibration_data is not None:
                ref_inputs = reference.load_calibration_data(calibration_data, clean.inputs)
                how = [f"from {Path(calibration_data).name}"]
            else:
                ref_inputs, how = reference.default_inputs(clean.inputs, samples)
            from hyperinfer.runtime import ORTRunner
            from hyperinfer.runtime.runners import make_runner

            onnx_file = staging / pkg.MODEL_ONNX
            import onnx

            onnx.save(clean.model, str(onnx_file))
            ort = ORTRunner(onnx_file, clean.inputs, [o.name for o in clean.outputs], threads=threads)
            ref_outputs = [ort.run(x) for x in ref_inputs]
            by_target = {}
            runners = {}
            for t in buildable:
                if t.id in artifacts and _runnable_here(t):
                    runner = make_runner(staging / "artifacts" / f"{t.id}{t.artifact_suffix}", clean.inputs,
                                         clean.outputs, t.id, threads=threads, batch=batch_info)
                    by_target[t.id] = [runner.run(x) for x in ref_inputs]
                    runners[t.id] = runner
            cal = calibrate.calibrate(clean.outputs, ref_outputs, by_target)
            st["detail"] = f"{len(ref_inputs)} samples ({'; '.join(how)}), {len(by_target)} artifacts run"
        if batch_info is not None:
            with ui.stage("Check batched entry points bit for bit against batch 1") as st:
                checked = 0
                for tid, runner in runners.items():
                    checked += batching.check_bit_identical(
                        lambda size, items, r=runner: r.run_batch(items, size), batch_info, by_target[tid],
                        ref_inputs, tid)
                st["detail"] = f"{checked} batch items identical" if runners else "no artifact can run here"
            unchecked = [t.id for t in buildable if t.id in artifacts and t.id not in runners]
            if unchecked:  # a node re-checks on its own hardware at load and serves unbatched on a mismatch
                cal.warnings.append(f"batched entry points of {', '.join(unchecked)} not checked bit for bit here "
                                    "(cannot run on this machine); nodes check them at load")
        for o in cal.outputs:
            ui.note(f"{o.name}: max error {o.max_abs_error:.2g} → atol {o.tolerance.atol:.2g}, rtol {o.tolerance.rtol:g}")
        if not by_target:
            cal.warnings.append("no artifact could run on this machine: tolerances are floors, not measured")
        for w in cal.warnings:
            ui.warn(w)

        with ui.stage("Write package") as st:
            manifest = pkg.Manifest(
                name=name, version=version, source_sha256=source_sha,
                model_sha256=pkg.sha256_file(onnx_file),
                inputs=clean.inputs, outputs=cal.outputs, tvm_version=_tvm_version(),
                cleanup=clean.steps, artifacts=artifacts, reference_samples=len(ref_inputs),
                created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                warnings=cal.warnings + [f"{tid} not built: {why}" for tid, why in skipped.items()],
                batch=batch_info,
            )
            pkg.write_reference(staging / pkg.REFERENCE, clean.inputs, clean.outputs, ref_inputs, ref_outputs)
            manifest.reference_sha256 = pkg.sha256_file(staging / pkg.REFERENCE)
            data = manifest.dumps()
            (staging / pkg.MANIFEST).write_bytes(data)
            if signing_key is not None:
                from hyperinfer.verify.publisher import sign_manifest

                (staging / pkg.SIGNATURE).write_bytes(sign_manifest(signing_key, data))
            _move_into_place(staging, dest)
            st["detail"] = str(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return pkg.ModelPackage.open(dest)


def _tuning_dir(staging: Path, dest: Path, target_id: str, tune: bool, mod, target, trials, minutes,
                threads, ui: Progress) -> Path | None:
    """The tuning database for a CPU target: carried over from an earlier compile of
    the same package, extended by tuning when asked."""
    previous = dest / "tuning" / target_id
    db = staging / "tuning" / target_id
    if previous.is_dir():
        shutil.copytree(previous, db)
    if tune:
        from hyperinfer.compile import tune as tuner

        db.mkdir(parents=True, exist_ok=True)
        with ui.stage(f"Tune {target_id} (rule knobs, MetaSchedule {trials} trials"
                      + (f", {minutes:g} min" if minutes else "") + ")") as st:
            report = tuner.tune(mod, target, db, trials=trials, minutes=minutes, threads=threads,
                                progress=ui.note if ui.enabled else None)
            st["detail"] = str(report)
    return db if db.is_dir() and any(db.iterdir()) else None


def _move_into_place(staging: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    staging.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def self_test(package: pkg.ModelPackage, threads: int | None = None,
              report: Callable[[str, bool, str], None] | None = None) -> list[str]:
    """Re-hash the package and re-run its reference inputs on every artifact this
    machine can run; returns one message per problem (empty: all good)."""
    from hyperinfer.runtime import ORTRunner
    from hyperinfer.runtime.runners import runner_for_package, runs_here
    from hyperinfer.verify.agreement import within_tolerance

    problems = package.check_files()
    say = report or (lambda *_: None)
    for p in problems:
        say("files", False, p)
    if problems:
        return problems
    say("files", True, "every file matches its sha256")
    inputs, outputs = package.load_reference()
    m = package.manifest
    ort = ORTRunner.for_package(package, threads=threads)
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        got = ort.run(x)
        bad = [n for n in y if not np.allclose(got[n], y[n], rtol=1e-4, atol=1e-5, equal_nan=True)]
        if bad:
            problems.append(f"ONNX Runtime no longer reproduces reference sample {i} on {', '.join(bad)}")
    say("onnxruntime", not problems, "reference outputs reproduced" if not problems else problems[-1])
    for tid in sorted(m.artifacts):
        if not runs_here(tid)[0]:
            say(tid, True, "sha256 ok; cannot run on this machine")
            continue
        runner = runner_for_package(package, tid, threads=threads)
        msgs = []
        for i, (x, y) in enumerate(zip(inputs, outputs)):
            res = within_tolerance(runner.run(x), y, m.outputs)
            if not res.agree:
                msgs.append(f"{tid}: sample {i}: {res.reason}")
        problems += msgs
        say(tid, not msgs, msgs[0] if msgs else f"{len(inputs)} reference samples within tolerance")
    return problems

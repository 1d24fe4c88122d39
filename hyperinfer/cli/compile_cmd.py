"""``hyperinfer compile`` and ``hyperinfer targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli._console import out as console


def compile_command(
    model: Path = typer.Argument(..., help="ONNX model file", show_default=False),
    name: str = typer.Option(..., "--name", help="Model name in the repository"),
    version: int = typer.Option(1, "--version", help="Model version"),
    target: list[str] = typer.Option(
        ["native"], "--target", "-t",
        help="Target id (repeatable): native, cpu-x86_64, cpu-x86_64-avx2, cpu-x86_64-avx512, cpu-aarch64, "
             "cuda-sm75/80/86/89/90, rocm-gfx90a/gfx942/gfx1100, vulkan. See `hyperinfer targets`."),
    input_shape: list[str] = typer.Option(
        [], "--input-shape", help="Fix an input's dims: NAME=D1,D2,... (repeatable)"),
    out: Path = typer.Option(Path("model-repository"), "--out", help="Model repository folder"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing package"),
    calibration_data: Optional[Path] = typer.Option(
        None, "--calibration-data", help=".npz with one array per input (optionally a leading sample axis)"),
    samples: int = typer.Option(4, "--samples", help="Generated calibration samples (without --calibration-data)"),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Publisher Ed25519 key to sign the manifest"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for calibration runs"),
    tune: bool = typer.Option(False, "--tune", help="Tune CPU targets with MetaSchedule (database kept in the package)"),
    trials: int = typer.Option(256, "--trials", help="MetaSchedule trials per target (with --tune)"),
    tune_minutes: Optional[float] = typer.Option(None, "--tune-minutes", help="Wall-clock budget per target (with --tune)"),
    max_batch: int = typer.Option(
        1, "--max-batch", help="Also build batched entry points for 2, 4, ... up to N requests stacked on dim 0 "
                               "(nodes batch requests that arrive together)"),
) -> None:
    """Compile an ONNX model into a model package with one TVM artifact per target."""
    from hyperinfer.compile import compile_model
    from hyperinfer.compile.cleanup import parse_input_shapes

    package = compile_model(
        model, name, out_dir=out, targets_=target, version=version,
        input_shapes=parse_input_shapes(input_shape), force=force, calibration_data=calibration_data,
        samples=samples, sign_key=sign_key, threads=threads, tune=tune, tune_trials=trials,
        tune_minutes=tune_minutes, progress=True, max_batch=max_batch,
    )
    m = package.manifest
    batch = f"; batch sizes {', '.join(map(str, m.batch.sizes))}" if m.batch else ""
    console.print(f"Wrote {package.path} ({', '.join(sorted(m.artifacts))}{batch})")


def targets_command() -> None:
    """List target ids and whether this machine can build and run each."""
    from rich.table import Table

    from hyperinfer.compile import targets as tg
    from hyperinfer.compile import toolchain

    from hyperinfer.runtime import webgpu

    runnable = set(tg.runnable_cpu_targets())
    found = webgpu.adapters()
    table = Table("target", "builds here", "runs here", "what / why not")
    for tid, ok, why in toolchain.status_table():
        if tg.get(tid).kind == "vulkan":
            # runs wherever wgpu finds an adapter (a GPU, or lavapipe on the CPU)
            runs = f"yes ({found[0].name}, {found[0].backend})" if found else "no"
            if not found:
                why = f"{why}; does not run here: {webgpu.why_not()}"
        else:
            runs = "yes" if tid in runnable else "no"
        table.add_row(tid, ok, runs, why)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
    app.command("targets")(targets_command)

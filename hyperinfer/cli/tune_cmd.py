"""``hyperinfer tune``: re-tune one target of an existing package on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli._console import err as progress_console
from hyperinfer.cli._console import out as console


def tune_command(
    package: Path = typer.Argument(..., help="Package folder (REPOSITORY/NAME/VERSION)", show_default=False),
    target: str = typer.Option(..., "--target", "-t", help="Target id of an artifact in the package (or native)"),
    trials: int = typer.Option(256, "--trials", help="MetaSchedule trials (measured candidates) in this run; "
                                                     "0: only the rule knobs"),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget for the search"),
    sign_key: Optional[Path] = typer.Option(
        None, "--sign-key", help="Publisher Ed25519 key: sign the updated manifest (without it an existing "
                                 "signature is removed, since it no longer matches)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for measuring (default: all)"),
    functions: int = typer.Option(12, "--functions", help="Tune at most this many of the hottest functions"),
) -> None:
    """Tune TARGET's hottest functions and rebuild its artifact in the package.

    On an AVX-512 target whose convs can take the channel-blocked layout, the model is first built and timed in NCHW and NCHW16c and the faster kept. Each function's rule-based schedule is first tried with other tile and loop-order knobs, then MetaSchedule searches. The database is kept in PACKAGE/tuning/TARGET/ (a later run continues from it). Per function the fastest of the default, the rule knobs and MetaSchedule's schedule goes into the artifact, which must reproduce the package's reference outputs within its tolerances.
    """
    from hyperinfer.compile.retune import tune_package

    def say(msg: str) -> None:
        progress_console.print(f"  {msg}", highlight=False)

    r = tune_package(package, target, trials=trials, minutes=minutes, sign_key=sign_key, progress=say,
                     threads=threads, max_functions=functions)
    speed = f", estimated {r.estimated_speedup:.2f}x on them" if r.estimated_speedup else ""
    stop = " (stopped by the time limit)" if r.stopped_by_time else (" (interrupted)" if r.interrupted else "")
    console.print(
        f"Tuned {r.target} of {r.package}: {r.tuned_functions} of {len(r.candidates)} functions use a tuned "
        f"schedule or rule knobs{speed}; {r.trials} trials in {r.tune_seconds / 60:.1f} min{stop}", highlight=False)
    if r.layout_ms:
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in r.layout_ms.items())
        console.print(f"Activation layout {r.layout} (whole model: {timed})", highlight=False)
    errs = ", ".join(f"{k} {v:.2g}" for k, v in r.max_errors.items())
    console.print(f"Artifact {r.artifact_size / 1e6:.2f} MB, sha256 {r.artifact_sha256[:16]}…; reference samples "
                  f"within tolerance" + (f" (max error {errs})" if errs else ""), highlight=False)
    if r.signed:
        console.print("Manifest re-signed.", highlight=False)
    for w in r.warnings:
        console.print(f"[yellow]Warning:[/yellow] {w}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)

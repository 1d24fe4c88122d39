"""``hyperinfer models inspect|verify|fetch|list|build``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli._console import out

models_app = typer.Typer(help="Inspect, verify, fetch and build model packages.", no_args_is_help=True)


@models_app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="Package folder (REPO/NAME/VERSION)"),
            json_: bool = typer.Option(False, "--json", help="Print the manifest as JSON")) -> None:
    """Print a package's manifest as tables."""
    from rich.table import Table

    from hyperinfer.package import ModelPackage

    package = ModelPackage.open(path)
    m = package.manifest
    if json_:
        out.print_json(package.manifest_bytes.decode())
        return
    signed = "signed" if package.signature_path.is_file() else "unsigned"
    out.print(f"[bold]{m.name}[/bold] version {m.version} — TVM {m.tvm_version}, created {m.created}, {signed}")
    out.print(f"source sha256 {m.source_sha256}")
    t = Table("tensor", "kind", "dtype", "shape", "source shape", "atol", "rtol", "max err vs ORT")
    for s in m.inputs:
        t.add_row(s.name, "input", s.dtype, str(list(s.shape)), str(list(s.source_shape)) if s.source_shape else "", "", "", "")
    for o in m.outputs:
        t.add_row(o.name, "output", o.dtype, str(list(o.shape)), str(list(o.source_shape)) if o.source_shape else "",
                  f"{o.tolerance.atol:.3g}", f"{o.tolerance.rtol:.3g}", f"{o.max_abs_error:.3g}")
    out.print(t)
    a = Table("target", "file", "size", "sha256", "tuned", "build s", "calibrated")
    for tid, info in sorted(m.artifacts.items()):
        a.add_row(tid, info.file, f"{info.size / 1e6:.2f} MB", info.sha256[:16] + "…", "yes" if info.tuned else "no",
                  f"{info.build_seconds:.1f}", "yes" if info.calibrated else "no (built only)")
    out.print(a)
    if m.cleanup:
        out.print("clean-up: " + "; ".join(m.cleanup))
    for w in m.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}")


@models_app.command("verify")
def verify(path: Path = typer.Argument(..., help="Package folder (REPO/NAME/VERSION)"),
           threads: Optional[int] = typer.Option(None, "--threads")) -> None:
    """Re-hash every file and re-run the reference samples; exit 1 on any mismatch."""
    from hyperinfer.compile import self_test
    from hyperinfer.errors import DataLoss
    from hyperinfer.package import ModelPackage

    package = ModelPackage.open(path)

    def report(what: str, ok: bool, detail: str) -> None:
        out.print(f"{'[green]✓[/green]' if ok else '[red]✗[/red]'} {what}: {detail}")

    problems = self_test(package, threads=threads, report=report)
    if problems:
        raise DataLoss(f"{len(problems)} problem(s) in {path}: {problems[0]}")
    out.print(f"{package.name}/{package.version}: OK")


@models_app.command("fetch")
def fetch(dest: Optional[Path] = typer.Option(None, "--dest", help="Folder for the .onnx files")) -> None:
    """Download the PP-OCR models (inside the rapidocr-onnxruntime wheel from PyPI)."""
    from hyperinfer import zoo

    for name, p in zoo.fetch_ppocr(dest).items():
        out.print(f"{name}: {p}  ({zoo.PPOCR[name].description}, compile with --input-shape x={','.join(map(str, zoo.PPOCR[name].input_shape))})")


@models_app.command("list")
def list_() -> None:
    """The models `hyperinfer models build` knows (see models/README.md)."""
    from hyperinfer import zoo

    for name, description in zoo.known_models().items():
        out.print(f"{name}: {description}", markup=False, soft_wrap=True)


@models_app.command("build")
def build(names: list[str] = typer.Argument(..., help="Model names (see `hyperinfer models list`)"),
          out_dir: Path = typer.Option(Path("model-repository"), "--out", "-o", help="Model repository to write"),
          sources: Optional[Path] = typer.Option(None, "--sources", help="Folder for the .onnx sources "
                                                 "[default: $HYPERINFER_MODELS or ~/.cache/hyperinfer/models]"),
          target: list[str] = typer.Option(["cpu-x86_64"], "--target", "-t", help="Target id (repeatable)"),
          version: int = typer.Option(1, "--version"),
          force: bool = typer.Option(False, "--force", help="Overwrite an existing package")) -> None:
    """Obtain each model (download or build its ONNX) and compile it into a repository."""
    from hyperinfer import zoo

    known = zoo.known_models()
    unknown = [n for n in names if n not in known]
    if unknown:
        from hyperinfer.errors import NotFound

        raise NotFound(f"unknown model {unknown[0]!r}; known: {', '.join(known)}")
    for name in names:
        package = zoo.build(name, out_dir, sources=sources, targets=list(target), version=version, force=force)
        out.print(f"{name}: {package.path}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")

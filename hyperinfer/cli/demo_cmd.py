"""``hyperinfer demo``: verified requests through a gateway, printing results and receipts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli import _tls


def demo(
    url: str = typer.Option("127.0.0.1:8001", "--url", envvar="HYPERINFER_GATEWAY", help="HOST:PORT of the gateway."),
    model: str = typer.Option("ppocr-det", "--model", help="Model to call."),
    requests: int = typer.Option(4, "--requests", "-n", help="Requests to send."),
    verify: str = typer.Option("always", "--verify", help="Verification mode per request: auto|sync|always."),
    wait: float = typer.Option(120.0, "--wait", help="Seconds to wait for the model to be ready."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request."),
    receipts: Optional[Path] = typer.Option(None, "--receipts", help="Also save each receipt as DIR/demo-N.json."),
    tls: bool = _tls.tls_option(),
    tls_ca: Optional[Path] = _tls.ca_option(),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
) -> None:
    """Send requests (a rendered text page for image models, random inputs otherwise); print results and receipts."""
    from hyperinfer.cli._console import out
    from hyperinfer.demo import run

    run(url, model=model, requests=requests, verify=verify, wait=wait, timeout=timeout, receipts_dir=receipts,
        say=lambda line: out.print(line, soft_wrap=True, highlight=False, markup=False),
        tls=_tls.client_tls(tls, tls_ca, tls_cert, tls_key))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

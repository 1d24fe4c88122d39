"""``hyperinfer node``: run a worker node that joins a gateway's pool."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli import _tls
from hyperinfer.node.devices import DEVICE_CHOICES


def _setup_logging(verbose: bool) -> None:
    from hyperinfer.cli._console import err

    level = logging.DEBUG if verbose else logging.INFO
    if err.is_terminal:
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s",
                            handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)])
    else:  # a log file or a supervisor: one plain line per event
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # per-request status lines are noise at INFO
        logging.getLogger("hyperinfer.grpc").setLevel(logging.WARNING)


def node(
    gateway: str = typer.Option(..., "--gateway", help="HOST:PORT of the gateway's pool service."),
    listen: str = typer.Option("127.0.0.1:0", "--listen", help="HOST:PORT to serve Worker on; port 0 picks one."),
    advertise: str = typer.Option("", "--advertise", help="HOST:PORT the gateway should call (default: --listen with the bound port)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Node key file (created if missing). Default ~/.config/hyperinfer/node.key."),
    operator: str = typer.Option("", "--operator", help="Operator name shown in the pool (default: user name)."),
    device: str = typer.Option("auto", "--device", help=f"Which devices to use: {'|'.join(DEVICE_CHOICES)}."),
    target: list[str] = typer.Option([], "--target", help="Only serve these target ids (repeatable; each must run here). Default: the best this hardware runs."),
    max_concurrency: int = typer.Option(4, "--max-concurrency", help="Requests run at once; more are refused with RESOURCE_EXHAUSTED."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for TVM (default: all cores)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Artifact cache dir (default ~/.cache/hyperinfer/node/<node-id>/artifacts)."),
    trust_publisher: list[str] = typer.Option([], "--trust-publisher", help="Publisher public key (hex or key file) whose packages to load; repeatable."),
    allow_unsigned: Optional[Path] = typer.Option(None, "--allow-unsigned", metavar="DIR", help="Also load unsigned packages, but only those this local model repository holds (packages you built yourself)."),
    operator_cert: Optional[Path] = typer.Option(None, "--operator-cert", help="Certificate by your operator key over this node key (`hyperinfer operators certify`); closed pools need it."),
    gateway_key: Optional[str] = typer.Option(None, "--gateway-key", help="Pin the gateway's public key (hex or key file); default: the key of the gateway first joined."),
    grace: float = typer.Option(10.0, "--grace", help="Seconds running requests get to finish on shutdown."),
    batch_window_us: int = typer.Option(
        0, "--batch-window-us", help="Packages compiled with --max-batch: microseconds a batch waits for more requests "
                                     "(0: batch what queued while the previous batch ran). Batches are at most "
                                     "--max-concurrency requests."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Run requests that arrive together as one batch."),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
    tls_ca: Optional[Path] = _tls.ca_option(server=True),
    metrics_listen: str = typer.Option(
        "off", "--metrics-listen", metavar="HOST:PORT|off",
        help="Serve Prometheus metrics (GET /metrics) on HOST:PORT (Triton uses 8002); off by default."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run a worker node: detect devices, join the gateway, serve the models it offers."""
    from hyperinfer.cli._console import out
    from hyperinfer.node.app import Node, NodeConfig, default_key_path

    _setup_logging(verbose)

    def loaded(m) -> None:
        signed = f"signed by {m.publisher_id}" if m.publisher_id else "UNSIGNED"
        out.print(f"loaded model {m.manifest.name}/{m.manifest.version} target={m.target_id} "
                  f"artifact={m.artifact_sha256[:16]} ({signed})", soft_wrap=True)

    n = Node(NodeConfig(
        gateway=gateway, listen=listen, advertise=advertise, key_path=key or default_key_path(),
        operator=operator, device=device, targets=list(target), max_concurrency=max_concurrency, threads=threads, cache_dir=cache,
        trust_publishers=list(trust_publisher), allow_unsigned=allow_unsigned, grace_s=grace,
        operator_cert=operator_cert, gateway_key=gateway_key,
        batch_window_us=batch_window_us, batching=batching, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
        metrics_listen=metrics_listen,
    ), on_loaded=loaded)
    if n.key_created:
        out.print(f"created node key {n.config.key_path}", soft_wrap=True)
    n.start()
    out.print(f"node {n.node_id} listening on {n.address} targets={','.join(n.hardware.targets)} "
              f"gateway={gateway}", soft_wrap=True)
    for d in n.hardware.devices:  # GPUs and WebGPU adapters: what the non-CPU targets run on
        if d.kind != "cpu":
            out.print(f"device {d.kind}: {d.name} ({', '.join(d.features)})", soft_wrap=True)
    if n.metrics is not None:
        out.print(f"metrics (Prometheus) on {n.metrics.server.scheme}://{n.metrics.address}/metrics", soft_wrap=True)
    n.run_until_signal()
    out.print("node stopped")


def register(app: typer.Typer) -> None:
    app.command("node")(node)

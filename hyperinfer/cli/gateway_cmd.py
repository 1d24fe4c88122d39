"""``hyperinfer gateway``: run the gateway (pool, registry, Open Inference Protocol) on one port."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from hyperinfer.gateway.config import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LISTEN


def _setup_logging(verbose: bool) -> None:
    # one line per event, with a timestamp: gateway logs are an audit trail
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("hyperinfer.grpc").setLevel(logging.WARNING)


def gateway(
    repository: Path = typer.Option(..., "--repository", envvar="HYPERINFER_GATEWAY_REPOSITORY",
                                    help="Model repository (DIR/NAME/VERSION/manifest.json) to offer."),
    listen: str = typer.Option(DEFAULT_LISTEN, "--listen", envvar="HYPERINFER_GATEWAY_LISTEN",
                               help="HOST:PORT for all gateway services. Loopback by default; "
                                    "use 0.0.0.0:8001 to accept remote nodes and clients."),
    db: Optional[Path] = typer.Option(None, "--db", envvar="HYPERINFER_GATEWAY_DB",
                                      help="SQLite database (registry, ledger, evidence). "
                                           "Default ~/.local/share/hyperinfer/gateway.db."),
    key: Optional[Path] = typer.Option(None, "--key", envvar="HYPERINFER_GATEWAY_KEY",
                                       help="Gateway key (created if missing). Default ~/.config/hyperinfer/gateway.key."),
    heartbeat_interval: float = typer.Option(DEFAULT_HEARTBEAT_INTERVAL, "--heartbeat-interval",
                                             help="Seconds between node heartbeats; silent for 3 intervals = stale."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the gateway until Ctrl-C / SIGTERM."""
    from hyperinfer.cli._console import out
    from hyperinfer.gateway.app import Gateway, serve
    from hyperinfer.gateway.config import GatewayConfig, default_db_path, default_key_path

    _setup_logging(verbose)
    config = GatewayConfig(repository=repository, listen=listen, db=db or default_db_path(),
                           key=key or default_key_path(), heartbeat_interval=heartbeat_interval)

    def ready(gw: Gateway) -> None:
        if gw.key_created:
            out.print(f"created gateway key {gw.config.key}")
        out.print(f"gateway {gw.gateway_id} listening on {gw.address}")
        out.print(f"public key {gw.public_key.hex()}")
        out.print(f"database {gw.config.db}")
        offers = gw.catalog.offers()
        if not offers:
            out.print(f"no models in {gw.config.repository} yet (packages added later are picked up)")
        for o in offers:
            signed = "signed" if o.signature else "UNSIGNED"
            out.print(f"offering {o.name}/{o.version} targets={','.join(o.targets) or 'none'} ({signed})")
        out.print(f"services: {', '.join(gw.server.services)}")

    serve(config, on_ready=ready)
    out.print("gateway stopped")


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)

"""``hyperinfer gateway``: run the gateway (pool, registry, Open Inference Protocol) on one port."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli import _tls
from hyperinfer.gateway.config import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LISTEN
from hyperinfer.transport.limits import DEFAULT_MAX_STREAMS
from hyperinfer.transport.server import DEFAULT_MAX_CONCURRENT_RPCS


def _setup_logging(verbose: bool) -> None:
    # one line per event, with a timestamp: gateway logs are an audit trail
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("hyperinfer.grpc").setLevel(logging.WARNING)


def _model_rates(items: list[str]) -> dict[str, float]:
    from hyperinfer.errors import InvalidArgument

    rates = {}
    for item in items:
        model, sep, value = item.partition("=")
        try:
            if not sep or not model:
                raise ValueError
            rates[model] = float(value)
        except ValueError:
            raise InvalidArgument(f"--model-sample-rate {item!r}: expected MODEL=P with P in [0, 1]") from None
    return rates


def gateway(
    repository: Path = typer.Option(..., "--repository", envvar="HYPERINFER_GATEWAY_REPOSITORY",
                                    help="Model repository (DIR/NAME/VERSION/manifest.json) to offer."),
    listen: str = typer.Option(DEFAULT_LISTEN, "--listen", envvar="HYPERINFER_GATEWAY_LISTEN",
                               help="HOST:PORT for all gateway services. Loopback by default; "
                                    "use 0.0.0.0:8001 to accept remote nodes and clients."),
    db: Optional[str] = typer.Option(None, "--db", envvar="HYPERINFER_GATEWAY_DB",
                                     help="Registry, ledger and evidence: an SQLite file, or "
                                          "postgresql://USER@HOST/DB shared by several gateways. "
                                          "Default ~/.local/share/hyperinfer/gateway.db."),
    key: Optional[Path] = typer.Option(None, "--key", envvar="HYPERINFER_GATEWAY_KEY",
                                       help="Gateway key (created if missing). Default ~/.config/hyperinfer/gateway.key."),
    heartbeat_interval: float = typer.Option(DEFAULT_HEARTBEAT_INTERVAL, "--heartbeat-interval",
                                             help="Seconds between node heartbeats; silent for 3 intervals = stale."),
    sample_rate: Optional[float] = typer.Option(
        None, "--sample-rate", envvar="HYPERINFER_GATEWAY_SAMPLE_RATE",
        help="Share of requests re-run, blind, on another operator's node (0..1). Default 0.1."),
    model_sample_rate: list[str] = typer.Option(
        [], "--model-sample-rate", metavar="MODEL=P", help="Per-model sample rate (repeatable)."),
    probation_jobs: Optional[int] = typer.Option(
        None, "--probation-jobs",
        help="Probation: a new node, or one back from a fault, has every answer held until another operator's "
             "node (or the ONNX Runtime referee) agrees, one job at a time, until it passes K checks in a row "
             "(0: no probation). Default 10."),
    quarantine_after: Optional[int] = typer.Option(
        None, "--quarantine-after", help="Faults before a node is quarantined (0: never). Default 3."),
    reward_per_job: Optional[float] = typer.Option(None, "--reward", help="Credit R per job. Default 1."),
    initial_stake: Optional[float] = typer.Option(None, "--stake", help="Stake a new node starts with. Default 100."),
    slash_per_fault: Optional[float] = typer.Option(None, "--slash", help="Stake S taken per fault. Default 10."),
    node_timeout: Optional[float] = typer.Option(
        None, "--node-timeout", help="Seconds before a node call is retried elsewhere. Default 30."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Nodes tried per request. Default 3."),
    open_pool: bool = typer.Option(False, "--open-pool", help="Let nodes join without an admitted operator "
                                   "(bond 0, probation; receipts say admission: open). Default: only operators "
                                   "admitted with `hyperinfer operators add`."),
    admin_key: list[str] = typer.Option([], "--admin-key", envvar="HYPERINFER_GATEWAY_ADMIN_KEY",
                                        help="Admin public key (hex or key file; repeatable): may read pool "
                                             "status and call admin-only RPCs."),
    open_model_control: bool = typer.Option(
        False, "--open-model-control", help="Let anyone load/unload models even with --admin-key (a local "
                                            "development pool). Default: admin-only once there is an admin key."),
    audit_rate: Optional[float] = typer.Option(
        None, "--audit-rate", help="Share of requests the gateway re-runs itself with ONNX Runtime (0..1). "
                                   "Default 0.02."),
    timeout_slash: Optional[float] = typer.Option(
        None, "--timeout-slash", help="Stake taken per node call that runs past --node-timeout. Default 1."),
    quarantine_after_timeouts: Optional[int] = typer.Option(
        None, "--quarantine-after-timeouts", help="Timeouts before a node is quarantined (0: never). Default 5."),
    max_concurrent_rpcs: int = typer.Option(
        DEFAULT_MAX_CONCURRENT_RPCS, "--max-concurrent-rpcs",
        help="RPCs held at once (running or queued); more get RESOURCE_EXHAUSTED."),
    max_artifact_streams: int = typer.Option(
        DEFAULT_MAX_STREAMS, "--max-artifact-streams",
        help="Artifact downloads at once (more are told to retry); idle ones are cancelled after 30 s."),
    max_pending_checks: int = typer.Option(
        1000, "--max-pending-checks",
        help="Background checks queued at once; beyond it a sampled request is recorded 'skipped'."),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
    tls_ca: Optional[Path] = _tls.ca_option(server=True),
    http_listen: Optional[str] = typer.Option(
        None, "--http-listen", envvar="HYPERINFER_GATEWAY_HTTP_LISTEN", metavar="HOST:PORT|off",
        help="KServe v2 REST (HTTP) front door. Default: --listen's host, port 8000 (a free port if --listen "
             "has port 0)."),
    metrics_listen: Optional[str] = typer.Option(
        None, "--metrics-listen", envvar="HYPERINFER_GATEWAY_METRICS_LISTEN", metavar="HOST:PORT|off",
        help="Prometheus metrics (GET /metrics). Default: --listen's host, port 8002 (a free port if --listen "
             "has port 0)."),
    workers: int = typer.Option(
        1, "--workers",
        help="Gateway processes serving --listen together (SO_REUSEPORT) on one --db: more requests/s on "
             "several cores. Worker 0 alone serves REST and metrics."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the gateway until Ctrl-C / SIGTERM."""
    from hyperinfer.cli._console import out
    from hyperinfer.gateway.app import Gateway, serve
    from hyperinfer.gateway.config import DEFAULT_AUDIT_RATE, GatewayConfig, default_db_path, default_key_path

    _setup_logging(verbose)
    config = GatewayConfig(repository=repository, listen=listen, db=db or default_db_path(),
                           key=key or default_key_path(), heartbeat_interval=heartbeat_interval,
                           sample_rate=sample_rate, model_sample_rates=_model_rates(model_sample_rate),
                           probation_jobs=probation_jobs, quarantine_after=quarantine_after,
                           reward_per_job=reward_per_job, initial_stake=initial_stake,
                           slash_per_fault=slash_per_fault, node_timeout=node_timeout, max_attempts=max_attempts,
                           timeout_slash=timeout_slash, quarantine_after_timeouts=quarantine_after_timeouts,
                           max_concurrent_rpcs=max_concurrent_rpcs, max_artifact_streams=max_artifact_streams,
                           max_pending_checks=max_pending_checks, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                           http_listen=http_listen, metrics_listen=metrics_listen, workers=workers,
                           open_pool=open_pool, admin_keys=list(admin_key), audit_rate=audit_rate,
                           open_model_control=open_model_control)

    def ready(gw: Gateway) -> None:
        if gw.key_created:
            out.print(f"created gateway key {gw.config.key}")
        out.print(f"gateway {gw.gateway_id} listening on {gw.address}"
                  + (" (TLS" + (", mutual with nodes)" if gw.tls.ca else ")") if gw.tls else " (plaintext)"))
        rest, metrics = getattr(gw, "rest", None), getattr(gw, "metrics_server", None)
        if rest is not None:
            out.print(f"REST (KServe v2 HTTP) on {rest.scheme}://{rest.address}/v2", soft_wrap=True)
        if metrics is not None:
            out.print(f"metrics (Prometheus) on {metrics.scheme}://{metrics.address}/metrics", soft_wrap=True)
        out.print(f"public key {gw.public_key.hex()}")
        out.print(f"database {gw.store.location}")
        offers = gw.catalog.offers()
        if not offers:
            out.print(f"no models in {gw.config.repository} yet (packages added later are picked up)")
        for o in offers:
            signed = "signed" if o.signature else "UNSIGNED"
            out.print(f"offering {o.name}/{o.version} targets={','.join(o.targets) or 'none'} ({signed})")
        c = gw.config
        rate = 0.1 if c.sample_rate is None else c.sample_rate
        extra = "".join(f", {m}={p:g}" for m, p in c.model_sample_rates.items())
        k = getattr(getattr(gw.ledger, "config", None), "probation_jobs", c.probation_jobs or 0)
        probation = (f"probation {k} checks in a row (answers held until checked, one job at a time; "
                     "receipts say \"probation\": true)") if k else "no probation"
        audit = DEFAULT_AUDIT_RATE if c.audit_rate is None else c.audit_rate
        out.print(f"verification: sample rate {rate:g}{extra}, audit rate {audit:g}; {probation}")
        admitted = sum(1 for o in gw.operators.list() if o.admission == "admitted" and o.state != "removed")
        out.print(f"admission: {'open pool' if c.open_pool else 'closed pool'}, {admitted} admitted operator(s), "
                  f"{len(c.admin_keys)} admin key(s)")
        out.print(f"services: {', '.join(gw.server.services)}")
        if c.workers > 1:
            out.print(f"{c.workers} worker processes on {gw.address} (one store, one key)")

    serve(config, on_ready=ready)
    out.print("gateway stopped")


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)

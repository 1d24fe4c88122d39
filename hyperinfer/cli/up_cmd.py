"""``hyperinfer up``: a gateway and N nodes on this machine in one command (see hyperinfer/local_pool.py)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from hyperinfer.local_pool import DEFAULT_STATE, BUNDLED_MODEL, LocalPool, NodeView, Stopped, UpOptions


def up(
    repository: Optional[Path] = typer.Option(
        None, "--repository", help="Model repository to serve (default <state>/repo). Without any package, the "
                                   "bundled PP-OCRv4 text detector is downloaded and compiled into it first."),
    nodes: int = typer.Option(2, "--nodes", "-n", help="Worker nodes to start, each with its own key and operator."),
    port: int = typer.Option(8001, "--port", help="Gateway gRPC port on 127.0.0.1 (0 picks a free one)."),
    http_port: Optional[int] = typer.Option(
        None, "--http-port", help="KServe v2 REST port on 127.0.0.1. Default 8000 (a free one with --port 0)."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", help="Prometheus /metrics port on 127.0.0.1. Default 8002 (a free one with --port 0)."),
    sample_rate: Optional[float] = typer.Option(
        None, "--sample-rate", help="Share of requests re-run on another operator's node (passed to the gateway)."),
    state: Path = typer.Option(DEFAULT_STATE, "--state", help="Keys, gateway database, caches and logs."),
    threads: int = typer.Option(1, "--threads", help="TVM CPU threads per node."),
    model_timeout: float = typer.Option(
        300.0, "--model-timeout", help="Seconds to wait for every node to join and load every model."),
    heartbeat_interval: float = typer.Option(1.0, "--heartbeat-interval", help="Seconds between node heartbeats."),
    trust_publisher: list[str] = typer.Option(
        [], "--trust-publisher", help="Publisher key (hex or file) the nodes trust besides <state>/publisher.key."),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Let the nodes load unsigned packages."),
    open_model_control: bool = typer.Option(False, "--open-model-control",
                                            help="Anyone may load/unload models (else only with <state>/admin.key)."),
    node_target: list[str] = typer.Option(
        [], "--node-target", metavar="TARGET",
        help="Pin the nodes to these artifacts in turn (repeatable), e.g. --node-target cpu-x86_64 "
             "--node-target cpu-x86_64-avx2 to watch verification across targets."),
    demo: bool = typer.Option(False, "--demo", help="Once ready, run `hyperinfer demo` against the pool."),
    demo_model: Optional[str] = typer.Option(
        None, "--demo-model", help=f"Model the demo calls (default {BUNDLED_MODEL} if served, else the first)."),
    demo_requests: int = typer.Option(4, "--demo-requests", help="Requests the demo sends."),
    exit_after_demo: bool = typer.Option(False, "--exit-after-demo", help="Stop everything after the demo."),
    refresh: float = typer.Option(2.0, "--refresh", help="Seconds between status refreshes."),
    tls: bool = typer.Option(False, "--tls", help="TLS on every channel: a pool CA and certificates in "
                                                  "<state>/tls, mutual TLS between the gateway and the nodes."),
) -> None:
    """Start a gateway and N nodes on 127.0.0.1, wait until they serve, show live status; Ctrl-C stops all."""
    from hyperinfer.errors import InvalidArgument

    if exit_after_demo and not demo:
        raise InvalidArgument("--exit-after-demo needs --demo")
    if demo_requests < 1:
        raise InvalidArgument(f"--demo-requests {demo_requests}: must be >= 1")
    if not 0.2 <= refresh <= 3600:
        raise InvalidArgument(f"--refresh {refresh}: must be in [0.2, 3600] seconds")
    ui = _UI()
    stop, force = threading.Event(), threading.Event()
    pool = LocalPool(UpOptions(state=state, repository=repository, nodes=nodes, port=port, http_port=http_port,
                               metrics_port=metrics_port, sample_rate=sample_rate,
                               threads=threads, model_timeout=model_timeout, heartbeat_interval=heartbeat_interval,
                               trust_publishers=list(trust_publisher), allow_unsigned=allow_unsigned,
                               open_model_control=open_model_control,
                               node_targets=list(node_target), tls=tls),
                     say=ui.say, stop_event=stop)
    o = pool.options
    ui.say(f"hyperinfer up: gateway + {o.nodes} node(s) on 127.0.0.1, state {o.state}, repository {o.repository}")
    try:
        pool.prepare(progress=True)
        previous = _install_signals(stop, force)
        try:
            _run(pool, ui, stop, demo, demo_model, demo_requests, exit_after_demo, refresh)
        finally:
            ui.close()
            alive = [c for c in pool.children if c.alive()]
            if alive:
                ui.say(f"stopping {len(alive)} process(es)…")
            killed = pool.stop(force=force)
            for s, h in previous.items():
                signal.signal(s, h)
            if alive:
                extra = f" ({', '.join(c.name for c in killed)} killed after the timeout)" if killed else ""
                ui.say(f"stopped; logs in {o.state}{extra}")
    finally:
        pool.stop()


def _install_signals(stop: threading.Event, force: threading.Event) -> dict:
    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            force.set()  # a second Ctrl-C: do not wait for the children
        stop.set()

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _run(pool: LocalPool, ui: "_UI", stop: threading.Event, demo: bool, demo_model: str | None,
         demo_requests: int, exit_after_demo: bool, refresh: float) -> None:
    t0 = time.monotonic()
    try:
        pool.start()
        gw = pool.gateway
        ui.say(f"gateway pid {gw.pid} listening on {pool.address} (log {gw.log_path}); starting "
               f"{len(pool.nodes)} node(s)…")
        views = pool.wait_ready()
    except Stopped:
        return
    ui.say(f"ready in {time.monotonic() - t0:.1f} s: {len(views)} node(s) serving {', '.join(pool.models)}")
    ui.say(f"endpoint {pool.address}: Open Inference Protocol gRPC (inference.GRPCInferenceService), "
           "pool, health and reflection on one port")
    scheme = "https" if pool.options.tls else "http"
    ui.say(f"endpoint {scheme}://{pool.http_address}/v2: KServe v2 REST (curl, tritonclient.http); "
           f"metrics: {scheme}://{pool.metrics_address}/metrics")
    tls_flag = f" --tls-ca {pool.tls_dir / 'ca.pem'}" if pool.options.tls else ""
    ui.say(f"  try: hyperinfer demo --url {pool.address} --model {_demo_model(pool)}{tls_flag}   |   "
           f"hyperinfer pool status --gateway {pool.address}{tls_flag}")
    for v in views:
        ui.say(f"{v.name} id={v.node_id} operator={v.operator} target={','.join(v.targets) or '-'} "
               f"pid={v.pid} listen={v.address} log={v.log_path}")

    demo_done = threading.Event()
    demo_error: list[BaseException] = []
    if demo:
        def run_demo() -> None:
            from hyperinfer.demo import run

            try:
                run(pool.address, model=demo_model or _demo_model(pool), requests=demo_requests, verify="always",
                    wait=30, receipts_dir=pool.state / "receipts", say=ui.say, tls=pool.client_tls)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                demo_error.append(e)
            finally:
                demo_done.set()

        threading.Thread(target=run_demo, name="demo", daemon=True).start()
    if not exit_after_demo:
        ui.say("serving; Ctrl-C stops the gateway and every node")
    ui.start_live()
    next_status = 0.0
    while not stop.is_set():
        for c in pool.reap():
            left = len(pool.alive_nodes())
            ui.say(f"{c.name} (pid {c.pid}, id {c.node_id[:12]}) is gone: {c.exit_text()}; "
                   f"{left} of {len(pool.nodes)} node(s) left"
                   + ("" if left else "; requests get UNAVAILABLE until a node joins")
                   + f" (log {c.log_path})")
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + refresh
            try:
                ui.status(pool, pool.views(pool.status(timeout=min(5.0, refresh * 2))))
            except Exception as e:  # noqa: BLE001 - the display must not stop the pool
                ui.status(pool, pool.views(None), problem=str(e))
        if demo_done.is_set() and exit_after_demo:
            time.sleep(0.5)  # the ledger writes behind: let the last checks land
            try:
                ui.status(pool, pool.views(pool.status(timeout=5.0)))
            except Exception:  # noqa: BLE001
                pass
            break
        stop.wait(0.25)
    if demo_error and exit_after_demo:
        raise demo_error[0]
    if demo_error:
        ui.say(f"demo failed: {demo_error[0]}")


def _demo_model(pool: LocalPool) -> str:
    names = [m.split("/")[0] for m in pool.models]
    return BUNDLED_MODEL if BUNDLED_MODEL in names else names[0]


class _UI:
    """Messages and the status table: a rich Live table on a terminal, plain lines on changes otherwise."""

    def __init__(self) -> None:
        from hyperinfer.cli._console import out

        self.console = out
        self.tty = out.is_terminal
        self.live = None
        self._last: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def say(self, msg: str) -> None:
        with self._lock:
            if self.tty:
                (self.live.console if self.live else self.console).print(msg, soft_wrap=True, markup=False,
                                                                         highlight=False)
            else:
                sys.stdout.write(msg + "\n")
                sys.stdout.flush()

    def start_live(self) -> None:
        if self.tty:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def status(self, pool: LocalPool, views: list[NodeView], problem: str = "") -> None:
        if self.live is not None:
            self.live.update(self._table(pool, views, problem))
            return
        for v in views:  # plain: one line per node whose numbers changed
            key = (v.state, v.jobs, v.checks, v.faults)
            if self._last.get(v.name) != key:
                self._last[v.name] = key
                self.say(f"status {v.name} state={v.state} requests={v.jobs} checks={v.checks} faults={v.faults}")
        if problem and self._last.get("_problem") != (problem,):
            self._last["_problem"] = (problem,)
            self.say(f"status: {problem}")

    @staticmethod
    def _table(pool: LocalPool, views: list[NodeView], problem: str):
        from rich import box
        from rich.table import Table

        total = sum(v.jobs for v in views)
        title = (f"gateway {pool.address} · {total} requests · {time.strftime('%H:%M:%S')} · Ctrl-C stops all"
                 + (f" · [yellow]{problem}[/]" if problem else ""))
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("node", "id", "operator", "target", "pid", "listen", "state", "requests", "checks", "faults"):
            t.add_column(col, justify="right" if col in ("pid", "requests", "checks", "faults") else "left",
                         no_wrap=True)
        style: Callable[[str], str] = lambda s: {"healthy": "green", "gone": "red", "quarantined": "bold red"}.get(
            s, "yellow")
        for v in views:
            t.add_row(v.name, v.node_id[:12], v.operator, ",".join(v.targets) or "-", str(v.pid), v.address or "-",
                      f"[{style(v.state)}]{v.state}[/]", str(v.jobs), str(v.checks), str(v.faults))
        return t


def register(app: typer.Typer) -> None:
    app.command("up")(up)

"""``hyperinfer pool status``: the gateway's nodes and models, as a table or JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from hyperinfer.cli import _tls

from hyperinfer.pool_status import LEDGER_KEYS, fetch_status

pool_app = typer.Typer(help="Inspect a gateway's pool.", no_args_is_help=True)

def _age(unix_ms: int, now: float) -> str:
    if not unix_ms:
        return "never"
    s = max(0.0, now - unix_ms / 1000)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


_STATE_STYLE = {"healthy": "green", "stale": "yellow", "failed": "yellow", "left": "dim", "quarantined": "bold red"}


def render(status: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from hyperinfer.cli._console import out

    if not out.is_terminal:  # piped: no terminal width to respect, do not squeeze into 80 columns
        out = Console(highlight=False, width=200)

    now = time.time()
    out.print(f"gateway {status['gateway_id']}")
    nodes = status["nodes"]
    show_ledger = any(n[k] for n in nodes for k in LEDGER_KEYS)
    t = Table(title=f"nodes ({len(nodes)})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    # identifiers never wrap or get cut; lists go one item per line
    for col in ("node", "operator", "address", "state", "targets", "load", "seen", "loaded"):
        t.add_column(col, justify="right" if col == "load" else "left",
                     no_wrap=col in ("node", "operator", "address", "state", "load", "seen"),
                     min_width=10 if col in ("targets", "loaded") else None, overflow="fold")
    if show_ledger:
        for col in ("jobs", "checks", "faults", "credits", "stake", "slashed", "rep"):
            t.add_column(col, justify="right")
    for n in nodes:
        style = _STATE_STYLE.get(n["state"], "")
        state = n["state"] + (" (probation)" if n["probation"] else "")
        op = n["operator"] + (" (open)" if n.get("admission") == "open" else "")
        row = [
            n["node_id"][:12], op, n["address"], f"[{style}]{state}[/]" if style else state,
            "\n".join(n["targets"]), f"{n['outstanding']}/{n['capacity']}",
            _age(n["last_heartbeat_unix_ms"], now),
            "\n".join(f"{m['name']}/{m['version']} {m['target_id']}" for m in n["loaded"]) or "-",
        ]
        if show_ledger:
            row += [str(n["jobs"]), str(n["checks"]), str(n["faults"]), f"{n['credits']:.2f}",
                    f"{n['stake']:.2f}", f"{n['slashed']:.2f}", f"{n['reputation']:.2f}"]
        t.add_row(*row)
    if nodes:
        out.print(t)
    else:
        out.print("no nodes have joined")
    m = Table(title=f"models ({len(status['models'])})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "version", "targets", "ready nodes", "sample rate", "audit rate"):
        m.add_column(col, justify="right" if col in ("version", "ready nodes", "sample rate", "audit rate") else "left")
    for x in status["models"]:
        ready = str(x["ready_nodes"]) if x["ready_nodes"] else "[red]0[/]"
        m.add_row(x["name"], str(x["version"]), ",".join(x["targets"]), ready, f"{x['sample_rate']:.3g}",
                  f"{x.get('audit_rate', 0.0):.3g}")
    if status["models"]:
        out.print(m)
    else:
        out.print("no models offered")


@pool_app.command("status")
def status(
    gateway: str = typer.Option("127.0.0.1:8001", "--gateway", envvar="HYPERINFER_GATEWAY",
                                help="HOST:PORT of the gateway."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the gateway."),
    key: Optional[Path] = typer.Option(None, "--key", envvar="HYPERINFER_ADMIN_KEY",
                                       help="Admin private key (its public key is a gateway --admin-key); "
                                            "a closed pool answers only signed calls."),
    tls: bool = _tls.tls_option(),
    tls_ca: Optional[Path] = _tls.ca_option(),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
) -> None:
    """Nodes (state, load, heartbeat, loaded models, ledger) and models (ready nodes)."""
    data = fetch_status(gateway, timeout, tls=_tls.client_tls(tls, tls_ca, tls_cert, tls_key), key=key)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        render(data)


def register(app: typer.Typer) -> None:
    app.add_typer(pool_app, name="pool")

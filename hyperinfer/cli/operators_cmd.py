"""``hyperinfer operators add|list|remove|certify``: who may run nodes in a closed pool.

``add``/``list``/``remove`` work on the gateway's database (``--db``, the same as
``hyperinfer gateway --db``; a running gateway sees changes within a second).
``certify`` is what an operator runs with its own key for each of its nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

operators_app = typer.Typer(help="Admit operators (with a bond) and certify their nodes.", no_args_is_help=True)

_DB_HELP = "Gateway database (SQLite file or postgresql:// URL). Default ~/.local/share/hyperinfer/gateway.db."


def _book(db: Optional[str]):
    from hyperinfer.gateway.config import default_db_path
    from hyperinfer.gateway.operators import OperatorBook
    from hyperinfer.gateway.store import open_store

    store = open_store(db or default_db_path())
    return store, OperatorBook(store)


def _as_dict(o) -> dict:
    return {"operator_id": o.operator_id, "name": o.name, "public_key": o.public_key.hex(), "admission": o.admission,
            "bond": o.bond, "slashed": o.slashed, "remaining": o.remaining, "faults": o.faults, "state": o.state,
            "admitted_ms": o.admitted_ms}


@operators_app.command("add")
def add(
    key: str = typer.Argument(..., help="The operator's public key: 64 hex characters or a key file."),
    name: str = typer.Option(..., "--name", help="Name shown in `pool status`."),
    bond: float = typer.Option(100.0, "--bond", help="Stake the operator puts up; all its nodes share it."),
    db: Optional[str] = typer.Option(None, "--db", envvar="HYPERINFER_GATEWAY_DB", help=_DB_HELP),
) -> None:
    """Admit an operator: its certified nodes may join, and their faults slash its bond."""
    from hyperinfer.cli._console import out
    from hyperinfer.identity import load_public_key

    store, book = _book(db)
    try:
        o = book.add(load_public_key(key), name, bond)
    finally:
        store.close()
    out.print(f"admitted operator {o.operator_id} ({o.name}) with bond {o.bond:g}")


@operators_app.command("list")
def list_cmd(
    db: Optional[str] = typer.Option(None, "--db", envvar="HYPERINFER_GATEWAY_DB", help=_DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Operators with admission, bond, slashed, faults and state."""
    from hyperinfer.cli._console import out

    store, book = _book(db)
    try:
        ops = book.list()
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([_as_dict(o) for o in ops], indent=2))
        return
    if not ops:
        out.print("no operators (admit one with `hyperinfer operators add KEY --name NAME --bond B`)")
        return
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("operator", "name", "admission", "bond", "slashed", "faults", "state"):
        t.add_column(col, justify="right" if col in ("bond", "slashed", "faults") else "left", no_wrap=True)
    for o in ops:
        t.add_row(o.operator_id, o.name, o.admission, f"{o.bond:g}", f"{o.slashed:g}", str(o.faults), o.state)
    out.print(t)


@operators_app.command("remove")
def remove(
    operator: str = typer.Argument(..., help="Operator id, unique id prefix, or name."),
    db: Optional[str] = typer.Option(None, "--db", envvar="HYPERINFER_GATEWAY_DB", help=_DB_HELP),
) -> None:
    """Remove an operator: its nodes are refused at their next heartbeat or join."""
    from hyperinfer.cli._console import out

    store, book = _book(db)
    try:
        o = book.remove(operator)
    finally:
        store.close()
    out.print(f"removed operator {o.operator_id} ({o.name})")


@operators_app.command("certify")
def certify_cmd(
    node_key: str = typer.Argument(..., help="The node's public key: 64 hex characters or its key file."),
    key: Path = typer.Option(..., "--key", help="The operator's private key file (`hyperinfer keys create`)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write the certificate (pass it to "
                                  "`hyperinfer node --operator-cert`)."),
    name: str = typer.Option("", "--name", help="The operator's name, carried in the certificate."),
) -> None:
    """Sign a certificate that puts one node key under this operator."""
    from hyperinfer.cli._console import out
    from hyperinfer.identity import load_key, load_public_key
    from hyperinfer.verify.operators import certify

    cert = certify(load_key(key), load_public_key(node_key), name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(cert.to_bytes())
    out.print(f"certified node {cert.node_id} for operator {cert.operator_id}: {out_path}")


def register(app: typer.Typer) -> None:
    app.add_typer(operators_app, name="operators")

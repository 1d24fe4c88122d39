"""``hyperinfer audit verify|evidence|receipt``: check receipts and dispute evidence offline.

Library functions (:func:`verify_receipt_file`, :func:`evidence_report`) do the
work; the commands print one line per check (✓/✗) and exit 1 if any fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from hyperinfer.cli import _tls

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify.checks import Check

audit_app = typer.Typer(help="Check receipts and dispute evidence offline.", no_args_is_help=True)


def parse_node_keys(values: list[str]) -> dict[str, bytes]:
    """``ID=HEX`` pairs (the key may also be a key file) -> {node id: raw public key}."""
    from hyperinfer.identity import load_public_key

    keys = {}
    for v in values or []:
        node_id, sep, key = v.partition("=")
        if not sep or not node_id or not key:
            raise InvalidArgument(f"--node-key {v!r}: expected NODE_ID=HEX")
        keys[node_id.strip()] = load_public_key(key.strip())
    return keys


def extract_receipt(text: str) -> str:
    """The receipt JSON from a receipt file, or from a saved inference response that carries
    it in ``parameters["hyperinfer.receipt"]`` (plain string or ``{"string_param": ...}``)."""
    from hyperinfer.verify.receipt import RECEIPT_PARAMETER

    try:
        d = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"receipt file is not valid JSON: {e}") from None
    if isinstance(d, dict) and "gateway_signature" not in d:
        p = (d.get("parameters") or {}).get(RECEIPT_PARAMETER)
        if isinstance(p, dict):
            p = p.get("string_param", p.get("stringParam"))
        if isinstance(p, str):
            return p
    return text


def gateway_key(key: str | None, gateway: str | None, tls: Any = None) -> tuple[bytes | None, list[Check]]:
    """The gateway public key from --gateway-key and/or Pool.Status of --gateway."""
    from hyperinfer.identity import load_public_key

    given = load_public_key(key) if key else None
    if not gateway:
        return given, []
    from hyperinfer.pool_status import fetch_gateway_key

    fetched = fetch_gateway_key(gateway, tls=tls)
    if given is None:
        return fetched, []
    return given, [Check(f"--gateway-key matches the key gateway {gateway} reports", given == fetched)]


def gateway_key_from_db(db: str | Path, receipt: str) -> bytes:
    """The key of the gateway the receipt names, as registered in the (shared) gateway database."""
    from hyperinfer.gateway.ledger import LedgerReader

    try:
        gateway_id = str(json.loads(receipt).get("gateway_id", ""))
    except (ValueError, AttributeError):
        raise InvalidArgument("receipt is not a JSON object") from None
    reader = LedgerReader(db)
    try:
        key = reader.gateway_key(gateway_id)
    finally:
        reader.close()
    if key is None:
        raise InvalidArgument(f"gateway {gateway_id[:16]!r} named by the receipt never used the database {db}; "
                              "pass --gateway-key or --gateway")
    return key


def verify_receipt_file(path: str, key: str | None = None, gateway: str | None = None,
                        node_keys: list[str] | None = None, db: str | Path | None = None,
                        tls: Any = None) -> list[Check]:
    from hyperinfer.verify.receipt import verify_receipt

    if path == "-":
        text = sys.stdin.read()
    else:
        p = Path(path)
        if not p.is_file():
            raise InvalidArgument(f"receipt file {p} not found")
        text = p.read_text()
    receipt = extract_receipt(text)
    if key is None and gateway is None and db is not None:
        pub, extra = gateway_key_from_db(db, receipt), []
    else:
        pub, extra = gateway_key(key, gateway, tls)
    return extra + verify_receipt(receipt, pub, parse_node_keys(node_keys or []))


def _fail() -> None:
    # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code,
    # which cli.main() drops (it returns 0 after app()); SystemExit reaches main's handler
    raise SystemExit(1)


def print_checks(checks: list[Check]) -> bool:
    from hyperinfer.cli._console import out

    for c in checks:
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        out.print(f"{mark} {c.name}" + (f" [dim]({c.detail})[/]" if c.detail else ""), soft_wrap=True)
    ok = bool(checks) and all(c.ok for c in checks)
    failed = sum(not c.ok for c in checks)
    out.print("[green]all checks passed[/]" if ok else f"[red]{failed} of {len(checks)} checks failed[/]")
    return ok


def _checks_json(checks: list[Check]) -> str:
    return json.dumps({"ok": bool(checks) and all(c.ok for c in checks),
                       "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}, indent=2)


@audit_app.command("verify")
def verify_cmd(
    receipt: str = typer.Argument(..., help="Receipt JSON file (or a saved response with the "
                                            "hyperinfer.receipt parameter); '-' reads stdin"),
    gateway_key_: Optional[str] = typer.Option(None, "--gateway-key", help="Gateway public key: 64 hex "
                                               "characters or a PEM key file"),
    node_key: list[str] = typer.Option([], "--node-key", help="NODE_ID=HEX: insist the receipt's key for this "
                                       "node is this one (repeatable)"),
    gateway: Optional[str] = typer.Option(None, "--gateway", help="HOST:PORT: fetch the gateway key via Pool.Status"),
    db: Optional[str] = typer.Option(None, "--db", help="Gateway database (SQLite file or postgresql:// URL): "
                                     "use the key of the gateway the receipt names, as registered there"),
    json_: bool = typer.Option(False, "--json", help="Print the checks as JSON"),
    tls: bool = _tls.tls_option(),
    tls_ca: Optional[Path] = _tls.ca_option(),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
) -> None:
    """Check a receipt offline: gateway signature, node signatures, attestation fields."""
    if not gateway_key_ and not gateway and not db:
        raise InvalidArgument("pass --gateway-key HEX|FILE, --gateway HOST:PORT or --db: a receipt is only as "
                              "trustworthy as the gateway key it is checked against")
    checks = verify_receipt_file(receipt, gateway_key_, gateway, node_key, db=db,
                                 tls=_tls.client_tls(tls, tls_ca, tls_cert, tls_key))
    if json_:
        print(_checks_json(checks))
        ok = all(c.ok for c in checks)
    else:
        ok = print_checks(checks)
    if not ok:
        _fail()


def _db(db: Optional[str]) -> Path | str:
    """--db as given: an SQLite path or a postgresql:// URL (kept a string: Path would fold its //)."""
    if db is not None:
        return db
    from hyperinfer.gateway.config import default_db_path

    return default_db_path()


def evidence_report(dispute: Any) -> list[str]:
    """Plain lines describing a dispute."""
    import datetime as dt

    v = dispute.verdict
    when = dt.datetime.fromtimestamp(dispute.created_ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"dispute   {dispute.dispute_id}",
        f"model     {dispute.model_name}/{dispute.model_version}   created {when}",
        f"mode      {'same artifact (digests must be equal)' if dispute.same_artifact else 'different artifacts (tolerance)'}"
        f"; referee {dispute.referee}",
    ]
    for e in dispute.executions():
        try:
            a = e.parsed
            what = f"request {a.request_id}  target {a.target_id}  output {a.output_digest[:16]}…"
        except Exception:  # noqa: BLE001 - shown as a failed check below
            what = "attestation does not parse"
        lines.append(f"{e.role:<10}{e.node_id}  {what}")
    lines.append(f"verdict   {'resolved' if v.resolved else 'UNRESOLVED'}; at fault: {', '.join(v.faults) or 'nobody'}")
    lines.append(f"reason    {v.reason}")
    for f in v.findings:
        ratio = "inf" if f.tolerance_ratio == float("inf") else f"{f.tolerance_ratio:.3g}"
        lines.append(f"          {f.node_id}: {'within' if f.within_tolerance else 'OUTSIDE'} tolerance of the "
                     f"referee (error/tolerance {ratio})" + (f"; {f.reason}" if f.reason else ""))
    return lines


@audit_app.command("evidence")
def evidence_cmd(
    dispute_id: Optional[str] = typer.Argument(None, help="Dispute id (a unique prefix is enough); "
                                               "omit to list recent disputes"),
    db: Optional[str] = typer.Option(None, "--db", help="Gateway database: SQLite file or postgresql:// URL "
                                     "(default: the gateway's default)"),
    node_key: list[str] = typer.Option([], "--node-key", help="NODE_ID=HEX: a node key you trust (repeatable)"),
    limit: int = typer.Option(20, "--limit", help="How many disputes to list"),
) -> None:
    """Show a stored dispute and re-check it: keys, signatures, digests and the verdict, re-computed
    from the stored tensors."""
    from hyperinfer.cli._console import out
    from hyperinfer.gateway.ledger import LedgerReader
    from hyperinfer.verify.dispute import recheck

    reader = LedgerReader(_db(db))
    try:
        if dispute_id is None:
            rows = reader.list_evidence(limit)
            if not rows:
                out.print("no disputes recorded")
            for r in rows:
                out.print(f"{r['dispute_id']}  {r['model_name']}/{r['model_version']}  "
                          f"{'resolved' if r['resolved'] else 'unresolved'}  faults: {', '.join(r['faults']) or '-'}",
                          soft_wrap=True)
            return
        dispute = reader.evidence(dispute_id)
    finally:
        reader.close()
    for line in evidence_report(dispute):
        out.print(line, soft_wrap=True, markup=False)
    if not print_checks(recheck(dispute, parse_node_keys(node_key))):
        _fail()


@audit_app.command("receipt")
def receipt_cmd(
    request_id: str = typer.Argument(..., help="Request id from a receipt (e.g. a pending one)"),
    db: Optional[str] = typer.Option(None, "--db", help="Gateway database: SQLite file or postgresql:// URL "
                                     "(default: the gateway's default)"),
) -> None:
    """Print the latest stored receipt for a request (the final one once a background check ended)."""
    from hyperinfer.errors import NotFound
    from hyperinfer.gateway.ledger import LedgerReader
    from hyperinfer.verify.receipt import receipt_to_json

    reader = LedgerReader(_db(db))
    try:
        r = reader.receipt(request_id)
    finally:
        reader.close()
    if r is None:
        raise NotFound(f"no receipt stored for request {request_id!r}")
    print(receipt_to_json(r))


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")

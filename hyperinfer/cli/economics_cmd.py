"""``hyperinfer economics``: is the sample rate high enough that cheating does not pay?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hyperinfer.cli import _tls

from hyperinfer.errors import InvalidArgument


def economics_cmd(
    reward: float = typer.Option(..., "--reward", help="R: reward per job"),
    stake: float = typer.Option(..., "--stake", help="S: stake slashed per fault"),
    cost: float = typer.Option(..., "--cost", help="C: compute cost a node saves by not computing a job"),
    sample_rate: Optional[float] = typer.Option(None, "--sample-rate", help="P: the sample rate to judge (offline)"),
    gateway: Optional[str] = typer.Option(None, "--gateway", help="HOST:PORT: judge each model's configured "
                                          "sample rate, read via Pool.Status"),
    audit_rate: Optional[float] = typer.Option(None, "--audit-rate", help="A: the gateway's own ONNX Runtime "
                                               "audit rate (offline; with --gateway it is read from the gateway)"),
    key: Optional[str] = typer.Option(None, "--key", envvar="HYPERINFER_ADMIN_KEY",
                                      help="Admin key file for --gateway (closed pools)"),
    tls: bool = _tls.tls_option(),
    tls_ca: Optional[Path] = _tls.ca_option(),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
) -> None:
    """Print the bound C / (R + S) and whether the sample rate is above it (safe) or not (unsafe)."""
    from hyperinfer.cli._console import out
    from hyperinfer.verify.economics import assess, detection_rate, min_sample_rate

    if sample_rate is not None and gateway:
        raise InvalidArgument("pass either --sample-rate or --gateway, not both")
    bound = min_sample_rate(reward, stake, cost)
    out.print(f"bound: cheating is unprofitable when p > C / (R + S) = {cost:g} / ({reward:g} + {stake:g}) "
              f"= {bound:.6g}", soft_wrap=True)
    rates: list[tuple[str, float, float]] = []
    if sample_rate is not None:
        rates.append(("verdict", sample_rate, audit_rate or 0.0))
    elif gateway:
        from hyperinfer.pool_status import fetch_status

        status = fetch_status(gateway, tls=_tls.client_tls(tls, tls_ca, tls_cert, tls_key), key=key)
        rates = [(f"model {m['name']}/{m['version']}", m["sample_rate"],
                  m.get("audit_rate", 0.0) if audit_rate is None else audit_rate) for m in status["models"]]
        if not rates:
            out.print(f"gateway {gateway} offers no models")
    else:
        out.print(f"pick a sample rate above {bound:.6g}" if bound < 1 else
                  "no sample rate deters cheating: raise the stake or the reward")
    for label, p, audit in rates:
        if not audit:
            a = assess(reward, stake, cost, p)
            style = "green" if a.safe else "red"
            out.print(f"{label}: [{style}]{a.verdict()}[/]", soft_wrap=True)
            continue
        # the audits add to the checks for a lone cheater, and are all a colluding pool faces
        for who, colluding in (("lone cheater", False), ("colluding pool", True)):
            d = detection_rate(p, audit, colluding)
            a = assess(reward, stake, cost, d)
            style = "green" if a.safe else "red"
            out.print(f"{label} ({who}, caught with p={d:.4g} from sample {p:g} and audit {audit:g}): "
                      f"[{style}]{a.verdict()}[/]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("economics")(economics_cmd)

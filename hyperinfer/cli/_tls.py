"""The ``--tls-*`` flags every command that opens or serves a gRPC port shares.

Servers (gateway, node): ``--tls-cert/--tls-key`` (what to present) and ``--tls-ca``
(the pool's CA: nodes require client certificates it signed; the gateway checks
nodes with it). Clients (infer, demo, pool status, audit, economics):
``--tls-ca`` checks the gateway (``--tls`` alone: the system's roots),
``--tls-cert/--tls-key`` present a client certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def cert_option() -> Optional[Path]:
    return typer.Option(None, "--tls-cert",
                        help="PEM certificate to present (TLS; with --tls-key).")


def key_option() -> Optional[Path]:
    return typer.Option(None, "--tls-key", help="PEM private key of --tls-cert.")


def ca_option(server: bool = False) -> Optional[Path]:
    help_ = ("PEM CA of the pool: certificates of nodes (and the gateway) it signed are trusted; "
             "nodes accept Worker calls only from clients with such a certificate (mutual TLS)." if server
             else "PEM CA to check the gateway's certificate with (turns TLS on).")
    return typer.Option(None, "--tls-ca", help=help_)


def tls_option() -> bool:
    return typer.Option(False, "--tls", help="Connect with TLS, checking the gateway against the system's "
                                             "root certificates (or --tls-ca).")


def client_tls(tls: bool = False, ca: Optional[Path] = None, cert: Optional[Path] = None,
               key: Optional[Path] = None):
    """TLSFiles for a client channel, or None for plaintext."""
    from hyperinfer.transport.tls import SYSTEM_ROOTS, TLSFiles

    files = TLSFiles.load(cert, key, ca)
    if files is None and tls:
        return SYSTEM_ROOTS
    return files

"""TLS for every gRPC channel: server and channel credentials from PEM files.

Three files, as ``--tls-cert/--tls-key/--tls-ca`` give them:

* a server (gateway, node) presents ``cert``/``key``; with ``ca`` it also asks
  for a client certificate signed by that CA: required on a node's Worker port
  (mutual TLS: only the pool's gateways may call it), optional on the gateway's
  port (OIP clients have none; nodes present theirs);
* a client (node -> gateway, gateway -> node, ``infer``, ``demo``, ``pool
  status``, tritonclient) checks the server against ``ca`` (the system roots
  without one) and presents ``cert``/``key`` when it has them.

Certificates for tests and ``hyperinfer up --tls`` come from :mod:`hyperinfer.pki`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from hyperinfer.errors import InvalidArgument, NotFound


def _read(path: Path | str | None, flag: str) -> bytes | None:
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFound(f"{flag} {p}: file not found")
    data = p.read_bytes()
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{flag} {p}: not a PEM file")
    return data


@dataclass(frozen=True)
class TLSFiles:
    """PEM contents of ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (any may be None)."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None

    @classmethod
    def load(cls, cert: Path | str | None = None, key: Path | str | None = None,
             ca: Path | str | None = None) -> "TLSFiles | None":
        """The files, checked; None when no flag is given (plaintext)."""
        if not any(str(x or "") for x in (cert, key, ca)):
            return None
        if bool(str(cert or "")) != bool(str(key or "")):
            raise InvalidArgument("--tls-cert and --tls-key go together (the certificate and its private key)")
        files = cls(_read(cert, "--tls-cert"), _read(key, "--tls-key"), _read(ca, "--tls-ca"))
        if files.key is not None and b"PRIVATE KEY" not in files.key:
            raise InvalidArgument(f"--tls-key {key}: no PEM private key in it")
        return files

    @property
    def can_serve(self) -> bool:
        return self.cert is not None and self.key is not None

    def server_credentials(self, require_client_cert: bool = False) -> grpc.ServerCredentials:
        """Credentials for a server port. ``require_client_cert`` (needs ``ca``): refuse clients
        without a certificate signed by the CA (mutual TLS)."""
        if not self.can_serve:
            raise InvalidArgument("serving TLS needs --tls-cert and --tls-key")
        if require_client_cert and self.ca is None:
            raise InvalidArgument("mutual TLS needs --tls-ca (the CA that signs the clients' certificates)")
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a client channel: verify the server with ``ca`` (system roots without
        it), present ``cert``/``key`` if given."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


#: a client that wants TLS with the system's root certificates and no client certificate
SYSTEM_ROOTS = TLSFiles()

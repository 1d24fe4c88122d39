"""Build gRPC servers and channels with hyperinfer's limits and standard services."""

from __future__ import annotations

from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hyperinfer.transport.allocator import keep_freed_buffers
from hyperinfer.transport.errors import ErrorInterceptor

if TYPE_CHECKING:
    from hyperinfer.transport.tls import TLSFiles

# Largest message accepted or sent: large enough for a 1x3x640x640 float32 image
# several times over, small enough that one request cannot exhaust memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


# RPCs a server holds at once (running or queued for a thread); more get RESOURCE_EXHAUSTED
DEFAULT_MAX_CONCURRENT_RPCS = 256


def make_server(max_workers: int = 16, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                max_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS, reuse_port: bool = False) -> grpc.Server:
    # SO_REUSEPORT off by default: a second server on a port in use must fail, not share it;
    # on only for the processes of one `hyperinfer gateway --workers N`
    keep_freed_buffers()  # a server's requests reuse their tensor-sized buffers (transport/allocator.py)
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[ErrorInterceptor()],
        options=channel_options(max_message_bytes) + [("grpc.so_reuseport", int(reuse_port))],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def add_health(server: grpc.Server, services: list[str]) -> health.HealthServicer:
    """Standard grpc.health.v1 service; '' is the server as a whole."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *services]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def set_not_serving(servicer: health.HealthServicer, services: list[str]) -> None:
    for name in ["", *services]:
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind a port (TLS with ``credentials``, else plaintext); returns the port actually bound (for ':0')."""
    from hyperinfer.errors import Unavailable

    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as e:
        raise Unavailable(f"cannot listen on {address}: {e}") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {address} (address in use or invalid)")
    return port


def channel(address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: "TLSFiles | None" = None,
            options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A client channel: TLS when ``tls`` is given (its CA checks the server; its certificate, if
    any, is presented), else plaintext."""
    opts = channel_options(max_message_bytes) + list(options or [])
    if tls is not None:
        return grpc.secure_channel(address, tls.channel_credentials(), options=opts)
    return grpc.insecure_channel(address, options=opts)

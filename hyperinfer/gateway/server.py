"""The gateway's one gRPC server: builds, starts and stops it; no logic.

Every gateway service shares one port (default 127.0.0.1:8001): the Pool
service, the Open Inference Protocol service (added by its component through
:meth:`GatewayServer.add_servicer`), the standard ``grpc.health.v1`` service
(``""`` and each service name) and server reflection, so ``grpcurl`` works
without .proto files. Errors are mapped to status codes by the transport
interceptor; message size is bounded (RESOURCE_EXHAUSTED above the limit).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc
from grpc_health.v1 import health
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection

from hyperinfer.errors import FailedPrecondition
from hyperinfer.transport.server import add_health, bind, make_server, set_not_serving

log = logging.getLogger("hyperinfer.gateway")


class GatewayServer:
    def __init__(self, listen: str, *, max_workers: int = 16, max_message_bytes: int,
                 max_concurrent_rpcs: int | None = None, credentials: grpc.ServerCredentials | None = None,
                 reuse_port: bool = False):
        self.listen = listen
        self.credentials = credentials  # TLS when set
        self._server = make_server(max_workers=max_workers, max_message_bytes=max_message_bytes,
                                   max_concurrent_rpcs=max_concurrent_rpcs, reuse_port=reuse_port)
        self._services: list[str] = []
        self._health: health.HealthServicer | None = None
        self.port: int | None = None
        self.started = False

    @property
    def address(self) -> str:
        """The address clients dial (the bound port when listening on port 0)."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}" if self.port is not None else self.listen

    @property
    def services(self) -> list[str]:
        return list(self._services)

    def add_servicer(self, add_fn: Callable[[Any, grpc.Server], None], servicer: Any, service_full_name: str) -> None:
        """Register a generated ``add_XServicer_to_server`` with its servicer, before :meth:`start`.

        ``service_full_name`` (e.g. ``"inference.GRPCInferenceService"``) is
        reported by the health service and by reflection.
        """
        if self.started:
            raise FailedPrecondition(f"cannot add {service_full_name}: the gateway server is already running")
        if service_full_name in self._services:
            raise FailedPrecondition(f"service {service_full_name} is already registered")
        add_fn(servicer, self._server)
        self._services.append(service_full_name)

    def start(self) -> int:
        """Bind, enable health and reflection, start serving; returns the bound port."""
        if self.started:
            raise FailedPrecondition("the gateway server is already running")
        self.port = bind(self._server, self.listen, self.credentials)
        self._health = add_health(self._server, self._services)
        reflection.enable_server_reflection(
            [*self._services, "grpc.health.v1.Health", reflection.SERVICE_NAME], self._server,
            pool=_reflection_pool(),
        )
        self._server.start()
        self.started = True
        return self.port

    def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, then stop; calls in flight get ``grace`` seconds to finish."""
        if not self.started:
            self._server.stop(None)
            return
        if self._health is not None:
            set_not_serving(self._health, self._services)
        self._server.stop(grace).wait()
        self.started = False

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every service the gateway serves, in one pool for reflection: the OIP messages live in
    a private pool (hyperinfer.proto.OIP_POOL), the others in protobuf's default one."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from hyperinfer.proto.inference import grpc_service_pb2, model_config_pb2
    from hyperinfer.proto.v1 import pool_pb2

    pool = descriptor_pool.DescriptorPool()
    for module in (pool_pb2, model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool

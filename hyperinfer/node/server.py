"""Build, start and stop the node's gRPC server (Worker + standard health)."""

from __future__ import annotations

import logging

import grpc

from hyperinfer.node.dataplane import DataPlane
from hyperinfer.node.servicer import Authorize, NodeInfo, WorkerServicer
from hyperinfer.proto.v1 import pool_pb2_grpc
from hyperinfer.transport.server import DEFAULT_MAX_MESSAGE_BYTES, add_health, bind, make_server, set_not_serving

log = logging.getLogger("hyperinfer.node")

WORKER_SERVICE = "hyperinfer.v1.Worker"


class WorkerServer:
    def __init__(self, dataplane: DataPlane, info: NodeInfo, listen: str = "127.0.0.1:0",
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 credentials: grpc.ServerCredentials | None = None, authorize: Authorize | None = None):
        self.dataplane = dataplane
        # more threads than slots, so requests beyond the limit reach the data plane and
        # get RESOURCE_EXHAUSTED at once instead of waiting in gRPC's queue
        self.server: grpc.Server = make_server(max_workers=dataplane.capacity + 4,
                                               max_message_bytes=max_message_bytes)
        pool_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(dataplane, info, authorize), self.server)
        self.health = add_health(self.server, [WORKER_SERVICE])
        self.host = listen.rsplit(":", 1)[0] if ":" in listen else listen
        self.port = bind(self.server, listen, credentials)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "WorkerServer":
        self.server.start()
        return self

    def not_serving(self) -> None:
        set_not_serving(self.health, [WORKER_SERVICE])

    def stop(self, grace: float | None = 10.0) -> None:
        """Refuse new calls, let running ones finish within ``grace`` seconds."""
        self.not_serving()
        self.server.stop(grace).wait()

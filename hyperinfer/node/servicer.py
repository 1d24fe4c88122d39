"""hyperinfer.v1.Worker: protobuf in, :class:`DataPlane` call, protobuf out. Errors are
mapped to status codes by the server's interceptor, not here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hyperinfer.node.converters import device_to_proto, loaded_to_proto
from hyperinfer.node.dataplane import DataPlane
from hyperinfer.node.devices import Device
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport import tensors, wire


@dataclass
class NodeInfo:
    operator: str = ""
    targets: list[str] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)


# (metadata, method, signed fields) -> None, raising when the caller may not call
Authorize = Callable[[Any, str, Mapping[str, Any]], None]


class WorkerServicer(pool_pb2_grpc.WorkerServicer):
    """``authorize``: e.g. :meth:`hyperinfer.node.gatekeeper.Gatekeeper.check` (a node serves only
    its gateways); None serves anyone (a bare worker in tests)."""

    def __init__(self, dataplane: DataPlane, info: NodeInfo, authorize: Authorize | None = None):
        self.dataplane = dataplane
        self.info = info
        self.authorize = authorize

    def Infer(self, request: pool_pb2.InferRequest, context) -> pool_pb2.InferResponse:
        if self.authorize is not None:  # before decoding anything a stranger sent
            from hyperinfer.verify.operators import infer_fields

            self.authorize(context.invocation_metadata(), "Infer",
                           infer_fields(request.request_id, request.model_name, request.model_version))
        inputs = tensors.many_from_proto(request.inputs)
        result = self.dataplane.infer(request.request_id, request.model_name, int(request.model_version), inputs)
        # serialized here, each output copied once (transport/wire.py); gRPC sends the bytes as they are
        return wire.infer_response_bytes(result.outputs, result.attestation, result.signature)

    def Info(self, request: pool_pb2.InfoRequest, context) -> pool_pb2.InfoResponse:
        if self.authorize is not None:
            self.authorize(context.invocation_metadata(), "Info", {})
        dp = self.dataplane
        return pool_pb2.InfoResponse(
            node_id=dp.node_id,
            public_key=dp.public_key,
            operator=self.info.operator,
            targets=list(self.info.targets),
            devices=[device_to_proto(d) for d in self.info.devices],
            loaded=loaded_to_proto(dp.loaded_tuples()),
            outstanding=dp.outstanding,
            capacity=dp.capacity,
        )

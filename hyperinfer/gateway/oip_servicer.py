"""``inference.GRPCInferenceService`` (Open Inference Protocol, KServe v2) on the gateway.

Thin: protobuf in (converters), data plane call, protobuf out. Status codes
come from the transport's error interceptor; messages over the size limit are
refused by gRPC itself with RESOURCE_EXHAUSTED.

:func:`install` attaches the service to a :class:`~hyperinfer.gateway.app.Gateway`
on the gateway's port, next to the Pool service, health and reflection;
``hyperinfer.gateway.app.serve`` calls it (``EXTENSIONS``).
"""

from __future__ import annotations

import logging
from typing import Any

from hyperinfer.gateway import converters
from hyperinfer.gateway.assembly import dataplane_for
from hyperinfer.gateway.dataplane import DataPlane, deadline_from
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("hyperinfer.gateway")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# a client without a deadline reports one far in the future: treat it as none
_NO_DEADLINE_S = 365 * 24 * 3600.0


def _tensor_metadata(items) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in items]


class OIPServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.live())

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        m = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=m.name, version=m.version, extensions=m.extensions)

    def ModelMetadata(self, request, context):
        m = self.dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=m.name, versions=m.versions, platform=m.platform,
            inputs=_tensor_metadata(m.inputs), outputs=_tensor_metadata(m.outputs),
        )

    def ModelInfer(self, request, context):
        req = converters.request_from_proto(request)
        remaining = context.time_remaining()
        if remaining is not None and remaining > _NO_DEADLINE_S:
            remaining = None
        resp = self.dataplane.infer(req, deadline=deadline_from(remaining))
        return converters.response_to_proto(resp)


def install(gateway: Any, **kwargs: Any) -> OIPServicer:
    """Serve the Open Inference Protocol on ``gateway``'s port (before ``gateway.start()``)."""
    servicer = OIPServicer(dataplane_for(gateway, **kwargs))
    gateway.add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, SERVICE_NAME)
    return servicer

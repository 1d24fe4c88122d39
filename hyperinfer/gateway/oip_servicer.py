"""``inference.GRPCInferenceService`` (Open Inference Protocol, KServe v2) on the gateway.

Thin: protobuf in (converters), data plane call, protobuf out. Status codes
come from the transport's error interceptor; messages over the size limit are
refused by gRPC itself with RESOURCE_EXHAUSTED.

Besides the core Open Inference Protocol RPCs it serves Triton's extensions:
ModelStreamInfer (one response per request, in order, errors in the
response's ``error_message`` as Triton does, the stream going on),
ModelStatistics (:mod:`hyperinfer.statistics`), ModelConfig, RepositoryIndex
and RepositoryModelLoad/Unload (:mod:`hyperinfer.gateway.model_control`,
admin-only once the pool has credentials). Shared memory, trace and log
settings answer UNIMPLEMENTED: tensors travel in the request.

:func:`install` attaches the service to a :class:`~hyperinfer.gateway.app.Gateway`
on the gateway's port, next to the Pool service, health and reflection;
``hyperinfer.gateway.app.serve`` calls it (``EXTENSIONS``).
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import json_format

from hyperinfer.errors import HyperinferError, InvalidArgument, Unimplemented
from hyperinfer.gateway import converters
from hyperinfer.gateway.assembly import dataplane_for, model_control_for
from hyperinfer.gateway.dataplane import DataPlane, deadline_from
from hyperinfer.gateway.model_control import ModelControl, parse_override
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.proto.inference import model_config_pb2 as mc
from hyperinfer.statistics import Duration, ModelStats

log = logging.getLogger("hyperinfer.gateway")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# a client without a deadline reports one far in the future: treat it as none
_NO_DEADLINE_S = 365 * 24 * 3600.0


def _tensor_metadata(items) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in items]


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _model_stats(s: ModelStats) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=s.name, version=str(s.version), last_inference=s.last_inference_ms,
        inference_count=s.inference_count, execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success), fail=_duration(s.fail), queue=_duration(s.queue),
            compute_input=_duration(s.compute_input), compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output)),
        # one inference per node run: every execution is a batch of 1 at the gateway
        batch_stats=[pb.InferBatchStatistics(
            batch_size=1, compute_input=_duration(s.compute_input), compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output))] if s.execution_count else [],
    )


def _config_to_proto(config: dict[str, Any], where: str = "config") -> mc.ModelConfig:
    try:
        return json_format.ParseDict(config, mc.ModelConfig())
    except json_format.ParseError as e:
        raise InvalidArgument(f"{where}: not a Triton ModelConfig: {e}") from None


def _repository_parameters(request) -> tuple[str, dict[str, bytes]]:
    """(config, files) from a load request's parameters; anything else is refused by name."""
    config, files = "", {}
    for key, p in request.parameters.items():
        kind = p.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise InvalidArgument("parameters.config: must be a string_param holding JSON")
            config = p.string_param
        elif key.startswith("file:"):
            if kind != "bytes_param":
                raise InvalidArgument(f"parameters[{key!r}]: package files must be bytes_param")
            files[key] = p.bytes_param
        else:
            raise InvalidArgument(f"parameters[{key!r}]: unknown parameter (known: config, file:<version>/<path>)")
    return config, files


class OIPServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, control: ModelControl | None = None):
        self.dataplane = dataplane
        self.control = control

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
        resp = self.dataplane.infer(req, deadline=deadline_from(_remaining(context)))
        return converters.response_bytes(resp)  # sent as they are (transport/errors.ErrorInterceptor)

    # -------------------------------------------------------------- Triton extensions

    def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order. A bad request gets its error in ``error_message``
        (with its id) and the stream goes on, as in Triton."""
        for request in request_iterator:
            try:
                req = converters.request_from_proto(request)
                resp = self.dataplane.infer(req, deadline=deadline_from(_remaining(context)))
                yield pb.ModelStreamInferResponse(infer_response=converters.response_to_proto(resp))
            except HyperinferError as e:
                yield _stream_error(request, f"{e.code.value}: {e}")
            except Exception:  # noqa: BLE001 - one bad request must not end the stream or leak internals
                log.exception("ModelStreamInfer request failed")
                yield _stream_error(request, "INTERNAL: internal server error")

    def ModelStatistics(self, request, context):
        stats = self.dataplane.model_statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_model_stats(s) for s in stats])

    def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=_config_to_proto(self._control().model_config(request.name,
                                                                                             request.version)))

    def RepositoryIndex(self, request, context):
        self._check_repository(request.repository_name)
        entries = self._control().index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in entries])

    def RepositoryModelLoad(self, request, context):
        control = self._control()
        control.authorize(context.invocation_metadata())
        self._check_repository(request.repository_name)
        config, files = _repository_parameters(request)
        if config:  # refuse fields Triton's ModelConfig does not have before anything changes
            _config_to_proto({"name": request.model_name, **parse_override(request.model_name, config)},
                             "parameters.config")
        control.load(request.model_name, config=config, files=files, timeout=_remaining(context))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        control = self._control()
        control.authorize(context.invocation_metadata())
        self._check_repository(request.repository_name)
        for key in request.parameters:
            if key != "unload_dependents":
                raise InvalidArgument(f"parameters[{key!r}]: unknown parameter (known: unload_dependents)")
        control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _control(self) -> ModelControl:
        if self.control is None:
            raise Unimplemented("model control is not enabled on this gateway")
        return self.control

    def _check_repository(self, name: str) -> None:
        root = self._control().root
        if name and name != root.name:
            raise InvalidArgument(f"repository_name: {name!r} is not this gateway's repository "
                                  f"(it has one: {root.name!r}; or leave it empty)")

    def SystemSharedMemoryStatus(self, request, context):
        raise _no_shared_memory()

    def SystemSharedMemoryRegister(self, request, context):
        raise _no_shared_memory()

    def SystemSharedMemoryUnregister(self, request, context):
        raise _no_shared_memory()

    def CudaSharedMemoryStatus(self, request, context):
        raise _no_shared_memory()

    def CudaSharedMemoryRegister(self, request, context):
        raise _no_shared_memory()

    def CudaSharedMemoryUnregister(self, request, context):
        raise _no_shared_memory()

    def TraceSetting(self, request, context):
        raise Unimplemented("trace settings are not supported by the hyperinfer gateway")

    def LogSettings(self, request, context):
        raise Unimplemented("log settings are not supported by the hyperinfer gateway")


def _remaining(context) -> float | None:
    remaining = context.time_remaining()
    if remaining is not None and remaining > _NO_DEADLINE_S:
        return None
    return remaining


def _stream_error(request, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        id=request.id, model_name=request.model_name, model_version=request.model_version))


def _no_shared_memory() -> Unimplemented:
    return Unimplemented("shared memory is not supported by the hyperinfer gateway: the gateway and the "
                         "nodes are different machines; send tensors in the request")


def install(gateway: Any, **kwargs: Any) -> OIPServicer:
    """Serve the Open Inference Protocol on ``gateway``'s port (before ``gateway.start()``)."""
    servicer = OIPServicer(dataplane_for(gateway, **kwargs), model_control_for(gateway))
    gateway.add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, SERVICE_NAME)
    return servicer

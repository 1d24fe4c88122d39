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
import threading
from typing import Any

from hyperinfer.gateway import converters
from hyperinfer.gateway.dataplane import DataPlane, deadline_from
from hyperinfer.gateway.scheduler import DEFAULT_CALL_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, Scheduler
from hyperinfer.gateway.verification import Verifier
from hyperinfer.gateway.worker_client import GrpcWorkerClient
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.verify.sampling import SamplingPolicy

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


class PackageReferee:
    """ONNX Runtime on a package's cleaned model, one session per (name, version), made on
    first use: disputes are rare, so most gateways never pay for a session."""

    def __init__(self, catalog: Any, threads: int | None = 1):
        self.catalog = catalog
        self.threads = threads
        self._lock = threading.Lock()
        self._runners: dict[tuple[str, int], Any] = {}

    def __call__(self, name: str, version: int, inputs):
        key = (name, int(version))
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                from hyperinfer.package import ModelPackage
                from hyperinfer.runtime.ort_runner import ORTRunner

                offer = self.catalog.get(name, int(version))
                package = ModelPackage(offer.path, offer.manifest, offer.manifest_bytes)
                runner = ORTRunner.for_package(package, threads=self.threads)
                self._runners[key] = runner
        return runner.run(inputs)


def make_verifier(gateway: Any, client: Any, policy: SamplingPolicy | None = None,
                  call_timeout: float = DEFAULT_CALL_TIMEOUT_S) -> Verifier:
    """A Verifier on the gateway's ledger (created here if no component installed one),
    its key, and ONNX Runtime on the package as the referee."""
    from hyperinfer.gateway.ledger import Ledger

    if gateway.ledger is None:
        gateway.ledger = Ledger(gateway.store)
    if policy is None:
        policy = getattr(gateway, "sampling_policy", None) or SamplingPolicy(
            default_rate=getattr(gateway.config, "sample_rate", None) or SamplingPolicy.default_rate)
    if gateway.sample_rate is None:
        gateway.sample_rate = lambda name, version: policy.model_rate(name)
    verifier = Verifier(gateway.ledger, policy, PackageReferee(gateway.catalog), client, gateway.key,
                        call_timeout=call_timeout)
    gateway.add_shutdown_hook(lambda: verifier.close(wait=False))
    return verifier


def build(gateway: Any, *, client: Any = None, verifier: Verifier | None = None,
          policy: SamplingPolicy | None = None, call_timeout: float | None = None,
          max_attempts: int | None = None) -> DataPlane:
    """The OIP data plane over a gateway's catalog and registry: scheduler, worker client, verifier.

    Defaults come from the gateway config when it has the field (``node_timeout``,
    ``max_attempts``, ``sample_rate``), else from the scheduler and sampling modules.
    """
    cfg = gateway.config
    call_timeout = call_timeout or getattr(cfg, "node_timeout", None) or DEFAULT_CALL_TIMEOUT_S
    max_attempts = max_attempts or getattr(cfg, "max_attempts", None) or DEFAULT_MAX_ATTEMPTS
    if client is None:
        client = GrpcWorkerClient(timeout=call_timeout, max_message_bytes=cfg.max_message_bytes)
        gateway.add_shutdown_hook(client.close)
    registry = gateway.registry
    if verifier is None:
        verifier = make_verifier(gateway, client, policy, call_timeout)
    scheduler = Scheduler(registry, client, call_timeout=call_timeout, max_attempts=max_attempts,
                          check=verifier.check_result,  # a bad attestation on any attempt is a ledger fault
                          known_nodes=lambda: sum(1 for n in registry.all_nodes() if n.state != "left"))
    return DataPlane(gateway.catalog, registry, scheduler, verifier)


def install(gateway: Any, **kwargs: Any) -> OIPServicer:
    """Serve the Open Inference Protocol on ``gateway``'s port (before ``gateway.start()``)."""
    servicer = OIPServicer(build(gateway, **kwargs))
    gateway.add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, SERVICE_NAME)
    return servicer

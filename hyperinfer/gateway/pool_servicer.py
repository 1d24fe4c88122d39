"""``hyperinfer.v1.Pool`` over gRPC: protobuf in, registry/catalog call, protobuf out.

No logic here; errors are :class:`~hyperinfer.errors.HyperinferError` raised by
the registry and catalog, mapped to status codes by the transport interceptor.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from hyperinfer.gateway.artifacts import Catalog, Offer
from hyperinfer.gateway.registry import Heartbeat, JoinRequest, NodeInfo, Registry
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport.limits import StreamLimiter

log = logging.getLogger("hyperinfer.gateway")

SERVICE_NAME = pool_pb2.DESCRIPTOR.services_by_name["Pool"].full_name

_LEDGER_INT = ("jobs", "checks", "faults")
_LEDGER_FLOAT = ("credits", "stake", "slashed", "reputation")


def device_to_dict(d: pool_pb2.Device) -> dict[str, Any]:
    return {"kind": d.kind, "name": d.name, "arch": d.arch, "count": int(d.count), "features": list(d.features)}


def device_from_dict(d: dict[str, Any]) -> pool_pb2.Device:
    return pool_pb2.Device(
        kind=str(d.get("kind", "")), name=str(d.get("name", "")), arch=str(d.get("arch", "")),
        count=int(d.get("count", 0)), features=[str(f) for f in d.get("features", [])],
    )


def offer_to_proto(o: Offer) -> pool_pb2.ModelOffer:
    return pool_pb2.ModelOffer(name=o.name, version=o.version, manifest=o.manifest_bytes,
                               manifest_signature=o.signature)


def loaded_to_proto(node: NodeInfo) -> list[pool_pb2.LoadedModel]:
    return [
        pool_pb2.LoadedModel(name=n, version=v, target_id=t, artifact_sha256=s)
        for (n, v), (t, s) in sorted(node.loaded.items())
    ]


class PoolServicer(pool_pb2_grpc.PoolServicer):
    """``ledger``: optional object with ``summary(node_id) -> dict`` (jobs, checks, faults,
    credits, stake, slashed, reputation, probation). ``sample_rate``: optional
    ``(model name, version) -> float`` for the models table."""

    def __init__(
        self, registry: Registry, catalog: Catalog, *, gateway_id: str, gateway_public_key: bytes,
        ledger: Any = None, sample_rate: Callable[[str, int], float] | None = None,
        access: Any = None, pool_gateway_keys: Callable[[], list[bytes]] | None = None,
        artifact_streams: StreamLimiter | None = None, gateway_kx: tuple[bytes, bytes] | None = None,
        pool_gateway_kx: Callable[[], list[tuple[bytes, bytes, bytes]]] | None = None,
    ):
        self.registry = registry
        self.catalog = catalog
        self.gateway_id = gateway_id
        self.gateway_public_key = gateway_public_key
        self.ledger = ledger
        self.sample_rate = sample_rate
        # gateway.access.Access: who may fetch artifacts and read status (None: anyone)
        self.access = access
        # keys of every gateway sharing this pool's store, announced to nodes
        self.pool_gateway_keys = pool_gateway_keys or (lambda: [gateway_public_key])
        self.audit_rate: Callable[[str, int], float] | None = None
        self.artifact_streams = artifact_streams or StreamLimiter(what="artifact streams")
        # (X25519 public key, Ed25519 signature over it): Worker-call sessions (verify.session)
        self.gateway_kx = gateway_kx
        # the pool's gateways' signed X25519 keys (Ed25519 key, X25519 key, signature), announced
        self.pool_gateway_kx = pool_gateway_kx or (
            lambda: [(gateway_public_key, *gateway_kx)] if gateway_kx else [])

    def _interval_ms(self) -> int:
        return int(self.registry.heartbeat_interval * 1000)

    def _offers(self) -> list[pool_pb2.ModelOffer]:
        return [offer_to_proto(o) for o in self.catalog.offers()]

    def Challenge(self, request: pool_pb2.ChallengeRequest, context) -> pool_pb2.ChallengeResponse:
        ch = self.registry.challenge(request.public_key)
        return pool_pb2.ChallengeResponse(
            nonce=ch.nonce, gateway_id=self.gateway_id, gateway_public_key=self.gateway_public_key,
            expires_unix_ms=int(ch.expires * 1000),
        )

    def Join(self, request: pool_pb2.JoinRequest, context) -> pool_pb2.JoinResponse:
        node = self.registry.join(JoinRequest(
            public_key=request.public_key, nonce=request.nonce, signature=request.signature,
            operator=request.operator, listen_address=request.listen_address, targets=list(request.targets),
            max_concurrency=request.max_concurrency, devices=[device_to_dict(d) for d in request.devices],
            software_version=request.software_version, operator_cert=bytes(request.operator_cert),
            kx_public_key=bytes(request.kx_public_key) if self.gateway_kx else b"",
            kx_signature=bytes(request.kx_signature) if self.gateway_kx else b"",
        ))
        resp = pool_pb2.JoinResponse(node_id=node.node_id, heartbeat_interval_ms=self._interval_ms(),
                                     models=self._offers(), gateway_id=self.gateway_id,
                                     pool_gateway_keys=self.pool_gateway_keys())
        if self.gateway_kx and node.kx_public_key:  # the node agreed a session: answer with our half
            resp.gateway_kx_public_key, resp.gateway_kx_signature = self.gateway_kx
            resp.pool_gateway_kx.extend(self._kx_to_proto())
        return resp

    def _kx_to_proto(self) -> list[pool_pb2.GatewayKx]:
        return [pool_pb2.GatewayKx(gateway_public_key=k, kx_public_key=x, signature=sig)
                for k, x, sig in self.pool_gateway_kx()]

    def Heartbeat(self, request: pool_pb2.HeartbeatRequest, context) -> pool_pb2.HeartbeatResponse:
        node = self.registry.heartbeat(Heartbeat(
            node_id=request.node_id, timestamp_ms=request.timestamp_ms, outstanding=request.outstanding,
            capacity=request.capacity,
            loaded=[(m.name, m.version, m.target_id, m.artifact_sha256) for m in request.loaded],
            signature=request.signature,
        ))
        return pool_pb2.HeartbeatResponse(heartbeat_interval_ms=self._interval_ms(), models=self._offers(),
                                          pool_gateway_keys=self.pool_gateway_keys(),
                                          pool_gateway_kx=self._kx_to_proto() if node.kx_public_key else [])

    def Leave(self, request: pool_pb2.LeaveRequest, context) -> pool_pb2.LeaveResponse:
        self.registry.leave(request.node_id, request.timestamp_ms, request.signature)
        return pool_pb2.LeaveResponse()

    def FetchArtifact(self, request: pool_pb2.FetchArtifactRequest, context) -> Iterator[pool_pb2.ArtifactChunk]:
        if self.access is not None and context is not None:  # None: called in process, not over the wire
            from hyperinfer.verify.operators import fetch_fields

            self.access.check_fetch(context.invocation_metadata(), fetch_fields(
                request.model_name, request.model_version, request.target_id, request.sha256, request.offset))
        chunks = self.catalog.chunks(request.model_name, request.model_version, request.target_id,
                                     request.sha256, request.offset)
        # a bounded number of streams at once, idle ones cancelled (transport.limits)
        for c in self.artifact_streams.stream(context, chunks):
            yield pool_pb2.ArtifactChunk(offset=c.offset, data=c.data, total_size=c.total_size)

    def _ledger_fields(self, node_id: str) -> dict[str, Any]:
        if self.ledger is None:
            return {}
        try:
            summary = self.ledger.summary(node_id) or {}
        except Exception:  # noqa: BLE001 - status must still answer if the ledger breaks
            log.exception("ledger summary failed for node %s", node_id)
            return {}
        out: dict[str, Any] = {k: int(summary.get(k, 0) or 0) for k in _LEDGER_INT}
        out.update({k: float(summary.get(k, 0.0) or 0.0) for k in _LEDGER_FLOAT})
        out["probation"] = bool(summary.get("probation", False))
        return out

    def _operator(self, n: NodeInfo) -> dict[str, Any]:
        op = self.registry.operator_of(n.node_id) if hasattr(self.registry, "operator_of") else None
        if op is None:
            return {"operator": n.operator}
        return {"operator": op.name, "operator_id": op.operator_id, "admission": op.admission}

    def Status(self, request: pool_pb2.StatusRequest, context) -> pool_pb2.StatusResponse:
        if self.access is not None and context is not None:  # None: called in process, not over the wire
            self.access.check_status(context.invocation_metadata())
        resp = pool_pb2.StatusResponse(gateway_id=self.gateway_id, gateway_public_key=self.gateway_public_key,
                                       open_pool=bool(self.access is None or self.access.open_pool))
        for n in self.registry.all_nodes():
            resp.nodes.append(pool_pb2.NodeStatus(
                node_id=n.node_id, address=n.address, targets=list(n.targets), **self._operator(n),
                devices=[device_from_dict(d) for d in n.devices],
                state="failed" if n.failed and n.state == "healthy" else n.state,
                outstanding=n.outstanding, capacity=n.capacity,
                last_heartbeat_unix_ms=int(n.last_heartbeat * 1000), loaded=loaded_to_proto(n),
                **self._ledger_fields(n.node_id),
            ))
        for o in self.catalog.offers():
            rate = 0.0
            if self.sample_rate is not None:
                try:
                    rate = float(self.sample_rate(o.name, o.version))
                except Exception:  # noqa: BLE001
                    log.exception("sample_rate failed for %s/%s", o.name, o.version)
            audit = 0.0
            if self.audit_rate is not None:
                try:
                    audit = float(self.audit_rate(o.name, o.version))
                except Exception:  # noqa: BLE001
                    log.exception("audit_rate failed for %s/%s", o.name, o.version)
            resp.models.append(pool_pb2.ModelStatus(
                name=o.name, version=o.version, targets=o.targets, sample_rate=rate, audit_rate=audit,
                ready_nodes=len(self.registry.schedulable_nodes(o.name, o.version)),
            ))
        return resp

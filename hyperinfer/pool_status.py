"""A client of the gateway's ``Pool.Status``: the pool as plain values.

Used by ``hyperinfer pool status``, ``audit``, ``economics`` and :mod:`hyperinfer.local_pool`.
"""

from __future__ import annotations

from typing import Any

from hyperinfer.errors import Unavailable

LEDGER_KEYS = ("jobs", "checks", "faults", "credits", "stake", "slashed", "reputation", "probation")


def fetch_status(gateway: str, timeout: float = 10.0, tls: Any = None, key: Any = None) -> dict[str, Any]:
    """Call Pool.Status and return plain values (what ``--json`` prints); ``tls``: a
    :class:`hyperinfer.transport.tls.TLSFiles` for a TLS gateway; ``key``: an admin private key
    (or its file) that signs the call (a closed pool answers only signed calls)."""
    import grpc

    from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
    from hyperinfer.transport.errors import error_from_rpc
    from hyperinfer.transport.server import channel

    with channel(gateway, tls=tls) as ch:
        try:
            resp = pool_pb2_grpc.PoolStub(ch).Status(pool_pb2.StatusRequest(), timeout=timeout,
                                                     metadata=admin_metadata(key, "Status"))
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"cannot reach gateway at {gateway} ({e.code().name.lower()})") from None
            raise error_from_rpc(e) from None
    return status_to_dict(resp)


def fetch_gateway_key(gateway: str, timeout: float = 10.0, tls: Any = None) -> bytes:
    """The gateway's public key, from ``Pool.Challenge`` (open to anyone, unlike Status)."""
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
    from hyperinfer.transport.errors import error_from_rpc
    from hyperinfer.transport.server import channel
    from hyperinfer.verify.signing import public_bytes

    with channel(gateway, tls=tls) as ch:
        try:
            resp = pool_pb2_grpc.PoolStub(ch).Challenge(
                pool_pb2.ChallengeRequest(public_key=public_bytes(Ed25519PrivateKey.generate())), timeout=timeout)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"cannot reach gateway at {gateway} ({e.code().name.lower()})") from None
            raise error_from_rpc(e) from None
    return bytes(resp.gateway_public_key)


def admin_metadata(key: Any, method: str) -> list[tuple[str, str]] | None:
    """Signed-call metadata for an admin call (None without a key)."""
    if key is None or key == "":
        return None
    from hyperinfer.verify.operators import sign_call

    if not hasattr(key, "sign"):
        from hyperinfer.identity import load_key

        key = load_key(key)
    return sign_call(key, method, "")


def status_to_dict(resp) -> dict[str, Any]:
    nodes = []
    for n in resp.nodes:
        nodes.append({
            "node_id": n.node_id, "operator": n.operator, "operator_id": n.operator_id or n.operator,
            "admission": n.admission, "address": n.address, "state": n.state,
            "targets": list(n.targets),
            "devices": [{"kind": d.kind, "name": d.name, "arch": d.arch, "count": d.count,
                         "features": list(d.features)} for d in n.devices],
            "outstanding": n.outstanding, "capacity": n.capacity,
            "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
            "loaded": [{"name": m.name, "version": m.version, "target_id": m.target_id,
                        "artifact_sha256": m.artifact_sha256} for m in n.loaded],
            **{k: getattr(n, k) for k in LEDGER_KEYS},
        })
    models = [{"name": m.name, "version": m.version, "targets": list(m.targets), "sample_rate": m.sample_rate,
               "audit_rate": m.audit_rate, "ready_nodes": m.ready_nodes} for m in resp.models]
    return {"gateway_id": resp.gateway_id, "gateway_public_key": resp.gateway_public_key.hex(),
            "open_pool": resp.open_pool, "nodes": nodes, "models": models}

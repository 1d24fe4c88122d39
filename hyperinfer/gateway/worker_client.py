"""The gateway's client for ``hyperinfer.v1.Worker/Infer`` on nodes.

One channel and stub per node address, created on first use and reused
(creating a channel per request costs a TCP and HTTP/2 handshake, far more
than the call). Every call has a deadline. gRPC errors come back as
:class:`HyperinferError` with the node's status code, so the scheduler can
decide what to retry without knowing about gRPC.

Caller authentication: a call to a node that sent an X25519 key at its last join
(stored with the node) carries an HMAC with the session key this gateway derives
from it (:mod:`hyperinfer.verify.session`, microseconds); any other call an
Ed25519 signature (``sign_call``, ~0.1 ms here and ~0.3 ms on the node). A node
without that session (it re-joined a moment ago or restarted; or it has not yet
heard this gateway's X25519 key, announced by the gateway it joined) answers
UNAUTHENTICATED before running anything; the call is then sent once more,
signed, and calls to that node are signed for :data:`SESSION_RETRY_S`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import grpc
import numpy as np

from hyperinfer.errors import Code, HyperinferError
from hyperinfer.gateway.verification import WorkerResult
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport import tensors, wire
from hyperinfer.transport.errors import error_from_rpc
from hyperinfer.transport.server import DEFAULT_MAX_MESSAGE_BYTES
from hyperinfer.transport.server import channel as make_channel
from hyperinfer.transport.tls import TLSFiles
from hyperinfer.verify.operators import infer_fields, sign_call
from hyperinfer.verify.session import Session, gateway_kx_key, gateway_session, mac_call
from hyperinfer.verify.signing import key_id

DEFAULT_TIMEOUT_S = 30.0
# after a node refused a session: sign calls to it for this long, then try the session again (the
# node learns other gateways' X25519 keys with its next heartbeat)
SESSION_RETRY_S = 10.0


class GrpcWorkerClient:
    """WorkerClient over gRPC. Thread-safe; call :meth:`close` on shutdown."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 tls: TLSFiles | None = None, signer: Any = None):
        """``signer``: the gateway's key; nodes serve only calls their gateway signed."""
        self.signer = signer
        self.timeout = float(timeout)
        self.tls = tls  # mutual TLS to nodes: their certificates checked with the CA, ours presented
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, pool_pb2_grpc.WorkerStub, Any]] = {}
        # Worker-call sessions: node id -> (its X25519 key, the session, monotonic time before which
        # calls are signed instead because the node refused the session)
        self._sessions: dict[str, tuple[bytes, Session | None, float]] = {}
        if signer is not None:
            self.gateway_id = key_id(signer)
            self._kx = gateway_kx_key(signer)

    def _session(self, node: Any) -> Session | None:
        """The session with ``node`` if it sent an X25519 key at its last join (and has not just
        refused the session)."""
        kx = getattr(node, "kx_public_key", b"")
        if not kx:
            return None
        entry = self._sessions.get(node.node_id)
        if entry is not None and entry[0] == kx:
            return entry[1] if entry[2] <= time.monotonic() else None
        try:  # once per node join: X25519 + HKDF, ~0.1 ms
            session: Session | None = gateway_session(self.signer, node.node_id, kx, self._kx)
        except HyperinferError:
            session = None
        self._sessions[node.node_id] = (kx, session, 0.0)
        return session

    def _refused(self, node: Any, session: Session) -> None:
        self._sessions[node.node_id] = (node.kx_public_key, session, time.monotonic() + SESSION_RETRY_S)

    def _stub(self, address: str) -> pool_pb2_grpc.WorkerStub:
        return self._entry(address)[1]

    def _infer_call(self, address: str):
        return self._entry(address)[2]

    def _entry(self, address: str) -> tuple:
        entry = self._stubs.get(address)  # dict read is atomic: no lock on the hot path
        if entry is None:
            with self._lock:
                entry = self._stubs.get(address)
                if entry is None:
                    # no transparent gRPC retries: the scheduler retries on another node itself
                    ch = make_channel(address, self.max_message_bytes, tls=self.tls,
                                      options=[("grpc.enable_retries", 0)])
                    # Infer takes the request already serialized (transport/wire.py: the tensor
                    # bytes copied once, not protobuf's several times)
                    infer = ch.unary_unary("/hyperinfer.v1.Worker/Infer", request_serializer=None,
                                           response_deserializer=pool_pb2.InferResponse.FromString)
                    entry = (ch, pool_pb2_grpc.WorkerStub(ch), infer)
                    self._stubs[address] = entry
        return entry

    def forget(self, address: str) -> None:
        """Close the channel to a node that left (a new one is made if it comes back)."""
        with self._lock:
            entry = self._stubs.pop(address, None)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        with self._lock:
            entries, self._stubs = list(self._stubs.values()), {}
        for ch, *_ in entries:
            ch.close()

    def infer(self, node: Any, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> WorkerResult:
        request = wire.infer_request_bytes(request_id, model_name, int(model_version), inputs)
        metadata, session = None, None
        if self.signer is not None:
            fields = infer_fields(request_id, model_name, int(model_version))
            session = self._session(node)
            metadata = mac_call(session, "Infer", fields) if session is not None else \
                sign_call(self.signer, "Infer", node.node_id, fields)
        deadline = self.timeout if timeout is None else max(float(timeout), 0.001)
        try:
            response = self._infer_call(node.address)(request, timeout=deadline, wait_for_ready=False,
                                                      metadata=metadata)
        except grpc.RpcError as e:
            err = error_from_rpc(e)
            if session is None or err.code != Code.UNAUTHENTICATED:
                raise HyperinferError(f"node {node.node_id} at {node.address}: {err}", err.code) from None
            # the node refused the session before running anything: sign for a while (a new join
            # key starts over at once) and send this call once more
            self._refused(node, session)
            try:
                response = self._infer_call(node.address)(
                    request, timeout=deadline, wait_for_ready=False,
                    metadata=sign_call(self.signer, "Infer", node.node_id, fields))
            except grpc.RpcError as e2:
                err = error_from_rpc(e2)
                raise HyperinferError(f"node {node.node_id} at {node.address}: {err}", err.code) from None
        try:
            outputs = tensors.many_from_proto(response.outputs)
        except HyperinferError as e:
            # malformed tensors from a node are the node's fault, not the client's
            raise HyperinferError(f"node {node.node_id} returned a malformed output: {e}", Code.DATA_LOSS) from None
        return WorkerResult(outputs, bytes(response.attestation), bytes(response.signature))


class LocalWorkerClient:
    """WorkerClient that calls node data planes in this process (tests, one-process pools).

    ``dataplanes``: node id -> object with ``infer(request_id, model_name, model_version, inputs)``
    returning (outputs, attestation, signature), e.g. :class:`hyperinfer.node.dataplane.DataPlane`.
    """

    def __init__(self, dataplanes: Mapping[str, Any]):
        self.dataplanes = dict(dataplanes)

    def infer(self, node: Any, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> WorkerResult:
        dp = self.dataplanes.get(node.node_id)
        if dp is None:
            raise HyperinferError(f"node {node.node_id} is not reachable", Code.UNAVAILABLE)
        outputs, attestation, signature = dp.infer(request_id, model_name, int(model_version), inputs)
        return WorkerResult(dict(outputs), attestation, signature)

    def close(self) -> None:
        pass

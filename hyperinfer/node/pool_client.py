"""The node's side of ``hyperinfer.v1.Pool``: join, heartbeats, artifact download, leave.

Protocol (design §7):

1. ``Challenge(public_key)`` -> a single-use nonce and the gateway's id.
2. ``Join``: the node signs ``payloads.join_payload`` (nonce, gateway id, node id,
   operator, listen address, targets, max concurrency). With a gatekeeper it also
   sends a fresh X25519 key, signed (``verify.session``); the answer carries the
   gateway's signed X25519 key (and those of the pool's other gateways), and both
   sides derive the Worker-call session key.
   The answer carries the heartbeat interval and the models on offer.
3. ``Heartbeat`` every interval, signed (``payloads.heartbeat_payload``), with the
   load and the models loaded; the answer carries the current offers (and the
   pool's gateways, with their signed X25519 keys: sessions with new ones).
   NOT_FOUND / UNAUTHENTICATED (the gateway forgot us, e.g. it restarted without
   its store) -> join again with the same key, hence the same node id.
   UNAVAILABLE / DEADLINE_EXCEEDED -> keep trying with capped backoff.
4. ``Leave`` on shutdown, signed (``payloads.leave_payload``).

Offers go to a callback; loading happens elsewhere so that a long download
never delays a heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import hyperinfer
from hyperinfer.errors import Code, HyperinferError
from hyperinfer.node.cache import Chunk, ChunkSource
from hyperinfer.node.converters import device_to_proto, loaded_to_proto, offers_from_proto
from hyperinfer.node.dataplane import DataPlane
from hyperinfer.node.devices import Device
from hyperinfer.node.models import Offer
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport.errors import error_from_rpc
from hyperinfer.transport.server import channel as make_channel
from hyperinfer.transport.tls import TLSFiles
from hyperinfer.verify import payloads, session
from hyperinfer.verify.signing import fingerprint, sign

log = logging.getLogger("hyperinfer.node")

DEFAULT_HEARTBEAT_S = 2.0
RPC_TIMEOUT_S = 10.0
# one FetchArtifact stream; a longer download resumes from where the stream stopped
FETCH_TIMEOUT_S = 300.0
_REJOIN = {Code.NOT_FOUND, Code.UNAUTHENTICATED}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _kx_entries(entries: Sequence[pool_pb2.GatewayKx]) -> list[tuple[bytes, bytes, bytes]]:
    return [(bytes(e.gateway_public_key), bytes(e.kx_public_key), bytes(e.signature)) for e in entries]


@dataclass
class JoinSpec:
    """What the node declares when it joins."""

    operator: str
    listen_address: str  # host:port the gateway calls Worker on
    targets: list[str]
    devices: list[Device] = field(default_factory=list)


class PoolClient:
    def __init__(self, gateway: str, key: Ed25519PrivateKey, dataplane: DataPlane, spec: JoinSpec,
                 on_offers: Callable[[Sequence[Offer]], None] = lambda offers: None,
                 on_joined: Callable[[pool_pb2.JoinResponse], None] = lambda resp: None,
                 backoff_cap_s: float = 10.0, channel: grpc.Channel | None = None, tls: TLSFiles | None = None,
                 gatekeeper: Any = None, operator_cert: bytes = b""):
        self.gateway = gateway
        self._key = key
        self.dataplane = dataplane
        self.spec = spec
        self.on_offers = on_offers
        self.on_joined = on_joined
        self.backoff_cap_s = backoff_cap_s
        # node.gatekeeper.Gatekeeper: pins the gateway key at join, learns the pool's gateways
        self.gatekeeper = gatekeeper
        self.operator_cert = bytes(operator_cert)
        self._channel = channel or make_channel(gateway, tls=tls)
        self.stub = pool_pb2_grpc.PoolStub(self._channel)
        self.joined = False
        self.gateway_id = ""
        self.interval_s = DEFAULT_HEARTBEAT_S
        self.joins = 0  # how many times this client joined (re-joins after a gateway restart count)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and heartbeat_soon()
        self._thread: threading.Thread | None = None
        self._last_ts = 0
        self._ts_lock = threading.Lock()

    @property
    def node_id(self) -> str:
        return self.dataplane.node_id

    def _timestamp_ms(self) -> int:
        """Wall-clock ms, strictly increasing: the gateway refuses a signed message that is
        not newer than the last one (replay protection)."""
        with self._ts_lock:
            self._last_ts = max(_now_ms(), self._last_ts + 1)
            return self._last_ts

    # ------------------------------------------------------------ one call each

    def _call(self, method, request, timeout: float = RPC_TIMEOUT_S):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def join(self) -> pool_pb2.JoinResponse:
        pub = self.dataplane.public_key
        ch = self._call(self.stub.Challenge, pool_pb2.ChallengeRequest(public_key=pub))
        if ch.gateway_public_key and len(ch.gateway_public_key) == 32 and ch.gateway_id and \
                fingerprint(bytes(ch.gateway_public_key)) != ch.gateway_id:
            raise HyperinferError("gateway id does not match the gateway's public key", Code.UNAUTHENTICATED)
        if self.gatekeeper is not None:  # before signing anything for it
            self.gatekeeper.pin(bytes(ch.gateway_public_key), ch.gateway_id)
        spec = self.spec
        payload = payloads.join_payload(
            nonce=bytes(ch.nonce), gateway_id=ch.gateway_id, node_id=self.node_id, operator=spec.operator,
            listen_address=spec.listen_address, targets=spec.targets, max_concurrency=self.dataplane.capacity,
        )
        kx = kx_pub = None
        if self.gatekeeper is not None:  # a fresh key per join: a re-join rotates the session
            kx = session.new_kx_key()
            kx_pub = session.kx_public(kx)
        resp = self._call(self.stub.Join, pool_pb2.JoinRequest(
            public_key=pub, nonce=ch.nonce, signature=sign(self._key, payload), operator=spec.operator,
            listen_address=spec.listen_address, targets=spec.targets,
            devices=[device_to_proto(d) for d in spec.devices], max_concurrency=self.dataplane.capacity,
            software_version=hyperinfer.__version__, operator_cert=self.operator_cert,
            kx_public_key=kx_pub or b"",
            kx_signature=session.sign_node_kx(self._key, kx_pub, nonce=bytes(ch.nonce), gateway_id=ch.gateway_id)
            if kx_pub else b"",
        ))
        if self.gatekeeper is not None:
            self.gatekeeper.announce(resp.pool_gateway_keys)
            self._agree_session(bytes(ch.gateway_public_key), resp, kx, kx_pub)
        if resp.node_id and resp.node_id != self.node_id:
            log.warning("gateway calls this node %s, its key says %s", resp.node_id, self.node_id)
        self.gateway_id = resp.gateway_id or ch.gateway_id
        self._set_interval(resp.heartbeat_interval_ms)
        self.joined = True
        self.joins += 1
        self.on_joined(resp)
        self.on_offers(offers_from_proto(resp.models))
        return resp

    def _agree_session(self, gateway_key: bytes, resp: pool_pb2.JoinResponse, kx: Any, kx_pub: bytes | None) -> None:
        """The Worker-call session with the gateway just joined; without one (an older gateway, or
        its X25519 key does not carry its signature) its calls must be signed with Ed25519."""
        if kx is not None and resp.gateway_kx_public_key:
            try:
                self.gatekeeper.establish(gateway_key, bytes(resp.gateway_kx_public_key),
                                          bytes(resp.gateway_kx_signature), kx, kx_pub)
                self.gatekeeper.learn(_kx_entries(resp.pool_gateway_kx))  # the pool's other gateways
                return
            except HyperinferError as e:
                log.warning("no worker-call session with gateway %s: %s", fingerprint(gateway_key)[:12], e)
        self.gatekeeper.forget_sessions()

    def heartbeat(self) -> pool_pb2.HeartbeatResponse:
        dp = self.dataplane
        ts, outstanding, loaded = self._timestamp_ms(), dp.outstanding, dp.loaded_tuples()
        payload = payloads.heartbeat_payload(node_id=self.node_id, timestamp_ms=ts, outstanding=outstanding,
                                             capacity=dp.capacity, loaded=loaded)
        resp = self._call(self.stub.Heartbeat, pool_pb2.HeartbeatRequest(
            node_id=self.node_id, timestamp_ms=ts, outstanding=outstanding, capacity=dp.capacity,
            loaded=loaded_to_proto(loaded), signature=sign(self._key, payload),
        ))
        self._set_interval(resp.heartbeat_interval_ms)
        if self.gatekeeper is not None and resp.pool_gateway_keys:
            self.gatekeeper.announce(resp.pool_gateway_keys)
            if resp.pool_gateway_kx:  # gateways that joined the pool since: sessions with them too
                self.gatekeeper.learn(_kx_entries(resp.pool_gateway_kx))
        self.on_offers(offers_from_proto(resp.models))
        return resp

    def leave(self, timeout: float = 3.0) -> bool:
        """Best effort: a gateway that is down forgets us on its own."""
        if not self.joined:
            return False
        ts = self._timestamp_ms()
        sig = sign(self._key, payloads.leave_payload(node_id=self.node_id, timestamp_ms=ts))
        try:
            self._call(self.stub.Leave, pool_pb2.LeaveRequest(node_id=self.node_id, timestamp_ms=ts, signature=sig),
                       timeout=timeout)
            self.joined = False
            return True
        except HyperinferError as e:
            log.warning("leave failed: %s", e)
            return False

    def fetch(self, name: str, version: int, target_id: str, sha256: str) -> ChunkSource:
        """A chunk source for :class:`ArtifactCache` over ``Pool.FetchArtifact``."""

        def chunks(offset: int):
            from hyperinfer.verify.operators import fetch_fields, sign_call

            req = pool_pb2.FetchArtifactRequest(model_name=name, model_version=version, target_id=target_id,
                                                sha256=sha256, offset=offset)
            # closed pool API: only a joined node gets artifacts; the call is signed with its key
            md = sign_call(self._key, "FetchArtifact", self.gateway_id,
                           fetch_fields(name, version, target_id, sha256, offset))
            try:
                for c in self.stub.FetchArtifact(req, timeout=FETCH_TIMEOUT_S, metadata=md):
                    yield Chunk(int(c.offset), bytes(c.data), int(c.total_size))
            except grpc.RpcError as e:
                raise error_from_rpc(e) from None

        return chunks

    # ------------------------------------------------------------ background loop

    def _set_interval(self, ms: int) -> None:
        if ms > 0:
            self.interval_s = max(ms / 1000.0, 0.05)

    def start(self) -> "PoolClient":
        self._thread = threading.Thread(target=self._loop, name="pool-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                if not self.joined:
                    self.join()
                    log.info("joined gateway %s at %s as node %s", self.gateway_id, self.gateway, self.node_id)
                else:
                    self.heartbeat()
                backoff = 0.25
                wait = self.interval_s
            except HyperinferError as e:
                if e.code in _REJOIN and self.joined:
                    log.warning("gateway no longer knows this node (%s); joining again", e)
                    self.joined = False
                    wait = 0.0
                else:
                    # an outage is logged once; anything else (a refused join) every time
                    transient = e.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
                    level = logging.WARNING if not transient or backoff == 0.25 else logging.DEBUG
                    log.log(level, "gateway %s: %s: %s; retrying in %.1fs",
                            self.gateway, e.code.value, e, backoff)
                    wait = backoff
                    backoff = min(backoff * 2, self.backoff_cap_s)
            except Exception:  # never let the heartbeat thread die
                log.exception("unexpected error talking to the gateway")
                wait = backoff
                backoff = min(backoff * 2, self.backoff_cap_s)
            self._wake.wait(wait)
            self._wake.clear()

    def heartbeat_soon(self) -> None:
        """Send the next heartbeat now (a model just loaded: the gateway learns it at once
        instead of up to one interval later)."""
        self._wake.set()

    def stop(self, leave: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=RPC_TIMEOUT_S + 1)
        if leave:
            self.leave()
        self._channel.close()

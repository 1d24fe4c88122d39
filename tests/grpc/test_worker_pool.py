"""The node against a Pool service over real gRPC: signed join and heartbeats, offers
fetched in chunks and loaded, re-join when forgotten, survival across a gateway
restart, Leave on shutdown.

The Pool here is a small protocol-checking servicer (it verifies every signature
the way the design says a gateway must), so these tests pin the node's side of
the wire independently of the gateway's registry.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import grpc
import numpy as np
import pytest
import support
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer import zoo
from hyperinfer.errors import NotFound, Unauthenticated
from hyperinfer.node.app import Node, NodeConfig
from hyperinfer.node.devices import Device, Hardware
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.transport.server import bind, make_server
from hyperinfer.transport.tensors import many_from_proto, many_to_proto
from hyperinfer.verify import payloads
from hyperinfer.verify.attestation import verify_attestation
from hyperinfer.verify.operators import infer_fields, sign_call
from hyperinfer.verify.publisher import sign_manifest
from hyperinfer.verify.signing import fingerprint, key_id, public_bytes, verify_signature

ARTIFACT = os.urandom(200_000)
TARGET = "cpu-x86_64"


def manifest_bytes() -> bytes:
    return Manifest(
        name="two", version=1, source_sha256="0" * 64, model_sha256="1" * 64,
        inputs=[TensorSpec("a", "float32", (2, 16)), TensorSpec("b", "float32", (2, 16))],
        outputs=[OutputSpec("product", "float32", (2, 16)), OutputSpec("total", "float32", (2,))],
        tvm_version="test",
        artifacts={TARGET: ArtifactInfo(TARGET, {}, f"artifacts/{TARGET}.so",
                                        hashlib.sha256(ARTIFACT).hexdigest(), len(ARTIFACT))},
    ).dumps()


class FakePool(pool_pb2_grpc.PoolServicer):
    def __init__(self, offers, key=None):
        self.gw_key = key or Ed25519PrivateKey.generate()
        self.gw_id = key_id(self.gw_key)
        self.offers = offers
        self.nonces: dict[bytes, bytes] = {}
        self.nodes: dict[str, dict] = {}
        self.joins: list[str] = []
        self.heartbeats: list[pool_pb2.HeartbeatRequest] = []
        self.leaves: list[str] = []
        self.fetches: list[int] = []
        self.lock = threading.Lock()

    def Challenge(self, request, context):
        nonce = os.urandom(32)
        self.nonces[nonce] = bytes(request.public_key)
        return pool_pb2.ChallengeResponse(nonce=nonce, gateway_id=self.gw_id,
                                          gateway_public_key=public_bytes(self.gw_key))

    def Join(self, r, context):
        if self.nonces.pop(bytes(r.nonce), None) != bytes(r.public_key):
            raise Unauthenticated("bad nonce")
        node_id = fingerprint(bytes(r.public_key))
        signed = payloads.join_payload(nonce=bytes(r.nonce), gateway_id=self.gw_id, node_id=node_id,
                                       operator=r.operator, listen_address=r.listen_address,
                                       targets=list(r.targets), max_concurrency=r.max_concurrency)
        if not verify_signature(bytes(r.public_key), signed, bytes(r.signature)):
            raise Unauthenticated("join signature does not verify")
        with self.lock:
            self.nodes[node_id] = {"key": bytes(r.public_key), "address": r.listen_address,
                                   "targets": list(r.targets), "devices": list(r.devices), "ts": 0}
            self.joins.append(node_id)
        return pool_pb2.JoinResponse(node_id=node_id, heartbeat_interval_ms=100, models=self.offers,
                                     gateway_id=self.gw_id)

    def Heartbeat(self, r, context):
        node = self.nodes.get(r.node_id)
        if node is None:
            raise NotFound(f"unknown node {r.node_id}; join first")
        loaded = [(m.name, m.version, m.target_id, m.artifact_sha256) for m in r.loaded]
        signed = payloads.heartbeat_payload(node_id=r.node_id, timestamp_ms=r.timestamp_ms,
                                            outstanding=r.outstanding, capacity=r.capacity, loaded=loaded)
        if not verify_signature(node["key"], signed, bytes(r.signature)):
            raise Unauthenticated("heartbeat signature does not verify")
        assert r.timestamp_ms > node["ts"]
        node["ts"] = r.timestamp_ms
        self.heartbeats.append(r)
        return pool_pb2.HeartbeatResponse(heartbeat_interval_ms=100, models=self.offers)

    def Leave(self, r, context):
        node = self.nodes.get(r.node_id)
        if node is None:
            raise NotFound("unknown node")
        if not verify_signature(node["key"], payloads.leave_payload(node_id=r.node_id, timestamp_ms=r.timestamp_ms),
                                bytes(r.signature)):
            raise Unauthenticated("leave signature does not verify")
        self.leaves.append(r.node_id)
        del self.nodes[r.node_id]
        return pool_pb2.LeaveResponse()

    def FetchArtifact(self, r, context):
        if r.target_id != TARGET or r.sha256 != hashlib.sha256(ARTIFACT).hexdigest():
            raise NotFound("no such artifact")
        self.fetches.append(r.offset)
        for pos in range(r.offset, len(ARTIFACT), 32_768):
            yield pool_pb2.ArtifactChunk(offset=pos, data=ARTIFACT[pos:pos + 32_768], total_size=len(ARTIFACT))


def start_pool(servicer, address="127.0.0.1:0"):
    server = make_server(max_workers=8)
    pool_pb2_grpc.add_PoolServicer_to_server(servicer, server)
    port = bind(server, address)
    server.start()
    return server, port


def wait_for(cond, timeout=15.0, what="condition"):
    support.wait_for(cond, timeout, what)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return zoo.build_small("two-inputs", tmp_path_factory.mktemp("zoo"))[0]


@pytest.fixture()
def publisher():
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def pool(publisher):
    mb = manifest_bytes()
    fake = FakePool([pool_pb2.ModelOffer(name="two", version=1, manifest=mb,
                                         manifest_signature=sign_manifest(publisher, mb))])
    server, port = start_pool(fake)
    yield fake, server, port
    server.stop(0)


def make_node(tmp_path, port, publisher, onnx_path, **kw) -> Node:
    def runner_factory(path, manifest, target):
        assert path.read_bytes() == ARTIFACT  # only verified bytes reach the loader
        return ORTRunner(onnx_path, manifest.inputs, [o.name for o in manifest.outputs], threads=1)

    hw = Hardware([Device("cpu", "test cpu", "x86_64", 2, ("avx2",))], ["cpu-x86_64-avx2", TARGET])
    cfg = NodeConfig(gateway=f"127.0.0.1:{port}", key_path=tmp_path / "node.key", operator="op-a",
                     cache_dir=tmp_path / "cache", trust_publishers=[public_bytes(publisher).hex()],
                     grace_s=2.0, **kw)
    return Node(cfg, runner_factory=runner_factory, hardware=hw)


def test_join_load_heartbeat_infer_leave(tmp_path, pool, publisher, onnx_path):
    fake, _, port = pool
    loaded_events = []
    node = make_node(tmp_path, port, publisher, onnx_path)
    node.manager.on_loaded = loaded_events.append
    node.start()
    try:
        wait_for(lambda: fake.joins, what="join")
        assert fake.joins == [node.node_id]
        info = fake.nodes[node.node_id]
        assert info["address"] == node.address and info["targets"] == ["cpu-x86_64-avx2", TARGET]
        assert info["devices"][0].features == ["avx2"]
        wait_for(lambda: any(h.loaded for h in fake.heartbeats), what="loaded model in a heartbeat")
        hb = [h for h in fake.heartbeats if h.loaded][-1]
        assert [(m.name, m.version, m.target_id) for m in hb.loaded] == [("two", 1, TARGET)]
        assert hb.capacity == 4 and fake.fetches == [0]
        assert len(loaded_events) == 1

        # the gateway calls Worker.Infer on the advertised address, signing the call
        with grpc.insecure_channel(info["address"]) as ch:
            x = {"a": np.ones((2, 16), np.float32), "b": np.full((2, 16), 2, np.float32)}
            md = sign_call(fake.gw_key, "Infer", node.node_id, infer_fields("r1", "two", 1))
            resp = pool_pb2_grpc.WorkerStub(ch).Infer(pool_pb2.InferRequest(
                request_id="r1", model_name="two", model_version=1, inputs=many_to_proto(x)), timeout=10, metadata=md)
            att = verify_attestation(info["key"], resp.attestation, resp.signature)
            assert att.node_id == node.node_id and att.target_id == TARGET
            assert many_from_proto(resp.outputs)["total"].shape == (2,)
    finally:
        node.stop()
    assert fake.leaves == [node.node_id]


def test_rejoin_with_same_id_when_forgotten(tmp_path, pool, publisher, onnx_path):
    fake, _, port = pool
    node = make_node(tmp_path, port, publisher, onnx_path).start()
    try:
        wait_for(lambda: len(fake.heartbeats) >= 2, what="heartbeats")
        with fake.lock:
            fake.nodes.clear()  # the gateway lost its registry
        wait_for(lambda: len(fake.joins) >= 2, what="re-join")
        assert fake.joins == [node.node_id, node.node_id]
        n = len(fake.heartbeats)
        wait_for(lambda: len(fake.heartbeats) > n, what="heartbeats after re-join")
    finally:
        node.stop()


def test_survives_gateway_restart(tmp_path, publisher, onnx_path):
    fake = FakePool([])
    server, port = start_pool(fake)
    node = make_node(tmp_path, port, publisher, onnx_path).start()
    try:
        wait_for(lambda: fake.heartbeats, what="first heartbeat")
        server.stop(0).wait()
        time.sleep(1.0)  # heartbeats fail with UNAVAILABLE meanwhile; the node keeps trying
        assert node.pool._thread.is_alive()
        fresh = FakePool([], key=fake.gw_key)  # a restarted gateway (same key file) that forgot every node
        server, _ = start_pool(fresh, f"127.0.0.1:{port}")
        wait_for(lambda: fresh.joins == [node.node_id] and fresh.heartbeats, timeout=20, what="re-join after restart")
    finally:
        node.stop()
        server.stop(0)


def test_same_key_same_node_id_across_restarts(tmp_path, pool, publisher, onnx_path):
    fake, _, port = pool
    a = make_node(tmp_path, port, publisher, onnx_path)
    a_id = a.node_id
    a.server.stop(0)
    b = make_node(tmp_path, port, publisher, onnx_path)
    try:
        assert b.node_id == a_id and not b.key_created
        assert oct((tmp_path / "node.key").stat().st_mode & 0o777) == "0o600"
    finally:
        b.server.stop(0)


def test_untrusted_package_is_not_loaded(tmp_path, pool, onnx_path):
    fake, _, port = pool
    node = make_node(tmp_path, port, Ed25519PrivateKey.generate(), onnx_path).start()
    try:
        wait_for(lambda: len(fake.heartbeats) >= 3, what="heartbeats")
        assert all(not h.loaded for h in fake.heartbeats) and fake.fetches == []
    finally:
        node.stop()


def test_node_serves_only_its_gateway(tmp_path, pool, publisher, onnx_path):
    """Attack: anyone could call a node's Worker.Infer and get signed attestations for ids it
    chose (and fill its slots), and Info told strangers what the node runs."""
    fake, _, port = pool
    node = make_node(tmp_path, port, publisher, onnx_path).start()
    try:
        wait_for(lambda: any(h.loaded for h in fake.heartbeats), what="model loaded")
        x = {"a": np.ones((2, 16), np.float32), "b": np.full((2, 16), 2, np.float32)}
        req = pool_pb2.InferRequest(request_id="mine", model_name="two", model_version=1, inputs=many_to_proto(x))
        stranger = Ed25519PrivateKey.generate()
        with grpc.insecure_channel(node.address) as ch:
            stub = pool_pb2_grpc.WorkerStub(ch)
            for call, md, code in (
                (stub.Infer, None, grpc.StatusCode.UNAUTHENTICATED),
                (stub.Infer, sign_call(stranger, "Infer", node.node_id, infer_fields("mine", "two", 1)),
                 grpc.StatusCode.PERMISSION_DENIED),
                # the gateway's signature over another request id does not cover this one
                (stub.Infer, sign_call(fake.gw_key, "Infer", node.node_id, infer_fields("other", "two", 1)),
                 grpc.StatusCode.UNAUTHENTICATED),
                (stub.Info, None, grpc.StatusCode.UNAUTHENTICATED),
            ):
                with pytest.raises(grpc.RpcError) as e:
                    call(req if call is stub.Infer else pool_pb2.InfoRequest(), timeout=10, metadata=md)
                assert e.value.code() == code, e.value.details()
                assert node.node_id not in e.value.details() and "two" not in e.value.details()
            md = sign_call(fake.gw_key, "Infer", node.node_id, infer_fields("mine", "two", 1))
            assert stub.Infer(req, timeout=10, metadata=md).attestation
            with pytest.raises(grpc.RpcError) as e:  # a captured signed call cannot be replayed
                stub.Infer(req, timeout=10, metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in e.value.details()
            info = stub.Info(pool_pb2.InfoRequest(), timeout=10, metadata=sign_call(fake.gw_key, "Info", node.node_id))
            assert info.node_id == node.node_id
    finally:
        node.stop()


def test_node_refuses_a_gateway_with_another_key(tmp_path, publisher, onnx_path):
    """A stranger that takes over the gateway's address does not get the node (key pinned)."""
    fake = FakePool([])
    server, port = start_pool(fake)
    node = make_node(tmp_path, port, publisher, onnx_path).start()
    try:
        wait_for(lambda: fake.heartbeats, what="first heartbeat")
        server.stop(0).wait()
        impostor = FakePool([])
        server, _ = start_pool(impostor, f"127.0.0.1:{port}")
        time.sleep(1.5)
        assert impostor.joins == [] and node.gatekeeper.pinned == public_bytes(fake.gw_key)
        node.stop()
        node = make_node(tmp_path, port, publisher, onnx_path).start()  # restarted: the pin is kept in its cache
        time.sleep(1.5)
        assert impostor.joins == [] and node.gatekeeper.pinned == public_bytes(fake.gw_key)
    finally:
        node.stop()
        server.stop(0)

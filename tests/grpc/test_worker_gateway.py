"""A real node against the real gateway Pool service, in one process: the node joins,
is offered a signed compiled package, downloads and loads it, becomes schedulable,
survives a gateway restart on the same store, and leaves on shutdown."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import wait_for

from hyperinfer import zoo
from hyperinfer.identity import describe, load_or_create_key
from hyperinfer.node.app import Node, NodeConfig
from hyperinfer.node.devices import detect
from hyperinfer.proto.v1 import pool_pb2

gateway_app = pytest.importorskip("hyperinfer.gateway.app")
from hyperinfer.gateway.config import GatewayConfig  # noqa: E402




@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    try:
        from hyperinfer.compile import compile_model
    except ImportError:
        from hyperinfer.compile.pipeline import compile_model
    root = tmp_path_factory.mktemp("gwrepo")
    key_path = root / "publisher.key"
    load_or_create_key(key_path)
    path, shapes = zoo.build_small("two-inputs", root / "src")
    compile_model(path, name="two-inputs", out_dir=root / "repo", targets=["cpu-x86_64"], input_shapes=shapes,
                  version=1, progress=False, sign_key=key_path)
    return root / "repo", describe(load_or_create_key(key_path)[0])["public_key"]


def start_gateway(tmp_path, repo_dir, port=0):
    gw = gateway_app.Gateway(GatewayConfig(repository=repo_dir, listen=f"127.0.0.1:{port}", db=tmp_path / "gw.db",
                                           key=tmp_path / "gw.key", heartbeat_interval=0.2, grace_seconds=1,
                                           open_pool=True))
    gw.start()
    return gw


def test_node_joins_loads_serves_and_leaves(tmp_path, repo):
    repo_dir, publisher_hex = repo
    gw = start_gateway(tmp_path, repo_dir)
    port = gw.server.port
    node = Node(NodeConfig(gateway=gw.address, key_path=tmp_path / "node.key", operator="op-a",
                           cache_dir=tmp_path / "cache", trust_publishers=[publisher_hex], threads=1, grace_s=2),
                hardware=detect("cpu"))
    node.start()
    try:
        wait_for(lambda: [n.node_id for n in gw.registry.schedulable_nodes("two-inputs", 1)] == [node.node_id],
                 what="node schedulable for two-inputs/1")
        status = gw.pool.Status(pool_pb2.StatusRequest(), None)
        (ns,) = status.nodes
        assert ns.address == node.address and ns.operator == "op-a"
        assert [(m.name, m.target_id) for m in ns.loaded] == [("two-inputs", "cpu-x86_64")]

        x = {"a": np.ones((2, 16), np.float32), "b": np.ones((2, 16), np.float32)}
        res = node.dataplane.infer("r", "two-inputs", 1, x)
        assert res.outputs["total"].shape == (2,)

        # gateway restart on the same store: the node keeps heartbeating and is healthy again
        gw.stop(0)
        time.sleep(0.6)
        gw = start_gateway(tmp_path, repo_dir, port)
        wait_for(lambda: [n.node_id for n in gw.registry.schedulable_nodes("two-inputs", 1)] == [node.node_id],
                 what="node schedulable after gateway restart")
    finally:
        node.stop()
    try:
        wait_for(lambda: gw.registry.get(node.node_id).state == "left", timeout=5, what="left")
    finally:
        gw.stop(0)


def test_gateway_calls_node_with_a_session_mac_and_forgeries_are_refused(tmp_path, repo):
    """The join agrees a Worker-call session: the real gateway client then authenticates calls
    with an HMAC (no Ed25519 signature), the node refuses a forged, replayed or tampered MAC
    with UNAUTHENTICATED, and after a re-join (new key) a stale session falls back to a signature."""
    import grpc

    from hyperinfer.gateway.worker_client import GrpcWorkerClient
    from hyperinfer.proto.v1 import pool_pb2_grpc
    from hyperinfer.transport.tensors import many_to_proto
    from hyperinfer.verify.operators import infer_fields
    from hyperinfer.verify.session import Session, derive_session, gateway_session, kx_public, mac_call, new_kx_key

    repo_dir, publisher_hex = repo
    gw = start_gateway(tmp_path, repo_dir)
    node = Node(NodeConfig(gateway=gw.address, key_path=tmp_path / "node.key", operator="op-a",
                           cache_dir=tmp_path / "cache", trust_publishers=[publisher_hex], threads=1, grace_s=2),
                hardware=detect("cpu"))
    node.start()
    client = GrpcWorkerClient(signer=gw.key)
    try:
        wait_for(lambda: gw.registry.schedulable_nodes("two-inputs", 1), what="node schedulable")
        info = gw.registry.get(node.node_id)
        assert len(info.kx_public_key) == 32 and info.kx_gateway == gw.gateway_id
        x = {"a": np.ones((2, 16), np.float32), "b": np.full((2, 16), 2, np.float32)}
        res = client.infer(info, "r1", "two-inputs", 1, x)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(repo_dir / "two-inputs" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))
        for name, value in want.items():
            np.testing.assert_allclose(res.outputs[name], value, rtol=1e-5, atol=1e-5)
        assert node.gatekeeper.accepted == {"session": 1, "signed": 0}

        # what the gateway holds, recomputed from its key and the node's stored X25519 key
        session = gateway_session(gw.key, node.node_id, info.kx_public_key)
        stranger = new_kx_key()  # someone who read the node's public X25519 key but has no gateway key
        guessed = derive_session(stranger, info.kx_public_key, gateway_id=gw.gateway_id, node_id=node.node_id,
                                 node_kx_public_key=info.kx_public_key, gateway_kx_public_key=kx_public(stranger))
        req = pool_pb2.InferRequest(request_id="r2", model_name="two-inputs", model_version=1,
                                    inputs=many_to_proto(x))
        good = mac_call(session, "Infer", infer_fields("r2", "two-inputs", 1))
        with grpc.insecure_channel(node.address) as ch:
            stub = pool_pb2_grpc.WorkerStub(ch)
            for md, words in (
                (mac_call(Session(session.session_id, gw.gateway_id, node.node_id, guessed.key), "Infer",
                          infer_fields("r2", "two-inputs", 1)), "MAC does not verify"),
                (mac_call(guessed, "Infer", infer_fields("r2", "two-inputs", 1)), "unknown worker-call session"),
                (mac_call(session, "Infer", infer_fields("other", "two-inputs", 1)), "MAC does not verify"),
            ):
                with pytest.raises(grpc.RpcError) as e:
                    stub.Infer(req, timeout=10, metadata=md)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and words in e.value.details()
            assert stub.Infer(req, timeout=10, metadata=good).attestation
            with pytest.raises(grpc.RpcError) as e:
                stub.Infer(req, timeout=10, metadata=good)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in e.value.details()
        assert node.gatekeeper.accepted == {"session": 2, "signed": 0}

        # a re-join rotates the key: a call on the stale session is refused, then sent signed
        node.pool.join()
        assert gw.registry.get(node.node_id).kx_public_key != info.kx_public_key
        client.infer(info, "r3", "two-inputs", 1, x)  # `info` still names the old key
        assert node.gatekeeper.accepted == {"session": 2, "signed": 1}
        client.infer(gw.registry.get(node.node_id), "r4", "two-inputs", 1, x)
        assert node.gatekeeper.accepted == {"session": 3, "signed": 1}
    finally:
        client.close()
        node.stop()
        gw.stop(0)


def test_every_gateway_of_a_shared_store_gets_a_session(tmp_path, repo):
    """Two gateways (two keys) on one store: the node joins A, learns B's signed X25519 key from
    A's answer, and B's calls carry a session HMAC too (no Ed25519 signature on either)."""
    from hyperinfer.gateway.store import open_store
    from hyperinfer.gateway.worker_client import GrpcWorkerClient

    repo_dir, publisher_hex = repo
    gateways = []
    for name in ("a", "b"):
        store = open_store(tmp_path / "pool.db")
        store.shared = True  # as on PostgreSQL: each re-reads what the other wrote
        gw = gateway_app.Gateway(GatewayConfig(repository=repo_dir, listen="127.0.0.1:0", db=tmp_path / "pool.db",
                                               key=tmp_path / f"{name}.key", heartbeat_interval=0.2,
                                               grace_seconds=1, open_pool=True), store=store)
        gw.start()
        gateways.append(gw)
    a, b = gateways
    node = Node(NodeConfig(gateway=a.address, key_path=tmp_path / "node.key", operator="op-a",
                           cache_dir=tmp_path / "cache", trust_publishers=[publisher_hex], threads=1, grace_s=2),
                hardware=detect("cpu"))
    node.start()
    clients = [GrpcWorkerClient(signer=gw.key) for gw in gateways]
    try:
        wait_for(lambda: b.registry.schedulable_nodes("two-inputs", 1), what="node schedulable at gateway b")
        wait_for(lambda: node.gatekeeper.session_count() == 2, what="a session with each gateway")
        x = {"a": np.ones((2, 16), np.float32), "b": np.full((2, 16), 2, np.float32)}
        for i, (gw, client) in enumerate(zip(gateways, clients)):
            info = gw.registry.get(node.node_id)
            assert info.kx_gateway == a.gateway_id  # joined a; b derives its own session from the same key
            client.infer(info, f"r{i}", "two-inputs", 1, x)
        assert node.gatekeeper.accepted == {"session": 2, "signed": 0}
    finally:
        for client in clients:
            client.close()
        node.stop()
        for gw in gateways:
            gw.stop(0)

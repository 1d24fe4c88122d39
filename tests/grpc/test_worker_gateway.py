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

"""A closed pool over real gRPC: only admitted operators' nodes join, strangers get neither
artifacts nor status, a fresh node key under a quarantined operator washes nothing, and
receipts say how the node's operator was admitted. Each test is an attack that worked
before admission existed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from closed_pool import MODEL, TARGET, client, infer, start_pool  # noqa: E402

from hyperinfer.cli import main  # noqa: E402
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc  # noqa: E402
from hyperinfer.verify import payloads  # noqa: E402
from hyperinfer.verify.signing import fingerprint, public_bytes, sign  # noqa: E402
from support import wait_for  # noqa: E402


@pytest.fixture
def pool(tmp_path):
    p = start_pool(tmp_path, sample_rate=1.0, audit_rate=0.0, quarantine_after=2)
    yield p
    p.close()


def ready_ids(pool) -> set[str]:
    return {n.node_id for n in pool.gateway.registry.schedulable_nodes(MODEL, 1)}


def test_strangers_get_no_join_no_artifact_no_status(pool, tmp_path, capsys):
    """Before: a throwaway key that called Challenge+Join got every manifest and artifact, and
    Status listed every node's address and ledger."""
    op = pool.operator("acme")
    member = pool.node("member", op)
    wait_for(lambda: ready_ids(pool) == {member.node_id}, what="member ready")
    with grpc.insecure_channel(pool.gateway.address) as ch:
        stub = pool_pb2_grpc.PoolStub(ch)
        key = Ed25519PrivateKey.generate()
        pub = public_bytes(key)
        c = stub.Challenge(pool_pb2.ChallengeRequest(public_key=pub), timeout=10)
        data = payloads.join_payload(nonce=c.nonce, gateway_id=c.gateway_id, node_id=fingerprint(pub),
                                     operator="friendly", listen_address="127.0.0.1:9", targets=[TARGET],
                                     max_concurrency=1)
        with pytest.raises(grpc.RpcError) as e:
            stub.Join(pool_pb2.JoinRequest(public_key=pub, nonce=c.nonce, signature=sign(key, data),
                                           operator="friendly", listen_address="127.0.0.1:9", targets=[TARGET],
                                           max_concurrency=1), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--operator-cert" in e.value.details()
        (offer,) = pool.gateway.catalog.offers()
        sha = offer.manifest.artifacts[TARGET].sha256
        with pytest.raises(grpc.RpcError) as e:
            list(stub.FetchArtifact(pool_pb2.FetchArtifactRequest(model_name=MODEL, model_version=1,
                                                                  target_id=TARGET, sha256=sha), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.Status(pool_pb2.StatusRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # the admin reads status with its key (pool status --key)
    admin_file = tmp_path / "admin.key"
    from cryptography.hazmat.primitives import serialization

    admin_file.write_bytes(pool.admin.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    admin_file.chmod(0o600)
    assert main(["pool", "status", "--gateway", pool.gateway.address, "--key", str(admin_file), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    (n,) = st["nodes"]
    assert (n["operator"], n["admission"], n["stake"], st["open_pool"]) == ("acme", "admitted", 100.0, False)
    assert main(["pool", "status", "--gateway", pool.gateway.address]) == 1
    assert "--key ADMIN_KEY" in capsys.readouterr().err


def test_whitewashing_a_quarantined_operator_with_a_fresh_node_key(pool):
    """Before: a quarantined node came back healthy, stake 100, faults 0, by restarting with a new key."""
    honest_op, cheat_op = pool.operator("honest"), pool.operator("cheater", bond=30)
    honest = pool.node("honest", honest_op)
    cheat = pool.node("cheat", cheat_op, cheat=True)
    wait_for(lambda: ready_ids(pool) == {honest.node_id, cheat.node_id}, what="both nodes ready")
    cli = client(pool.gateway.address)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    reg = pool.gateway.registry
    deadline = time.monotonic() + 60
    # sync checks on every request: the cheater loses disputes until quarantined (after each lost
    # one it is skipped until its next heartbeat)
    while reg.get(cheat.node_id).state != "quarantined" and time.monotonic() < deadline:
        if cheat.node_id in ready_ids(pool):
            infer(cli, x, mode="sync")
        else:
            time.sleep(0.05)
    assert reg.get(cheat.node_id).state == "quarantined"
    op = pool.gateway.operators.require(fingerprint(public_bytes(cheat_op)))
    assert op.state == "quarantined" and op.slashed > 0
    fresh = pool.node("fresh-key", cheat_op, cheat=True)  # same operator, new node key
    wait_for(lambda: fresh.pool.joined, what="fresh node joined")
    assert reg.get(fresh.node_id).state == "quarantined"  # at once: its operator's verdict
    assert fresh.node_id not in ready_ids(pool) and not fresh.dataplane.has(MODEL, 1)  # no artifact either
    assert pool.gateway.ledger.details(fresh.node_id)["stake"] == op.remaining  # the same, slashed bond
    _, receipt = infer(cli, x, mode="always")
    assert receipt.node_id == honest.node_id and receipt.admission == "admitted"


def test_open_pool_keeps_working_without_admission(tmp_path):
    p = start_pool(tmp_path, open_pool=True, sample_rate=0.0, audit_rate=0.0, admin_keys=[])
    try:
        n = p.node("walk-in", None)
        wait_for(lambda: n.node_id in ready_ids(p), what="open-pool node ready")
        _, receipt = infer(client(p.gateway.address), np.ones((1, 64), np.float32))
        assert (receipt.status, receipt.admission) == ("unchecked", "open")
        assert p.gateway.ledger.details(n.node_id)["stake"] == 0
    finally:
        p.close()


def test_model_control_needs_an_admin_signature(pool):
    """The gateway's authorize_admin hook (model control: RepositoryModelLoad/Unload) wired to
    --admin-key: strangers are refused, an admin's signed call goes through."""
    from hyperinfer.pool_status import admin_metadata
    from hyperinfer.proto.inference import grpc_service_pb2 as pb
    from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
    from hyperinfer.verify.operators import sign_call

    unload = pb.RepositoryModelUnloadRequest(model_name=MODEL)
    with grpc.insecure_channel(pool.gateway.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for md, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                         (sign_call(Ed25519PrivateKey.generate(), "admin", ""), grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as e:
                stub.RepositoryModelUnload(unload, metadata=md, timeout=10)
            assert e.value.code() == code
        assert not (pool.repo / MODEL / "UNLOADED").exists()
        stub.RepositoryModelUnload(unload, metadata=admin_metadata(pool.admin, "admin"), timeout=10)
        assert (pool.repo / MODEL / "UNLOADED").exists()

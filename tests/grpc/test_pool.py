"""Pool service on a real gateway server (127.0.0.1:0) with real stubs and a simulated node
that signs with a real key. Asserts status codes and that details name the problem, and that
the server still serves a good request after every rejection."""

from __future__ import annotations

import hashlib
import json
import os
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hyperinfer.errors import FailedPrecondition
from hyperinfer.gateway.app import Gateway
from hyperinfer.gateway.config import MIN_MESSAGE_BYTES, GatewayConfig
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.verify import payloads
from hyperinfer.verify.signing import fingerprint, public_bytes, sign

TARGET = "cpu-x86_64"
ARTIFACT = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB: three chunks
ARTIFACT_SHA = hashlib.sha256(ARTIFACT).hexdigest()
TIMEOUT = 10


def write_package(repo, name="m", version=1, data=ARTIFACT, target=TARGET, signature=b""):
    d = repo / name / str(version)
    (d / "artifacts").mkdir(parents=True)
    (d / "artifacts" / f"{target}.so").write_bytes(data)
    m = Manifest(
        name=name, version=version, source_sha256="0" * 64, model_sha256="0" * 64,
        inputs=[TensorSpec("x", "float32", (1, 4))], outputs=[OutputSpec("y", "float32", (1, 4))],
        tvm_version="test",
        artifacts={target: ArtifactInfo(target, {"kind": "llvm"}, f"artifacts/{target}.so",
                                        hashlib.sha256(data).hexdigest(), len(data))},
    )
    (d / "manifest.json").write_bytes(m.dumps())
    if signature:
        (d / "manifest.sig").write_bytes(signature)
    return d


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    write_package(r, signature=b"\x01" * 64)
    broken = r / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")  # skipped with a warning, never fatal
    return r


@pytest.fixture
def gateway(tmp_path, repo):
    gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp_path / "gw.db",
                               key=tmp_path / "gw.key", heartbeat_interval=5.0,
                               max_message_bytes=MIN_MESSAGE_BYTES, max_workers=4, open_pool=True))
    gw.start()
    yield gw
    gw.stop(grace=0)


@pytest.fixture
def channel(gateway):
    # the client may send more than the server accepts, to test the server's limit
    ch = grpc.insecure_channel(gateway.address, options=[("grpc.max_send_message_length", 16 << 20),
                                                         ("grpc.max_receive_message_length", 16 << 20)])
    yield ch
    ch.close()


@pytest.fixture
def stub(channel):
    return pool_pb2_grpc.PoolStub(channel)


class SimNode:
    """A node client: signs join/heartbeat/leave with a real Ed25519 key."""

    def __init__(self, stub, operator="alice", address="127.0.0.1:9100"):
        self.stub = stub
        self.key = Ed25519PrivateKey.generate()
        self.pub = public_bytes(self.key)
        self.node_id = fingerprint(self.pub)
        self.operator, self.address = operator, address
        self.last_ts = 0

    def join_request(self, sign_with=None, targets=(TARGET,), address=None) -> pool_pb2.JoinRequest:
        ch = self.stub.Challenge(pool_pb2.ChallengeRequest(public_key=self.pub), timeout=TIMEOUT)
        address = address or self.address
        data = payloads.join_payload(nonce=ch.nonce, gateway_id=ch.gateway_id, node_id=self.node_id,
                                     operator=self.operator, listen_address=address, targets=list(targets),
                                     max_concurrency=2)
        return pool_pb2.JoinRequest(
            public_key=self.pub, nonce=ch.nonce, signature=sign(sign_with or self.key, data), operator=self.operator,
            listen_address=address, targets=list(targets), max_concurrency=2, software_version="test",
            devices=[pool_pb2.Device(kind="cpu", name="test cpu", arch="x86_64", count=1, features=["avx2"])],
        )

    def join(self) -> pool_pb2.JoinResponse:
        return self.stub.Join(self.join_request(), timeout=TIMEOUT)

    def heartbeat_request(self, loaded=((("m", 1, TARGET, ARTIFACT_SHA)),), outstanding=0, sign_with=None):
        ts = max(int(time.time() * 1000), self.last_ts + 1)
        self.last_ts = ts
        data = payloads.heartbeat_payload(node_id=self.node_id, timestamp_ms=ts, outstanding=outstanding,
                                          capacity=2, loaded=loaded)
        return pool_pb2.HeartbeatRequest(
            node_id=self.node_id, timestamp_ms=ts, outstanding=outstanding, capacity=2,
            loaded=[pool_pb2.LoadedModel(name=n, version=v, target_id=t, artifact_sha256=s) for n, v, t, s in loaded],
            signature=sign(sign_with or self.key, data),
        )

    def heartbeat(self, **kw) -> pool_pb2.HeartbeatResponse:
        return self.stub.Heartbeat(self.heartbeat_request(**kw), timeout=TIMEOUT)


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        r = fn(*args, timeout=TIMEOUT, **kw)
        if hasattr(r, "__iter__") and not isinstance(r, (bytes, str)):
            list(r)  # a stream fails while iterating
    return e.value


def assert_alive(stub) -> None:
    """The server still serves a good request after a rejection."""
    node = SimNode(stub, operator="probe")
    assert node.join().node_id == node.node_id


# ------------------------------------------------------------------ join

def test_join_heartbeat_status(gateway, stub):
    node = SimNode(stub)
    resp = node.join()
    assert resp.node_id == node.node_id and resp.gateway_id == gateway.gateway_id
    assert resp.heartbeat_interval_ms == 5000
    assert [(m.name, m.version) for m in resp.models] == [("m", 1)]  # broken package skipped
    assert Manifest.loads(resp.models[0].manifest).artifacts[TARGET].sha256 == ARTIFACT_SHA
    assert resp.models[0].manifest_signature == b"\x01" * 64

    hb = node.heartbeat(outstanding=1)
    assert hb.heartbeat_interval_ms == 5000 and [m.name for m in hb.models] == ["m"]

    st = stub.Status(pool_pb2.StatusRequest(), timeout=TIMEOUT)
    assert st.gateway_id == gateway.gateway_id and st.gateway_public_key == gateway.public_key
    (n,) = st.nodes
    assert (n.node_id, n.operator, n.address, n.state) == (node.node_id, "alice", "127.0.0.1:9100", "healthy")
    assert (n.outstanding, n.capacity, list(n.targets)) == (1, 2, [TARGET])
    assert n.devices[0].features == ["avx2"]
    assert [(m.name, m.version, m.target_id, m.artifact_sha256) for m in n.loaded] == [("m", 1, TARGET, ARTIFACT_SHA)]
    assert abs(n.last_heartbeat_unix_ms / 1000 - time.time()) < 30
    (m,) = st.models
    assert (m.name, m.version, list(m.targets), m.ready_nodes) == ("m", 1, [TARGET], 1)
    assert n.jobs == 0 and n.credits == 0  # no ledger attached

    assert [x.node_id for x in gateway.registry.schedulable_nodes("m", 1)] == [node.node_id]


def test_join_wrong_signature(stub):
    node = SimNode(stub)
    e = rpc_error(stub.Join, node.join_request(sign_with=Ed25519PrivateKey.generate()))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in e.details()
    assert_alive(stub)


def test_join_replayed(stub):
    node = SimNode(stub)
    req = node.join_request()
    stub.Join(req, timeout=TIMEOUT)
    e = rpc_error(stub.Join, req)
    assert e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert "nonce" in e.details() and "already used" in e.details()
    assert_alive(stub)


def test_join_invalid_address(stub):
    node = SimNode(stub)
    e = rpc_error(stub.Join, node.join_request(address="nohost"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "listen_address" in e.details()
    e = rpc_error(stub.Join, node.join_request(targets=()))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "targets" in e.details()
    assert_alive(stub)


def test_challenge_bad_key(stub):
    e = rpc_error(stub.Challenge, pool_pb2.ChallengeRequest(public_key=b"abc"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "public_key" in e.details()
    assert_alive(stub)


def test_heartbeat_unknown_node(stub):
    node = SimNode(stub)
    e = rpc_error(stub.Heartbeat, node.heartbeat_request())
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert node.node_id in e.details() and "join first" in e.details()
    assert_alive(stub)


def test_heartbeat_bad_signature_and_replay(stub):
    node = SimNode(stub)
    node.join()
    e = rpc_error(stub.Heartbeat, node.heartbeat_request(sign_with=Ed25519PrivateKey.generate()))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "heartbeat signature" in e.details()
    req = node.heartbeat_request()
    stub.Heartbeat(req, timeout=TIMEOUT)
    e = rpc_error(stub.Heartbeat, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "timestamp_ms" in e.details()
    node.heartbeat()


def test_leave(gateway, stub):
    node = SimNode(stub)
    node.join()
    node.heartbeat()
    ts = node.last_ts + 1
    stub.Leave(pool_pb2.LeaveRequest(node_id=node.node_id, timestamp_ms=ts,
                                     signature=sign(node.key, payloads.leave_payload(node_id=node.node_id,
                                                                                     timestamp_ms=ts))),
               timeout=TIMEOUT)
    st = stub.Status(pool_pb2.StatusRequest(), timeout=TIMEOUT)
    assert [n.state for n in st.nodes] == ["left"] and st.models[0].ready_nodes == 0


def test_quarantined_and_failed_in_status(gateway, stub):
    a, b = SimNode(stub, operator="a"), SimNode(stub, operator="b")
    for n in (a, b):
        n.join()
        n.heartbeat()
    gateway.registry.set_state(a.node_id, "quarantined")
    gateway.registry.report_failure(b.node_id)
    st = stub.Status(pool_pb2.StatusRequest(), timeout=TIMEOUT)
    assert {n.operator: n.state for n in st.nodes} == {"a": "quarantined", "b": "failed"}
    assert st.models[0].ready_nodes == 0


def test_status_with_ledger(gateway, stub):
    class Ledger:
        def summary(self, node_id):
            return {"jobs": 7, "checks": 2, "faults": 1, "credits": 3.5, "stake": 100.0, "slashed": 10.0,
                    "reputation": 0.9, "probation": True}

    gateway.ledger = Ledger()
    node = SimNode(stub)
    node.join()
    (n,) = stub.Status(pool_pb2.StatusRequest(), timeout=TIMEOUT).nodes
    assert (n.jobs, n.checks, n.faults, n.credits, n.stake, n.slashed, n.probation) == (7, 2, 1, 3.5, 100.0, 10.0, True)
    assert n.reputation == pytest.approx(0.9)


# ------------------------------------------------------------- artifacts

_FETCHERS: dict[int, tuple[SimNode, str]] = {}


def fetch(stub, offset=0, signed=True, **kw):
    """FetchArtifact as a joined node (the pool API is closed to strangers)."""
    from hyperinfer.verify.operators import fetch_fields, sign_call

    if id(stub) not in _FETCHERS:
        node = SimNode(stub, operator="fetcher", address="127.0.0.1:9199")
        _FETCHERS[id(stub)] = (node, node.join().gateway_id)
    node, gateway_id = _FETCHERS[id(stub)]
    req = dict(model_name="m", model_version=1, target_id=TARGET, sha256=ARTIFACT_SHA, offset=offset)
    req.update(kw)
    md = sign_call(node.key, "FetchArtifact", gateway_id, fetch_fields(**req)) if signed else None
    return list(stub.FetchArtifact(pool_pb2.FetchArtifactRequest(**req), timeout=TIMEOUT, metadata=md))


def test_fetch_artifact(stub):
    chunks = fetch(stub)
    assert len(chunks) == 3 and all(c.total_size == len(ARTIFACT) for c in chunks)
    assert [c.offset for c in chunks] == [0, 1 << 20, 2 << 20]
    assert b"".join(c.data for c in chunks) == ARTIFACT
    # resume from the middle
    tail = fetch(stub, offset=len(ARTIFACT) - 10)
    assert b"".join(c.data for c in tail) == ARTIFACT[-10:]
    (end,) = fetch(stub, offset=len(ARTIFACT))
    assert end.data == b"" and end.total_size == len(ARTIFACT)


@pytest.mark.parametrize("kw, code, words", [
    ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, ["unknown model", "nope"]),
    ({"model_version": 9}, grpc.StatusCode.NOT_FOUND, ["no version 9"]),
    ({"target_id": "cuda-sm90"}, grpc.StatusCode.NOT_FOUND, ["cuda-sm90", TARGET]),
    ({"sha256": "ab" * 32}, grpc.StatusCode.NOT_FOUND, ["ab" * 32]),
    ({"offset": len(ARTIFACT) + 1}, grpc.StatusCode.INVALID_ARGUMENT, ["offset"]),
    ({"offset": -1}, grpc.StatusCode.INVALID_ARGUMENT, ["offset"]),
    ({"model_version": 0}, grpc.StatusCode.INVALID_ARGUMENT, ["model_version"]),
])
def test_fetch_artifact_rejected(stub, kw, code, words):
    with pytest.raises(grpc.RpcError) as e:
        fetch(stub, **kw)
    assert e.value.code() == code
    for w in words:
        assert w in e.value.details()
    assert len(fetch(stub)) == 3


def test_fetch_corrupt_artifact(gateway, stub, repo, caplog):
    path = repo / "m" / "1" / "artifacts" / f"{TARGET}.so"
    assert len(fetch(stub)) == 3  # verified and cached for this (path, mtime, size)
    st = path.stat()
    path.write_bytes(b"\xff" + ARTIFACT[1:])  # same size, different bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # filesystems with coarse mtimes
    with pytest.raises(grpc.RpcError) as e:
        fetch(stub)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS and "corrupt" in e.value.details()
    assert any("corrupt on the gateway disk" in r.getMessage() for r in caplog.records)
    path.write_bytes(ARTIFACT)
    assert b"".join(c.data for c in fetch(stub)) == ARTIFACT


def test_new_package_is_offered(gateway, stub, repo):
    write_package(repo, name="m", version=2)
    time.sleep(1.1)  # the catalog re-scans at most once a second
    node = SimNode(stub)
    assert [(m.name, m.version) for m in node.join().models] == [("m", 1), ("m", 2)]


# ------------------------------------------------------------ transport

def test_oversized_message(stub):
    e = rpc_error(stub.Challenge, pool_pb2.ChallengeRequest(public_key=b"\x00" * (MIN_MESSAGE_BYTES + 1024)))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_alive(stub)


def test_health_and_reflection(gateway, channel):
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hyperinfer.v1.Pool"):
        r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    (resp,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=TIMEOUT)
    names = {s.name for s in resp.list_services_response.service}
    assert {"hyperinfer.v1.Pool", "grpc.health.v1.Health"} <= names


def test_add_servicer_after_start_is_refused(gateway):
    with pytest.raises(FailedPrecondition, match="already running"):
        gateway.add_servicer(pool_pb2_grpc.add_PoolServicer_to_server, gateway.pool, "x.Other")


# ------------------------------------------------------------------- CLI

def test_pool_status_cli(gateway, stub, capsys):
    from hyperinfer.cli import main

    node = SimNode(stub)
    node.join()
    node.heartbeat()
    assert main(["pool", "status", "--gateway", gateway.address, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gateway_id"] == gateway.gateway_id
    assert [(n["node_id"], n["state"]) for n in data["nodes"]] == [(node.node_id, "healthy")]
    assert data["models"][0]["ready_nodes"] == 1
    assert main(["pool", "status", "--gateway", gateway.address]) == 0
    out = capsys.readouterr().out
    assert node.node_id[:12] in out and "healthy" in out
    assert "0/2" in out and "m/1" in out


def test_pool_status_unreachable(capsys):
    import socket

    from hyperinfer.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["pool", "status", "--gateway", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot reach gateway at 127.0.0.1:{port}")
    assert "Traceback" not in err

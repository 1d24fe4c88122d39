"""Artifact streams cannot starve the gateway: 20 FetchArtifact streams whose client never reads
once froze every service (all shared one 16-thread pool; ServerLive timed out). Now at most
--max-artifact-streams run at once (the rest get RESOURCE_EXHAUSTED and retry), idle ones are
cancelled by a watchdog, and health and inference keep answering."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hyperinfer.gateway.app import Gateway
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.oip_servicer import install
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.verify.operators import fetch_fields, sign_call
from hyperinfer.verify.signing import public_bytes
from support import wait_for

sys.path.insert(0, str(Path(__file__).parent))
from test_pool import TARGET, write_package  # noqa: E402

BIG = os.urandom(8 << 20)  # far more than HTTP/2 flow control lets through to a client that does not read


@pytest.fixture
def gateway(tmp_path):
    repo = tmp_path / "repo"
    write_package(repo, data=BIG)
    gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp_path / "gw.db", key=tmp_path / "gw.key",
                               max_artifact_streams=4, artifact_idle_s=5, admin_keys=[public_bytes(ADMIN).hex()]))
    install(gw)
    gw.start()
    yield gw
    gw.stop(grace=0)


# the pool API is closed: downloads are signed (here by an admin key; nodes sign with theirs)
ADMIN = Ed25519PrivateKey.generate()


def fetch_request() -> pool_pb2.FetchArtifactRequest:
    return pool_pb2.FetchArtifactRequest(model_name="m", model_version=1, target_id=TARGET,
                                         sha256=hashlib.sha256(BIG).hexdigest())


def signed(gw) -> list[tuple[str, str]]:
    r = fetch_request()
    return sign_call(ADMIN, "FetchArtifact", gw.gateway_id,
                     fetch_fields(r.model_name, r.model_version, r.target_id, r.sha256, r.offset))


def test_idle_artifact_streams_do_not_starve_health_or_inference(gateway):
    # no BDP probing: with it gRPC grows a connection's receive window to megabytes, and a client
    # that never reads could take the whole artifact into its buffers (the stream then ends, not idle)
    channels = [grpc.insecure_channel(gateway.address, options=[("grpc.http2.bdp_probe", 0)]) for _ in range(20)]
    try:
        streams = []
        mds = [signed(gateway) for _ in channels]  # signed up front: the streams open within a moment
        for ch, md in zip(channels, mds):  # one connection each, as 20 attackers would; nobody reads
            s = pool_pb2_grpc.PoolStub(ch).FetchArtifact(fetch_request(), timeout=60, metadata=md)
            streams.append(s)
        limiter = gateway.artifact_streams
        # a slot taken is not given to another stream until the watchdog frees it; when the 20
        # requests arrive over more than the idle time (a loaded machine) a freed slot may go to
        # a late one, so what is asserted is that no more than 4 ever run at once
        wait_for(lambda: limiter.peak == 4, 15, "4 streams admitted at once")
        with grpc.insecure_channel(gateway.address) as ch:
            oip = pb_grpc.GRPCInferenceServiceStub(ch)
            t0 = time.monotonic()
            for _ in range(20):
                assert oip.ServerLive(pb.ServerLiveRequest(), timeout=2).live
                assert oip.ModelMetadata(pb.ModelMetadataRequest(name="m"), timeout=2).name == "m"
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - t0 < 10

        # every stream beyond the limit was refused with a status that says retry; the admitted
        # ones (idle: nobody reads) are cancelled by the watchdog
        def refused() -> list:
            return [s for s in streams if s.done() and s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]

        wait_for(lambda: limiter.admitted + limiter.refused == 20 and limiter.active == 0, 30,
                 "all 20 streams refused or admitted and then cancelled")
        wait_for(lambda: len(refused()) == limiter.refused, 10, "the refusals to reach the clients")
        assert all("artifact streams" in s.details() for s in refused())
        assert limiter.peak == 4 and limiter.refused >= 12, (limiter.peak, limiter.refused)
        assert limiter.cancelled == limiter.admitted
        with grpc.insecure_channel(gateway.address, options=[("grpc.max_receive_message_length", 4 << 20)]) as ch:
            data = b"".join(c.data for c in pool_pb2_grpc.PoolStub(ch).FetchArtifact(
                fetch_request(), timeout=30, metadata=signed(gateway)))
        assert hashlib.sha256(data).digest() == hashlib.sha256(BIG).digest()
    finally:
        for ch in channels:
            ch.close()


def test_concurrent_rpcs_are_capped(tmp_path):
    """--max-concurrent-rpcs: beyond it gRPC answers RESOURCE_EXHAUSTED at once instead of queueing."""
    repo = tmp_path / "repo"
    write_package(repo, data=BIG)
    gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=":memory:", key=tmp_path / "gw.key",
                               max_concurrent_rpcs=2, max_artifact_streams=4, artifact_idle_s=30,
                               admin_keys=[public_bytes(ADMIN).hex()]))
    install(gw)
    gw.start()
    chans = [grpc.insecure_channel(gw.address, options=[("grpc.http2.bdp_probe", 0)]) for _ in range(3)]  # see above
    try:
        held = [pool_pb2_grpc.PoolStub(c).FetchArtifact(fetch_request(), timeout=30, metadata=signed(gw))
                for c in chans[:2]]
        wait_for(lambda: gw.artifact_streams.active == 2, 10, "two streams held")
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.GRPCInferenceServiceStub(chans[2]).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in held:
            s.cancel()
        wait_for(lambda: gw.artifact_streams.active == 0, 10, "streams released")
        assert pb_grpc.GRPCInferenceServiceStub(chans[2]).ServerLive(pb.ServerLiveRequest(), timeout=5).live
    finally:
        for c in chans:
            c.close()
        gw.stop(grace=0)

"""Model control is admin-only once the gateway has an admin check: a real gateway on 127.0.0.1:0,
its ``authorize_admin`` hook refusing, RepositoryModelLoad/Unload get its status, reads do not."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from hyperinfer.errors import PermissionDenied, Unauthenticated
from hyperinfer.gateway.app import Gateway
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.oip_servicer import install
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import make_package  # noqa: E402


def admin_check(metadata):
    md = dict(metadata)
    if "x-admin" not in md:
        raise Unauthenticated("model control needs an admin signature")
    if md["x-admin"] != "yes":
        raise PermissionDenied("not an admin key")


@pytest.fixture
def gateway(tmp_path):
    repo = tmp_path / "repo"
    make_package(repo, "mlp")
    gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=":memory:", key=tmp_path / "gw.key"))
    install(gw)
    gw.start()
    channel = grpc.insecure_channel(gw.address)
    try:
        yield gw, pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        channel.close()
        gw.stop(grace=0)


def test_load_and_unload_need_the_admin_check_once_there_is_one(gateway):
    gw, stub = gateway
    unload = pb.RepositoryModelUnloadRequest(model_name="mlp")
    stub.RepositoryModelUnload(unload, timeout=10)  # no credentials configured: open
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=10)

    gw.authorize_admin = admin_check  # what the admin-key component installs
    for md, code in [((), grpc.StatusCode.UNAUTHENTICATED), ((("x-admin", "no"),), grpc.StatusCode.PERMISSION_DENIED)]:
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelUnload(unload, metadata=md, timeout=10)
        assert e.value.code() == code
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), metadata=md, timeout=10)
        assert e.value.code() == code
    assert not (gw.repository.root / "mlp" / "UNLOADED").exists()  # refused calls changed nothing
    # reads stay open; the admin's call goes through
    assert [m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models] == ["mlp"]
    stub.RepositoryModelUnload(unload, metadata=(("x-admin", "yes"),), timeout=10)
    assert (gw.repository.root / "mlp" / "UNLOADED").exists()

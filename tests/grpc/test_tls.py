"""TLS on every channel: a gateway and two nodes with certificates from hyperinfer.pki, mutual TLS
between them; tritonclient (ssl=True), hyperinfer's own clients and the CLI against the gateway;
plaintext and certificate-less callers refused."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from hyperinfer import pki
from hyperinfer.errors import HyperinferError
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.transport.tls import TLSFiles
from support import assert_one_line_error, run_cli

sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import Harness, import_tritonclient_grpc, make_package  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    repo = tmp / "repo"
    make_package(repo, "mlp")
    pki.pool_pki(tmp / "pki", ["gateway", "node", "client"])
    other_ca = pki.make_ca(tmp / "other")
    pki.issue(other_ca, tmp / "other", "stranger")
    with Harness(repo, tmp, tls=tmp / "pki") as h:
        h.pki, h.repo, h.other = tmp / "pki", repo, tmp / "other"
        yield h


def ca_only(pool) -> TLSFiles:
    return TLSFiles.load(ca=pool.pki / "ca.pem")


def wait_ready(pool, timeout=60.0):
    from hyperinfer.pool_status import fetch_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = fetch_status(pool.address, tls=ca_only(pool))
        if st["models"] and st["models"][0]["ready_nodes"] == 2:
            return st
        time.sleep(0.1)
    raise AssertionError("nodes did not join and load over mutual TLS")


def test_tritonclient_ssl_and_hyperinfer_clients(pool):
    """Nodes joined over TLS (presenting their certificates), the gateway called them over mutual
    TLS, and a stock tritonclient with ssl=True gets the right numbers."""
    st = wait_ready(pool)
    assert {n["state"] for n in st["nodes"]} == {"healthy"}
    tc = import_tritonclient_grpc()
    client = tc.InferenceServerClient(pool.address, ssl=True,
                                      root_certificates=str(pool.pki / "ca.pem"))
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("mlp", [inp], parameters={"verify": "always"})
    pdir = pool.repo / "mlp" / "1"
    from hyperinfer.package import Manifest

    m = Manifest.loads((pdir / "manifest.json").read_bytes())
    want = ORTRunner(pdir / "model.onnx", m.inputs).run({"x": x})
    for name, arr in want.items():
        np.testing.assert_allclose(res.as_numpy(name), arr, rtol=1e-5, atol=1e-5)
    import json

    receipt = json.loads(res.get_response().parameters["hyperinfer.receipt"].string_param)
    assert receipt["status"] == "agreed"  # the validator was called over mutual TLS too

    from hyperinfer.cli.infer_cmd import infer

    outputs, receipt_json, _ = infer(pool.address, "mlp", {"x": x}, tls=ca_only(pool))
    np.testing.assert_allclose(outputs[next(iter(want))], want[next(iter(want))], rtol=1e-5, atol=1e-5)
    assert receipt_json


def test_plaintext_and_wrong_ca_refused(pool):
    from hyperinfer.cli.infer_cmd import infer

    x = {"x": np.zeros((1, 64), np.float32)}
    with pytest.raises(HyperinferError) as ei:
        infer(pool.address, "mlp", x, timeout=5)  # plaintext to a TLS port
    assert ei.value.code.value == "UNAVAILABLE"
    with pytest.raises(HyperinferError) as ei:
        infer(pool.address, "mlp", x, timeout=5, tls=TLSFiles.load(ca=pool.other / "ca.pem"))
    assert ei.value.code.value == "UNAVAILABLE"


def test_node_worker_only_for_clients_with_a_pool_certificate(pool):
    st = wait_ready(pool)
    address = st["nodes"][0]["address"]
    req = pool_pb2.InferRequest(request_id="x" * 32, model_name="mlp", model_version=1)

    def call(tls):
        from hyperinfer.transport.server import channel

        with channel(address, tls=tls) as ch:
            return pool_pb2_grpc.WorkerStub(ch).Infer(req, timeout=5)

    for tls in (None,  # plaintext
                ca_only(pool),  # TLS, but no client certificate
                TLSFiles.load(pool.other / "stranger.pem", pool.other / "stranger.key", pool.pki / "ca.pem")):
        with pytest.raises(grpc.RpcError) as ei:
            call(tls)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, tls
    # a certificate of the pool's CA gets through the handshake (the request itself is refused: no inputs)
    with pytest.raises(grpc.RpcError) as ei:
        call(TLSFiles.load(pool.pki / "client.pem", pool.pki / "client.key", pool.pki / "ca.pem"))
    assert ei.value.code() != grpc.StatusCode.UNAVAILABLE


def test_cli_clients_take_tls_flags(pool):
    wait_ready(pool)
    proc = run_cli("pool", "status", "--gateway", pool.address, "--tls-ca", str(pool.pki / "ca.pem"), "--json",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"ready_nodes": 2' in proc.stdout
    proc = run_cli("economics", "--reward", "1", "--stake", "10", "--cost", "0.5", "--gateway", pool.address,
                   "--tls-ca", str(pool.pki / "ca.pem"), timeout=120)
    assert proc.returncode == 0 and "model mlp/1" in proc.stdout, proc.stderr
    assert_one_line_error(run_cli("pool", "status", "--gateway", pool.address, "--tls-ca", "/nonexistent/ca.pem"),
                          "--tls-ca", "not found")
    assert_one_line_error(run_cli("pool", "status", "--gateway", pool.address, "--tls-cert",
                                  str(pool.pki / "client.pem")), "--tls-key")

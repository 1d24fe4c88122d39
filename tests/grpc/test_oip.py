"""The gateway's Open Inference Protocol service, called by tritonclient (a real OIP client from PyPI).

A real gateway (Pool + OIP + health + reflection on one 127.0.0.1:0 port) and
two real nodes of different operators that joined it over the Pool service,
downloaded their artifact and heartbeat, run in a child process
(keeps the server's threads and GIL apart from the client's). The nodes run ONNX Runtime instead of a
TVM artifact, so this module needs no compile step; tests/e2e runs compiled
artifacts in separate processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from hyperinfer import dtypes
from hyperinfer.package import Manifest, OutputSpec
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: the harness is a plain module here
from oip_harness import Harness, import_tritonclient_grpc, make_package  # noqa: E402

try:
    tritonclient_grpc = import_tritonclient_grpc()
except ImportError:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)
from tritonclient.grpc import service_pb2 as tpb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as tpb_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_MESSAGE = 4 * 1024 * 1024
MODELS = ["mlp", "int-bool", "two-inputs"]


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except InferenceServerException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oip")
    repo = tmp / "repo"
    for name in MODELS:
        make_package(repo, name)
    make_package(repo, "cnn", target="cuda-sm90")  # offered, but no node here can run it
    with Harness(repo, tmp, max_message=MAX_MESSAGE, sample_rate=0) as h:
        client = tritonclient_grpc.InferenceServerClient(h.address)
        wait_for(lambda: all(client.is_model_ready(m) for m in MODELS), 30, "nodes to serve every model")
        channel = grpc.insecure_channel(h.address)
        yield {"client": client, "stub": tpb_grpc.GRPCInferenceServiceStub(channel), "repo": repo,
               "channel": channel, "gateway_key": h.gateway_key, "address": h.address}
        channel.close()
        client.close()


def reference(repo: Path, name: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Manifest]:
    m = Manifest.loads((repo / name / "1" / "manifest.json").read_bytes())
    return ORTRunner(repo / name / "1" / "model.onnx", m.inputs).run(inputs), m


def assert_close(got: np.ndarray, want: np.ndarray, spec: OutputSpec) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, atol=spec.tolerance.atol, rtol=spec.tolerance.rtol)
    else:
        np.testing.assert_array_equal(got, want)


def expect_error(fn, status: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as ei:
        fn()
    e = ei.value
    assert e.status() == f"StatusCode.{status}", (e.status(), e.message())
    for f in fragments:
        assert f in e.message(), e.message()
    return e.message()


def expect_rpc_error(fn, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    for f in fragments:
        assert f in ei.value.details(), ei.value.details()
    return ei.value.details()


def infer_inputs(arrays: dict[str, np.ndarray]):
    out = []
    for name, a in arrays.items():
        i = tritonclient_grpc.InferInput(name, list(a.shape), dtypes.from_name(a.dtype.name).oip)
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def typed_request(model: str, arrays: dict[str, np.ndarray], **kw) -> tpb.ModelInferRequest:
    req = tpb.ModelInferRequest(model_name=model, **kw)
    for name, a in arrays.items():
        spec = dtypes.from_name(a.dtype.name)
        t = req.inputs.add(name=name, datatype=spec.oip, shape=a.shape)
        getattr(t.contents, spec.oip_contents_field).extend(a.ravel().tolist())
    return req


def raw_request(model: str, arrays: dict[str, np.ndarray], **kw) -> tpb.ModelInferRequest:
    req = tpb.ModelInferRequest(model_name=model, **kw)
    for name, a in arrays.items():
        req.inputs.add(name=name, datatype=dtypes.from_name(a.dtype.name).oip, shape=a.shape)
        req.raw_input_contents.append(a.tobytes())
    return req


X = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}


# ------------------------------------------------------------------ health and metadata

def test_server_health_and_metadata(pool):
    c = pool["client"]
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta.name == "hyperinfer" and meta.version
    assert c.is_model_ready("mlp") and c.is_model_ready("mlp", "1")
    assert not c.is_model_ready("mlp", "7") and not c.is_model_ready("nope")


def test_model_metadata(pool):
    md = pool["client"].get_model_metadata("int-bool")
    assert md.name == "int-bool" and list(md.versions) == ["1"] and md.platform == "hyperinfer-tvm"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("scores", "FP32", [4, 10])]
    assert [(t.name, t.datatype) for t in md.outputs] == [("label", "INT64"), ("positive", "BOOL"), ("scaled", "FP32")]
    expect_error(lambda: pool["client"].get_model_metadata("nope"), "NOT_FOUND", "nope")


def test_standard_health_service_and_reflection(pool):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    h = health_pb2_grpc.HealthStub(pool["channel"])
    for svc in ("", "inference.GRPCInferenceService"):
        assert h.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    r = reflection_pb2_grpc.ServerReflectionStub(pool["channel"])
    resp = next(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert "inference.GRPCInferenceService" in names and "hyperinfer.v1.Pool" in names


# ------------------------------------------------------------------ inference

def test_raw_inference_matches_onnx_runtime(pool):
    res = pool["client"].infer("mlp", infer_inputs(X), request_id="client-42", client_timeout=30)
    want, m = reference(pool["repo"], "mlp", X)
    assert_close(res.as_numpy("probs"), want["probs"], m.outputs[0])
    r = res.get_response()
    assert r.id == "client-42" and r.model_name == "mlp" and r.model_version == "1"


def test_all_output_types_and_requested_subset(pool):
    scores = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    want, m = reference(pool["repo"], "int-bool", {"scores": scores})
    res = pool["client"].infer("int-bool", infer_inputs({"scores": scores}))
    for spec in m.outputs:
        assert_close(res.as_numpy(spec.name), want[spec.name], spec)
    only = pool["client"].infer("int-bool", infer_inputs({"scores": scores}),
                                outputs=[tritonclient_grpc.InferRequestedOutput("positive")])
    assert [o.name for o in only.get_response().outputs] == ["positive"]
    np.testing.assert_array_equal(only.as_numpy("positive"), want["positive"])


def test_two_inputs_in_any_order(pool):
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((2, 16)).astype(np.float32) for _ in range(2))
    res = pool["client"].infer("two-inputs", infer_inputs({"b": b, "a": a}))
    want, m = reference(pool["repo"], "two-inputs", {"a": a, "b": b})
    for spec in m.outputs:
        assert_close(res.as_numpy(spec.name), want[spec.name], spec)


def test_typed_inputs_raw_outputs(pool):
    resp = pool["stub"].ModelInfer(typed_request("mlp", X, id="t1"), timeout=30)
    want, m = reference(pool["repo"], "mlp", X)
    got = tritonclient_grpc.InferResult(resp).as_numpy("probs")
    assert_close(got, want["probs"], m.outputs[0])
    assert resp.id == "t1"


def test_typed_outputs_on_request(pool):
    scores = np.random.default_rng(4).standard_normal((4, 10)).astype(np.float32)
    req = typed_request("int-bool", {"scores": scores})
    req.parameters["binary_data_output"].bool_param = False
    resp = pool["stub"].ModelInfer(req, timeout=30)
    assert not resp.raw_output_contents
    want, _ = reference(pool["repo"], "int-bool", {"scores": scores})
    by_name = {o.name: o for o in resp.outputs}
    np.testing.assert_array_equal(np.array(by_name["label"].contents.int64_contents), want["label"])
    np.testing.assert_array_equal(np.array(by_name["positive"].contents.bool_contents).reshape(4, 10),
                                  want["positive"])
    np.testing.assert_allclose(np.array(by_name["scaled"].contents.fp32_contents, np.float32).reshape(4, 10),
                               want["scaled"], rtol=1e-5)


def test_version_and_verify_parameter(pool):
    for mode in ("auto", "sync", "always"):
        res = pool["client"].infer("mlp", infer_inputs(X), model_version="1", parameters={"verify": mode})
        assert res.as_numpy("probs").shape == (1, 10)


def receipt_of(result) -> str:
    return result.get_response().parameters[RECEIPT_PARAMETER].string_param


def test_receipt_verifies_offline(pool):
    res = pool["client"].infer("mlp", infer_inputs(X), request_id="mine")
    rj = receipt_of(res)
    checks = verify_receipt(rj, pool["gateway_key"])
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    r = receipt_from_json(rj)
    assert r.status == "unchecked" and r.model_name == "mlp" and r.model_version == 1
    assert r.request_id != "mine"  # nodes see the gateway's own request ids
    assert json.loads(rj)["node_id"] == r.node_id


def test_always_mode_is_checked_by_the_other_operator(pool):
    res = pool["client"].infer("mlp", infer_inputs(X), parameters={"verify": "always"})
    r = receipt_from_json(receipt_of(res))
    assert r.status == "agreed" and r.validator_node_id and r.validator_node_id != r.node_id
    assert all(c.ok for c in verify_receipt(receipt_of(res), pool["gateway_key"]))


def test_load_is_spread_over_both_nodes(pool):
    nodes = {receipt_from_json(receipt_of(pool["client"].infer("mlp", infer_inputs(X)))).node_id for _ in range(16)}
    # sequential requests tie at 0 in flight; ties are broken at random, so both nodes get work
    assert len(nodes) == 2


# ------------------------------------------------------------------ bad requests

def test_unknown_model_and_version(pool):
    c = pool["client"]
    expect_error(lambda: c.infer("nope", infer_inputs(X)), "NOT_FOUND", "nope")
    expect_error(lambda: c.infer("mlp", infer_inputs(X), model_version="9"), "NOT_FOUND", "no version 9")
    expect_error(lambda: c.infer("mlp", infer_inputs(X), model_version="x1"), "INVALID_ARGUMENT", "model_version")


def test_wrong_input_name_dtype_shape(pool):
    c = pool["client"]
    expect_error(lambda: c.infer("mlp", infer_inputs({"y": X["x"]})), "INVALID_ARGUMENT", "inputs[0].name", "'y'")
    expect_error(lambda: c.infer("mlp", infer_inputs({"x": X["x"].astype(np.float64)})),
                 "INVALID_ARGUMENT", "inputs[0].datatype", "FP64", "FP32")
    expect_error(lambda: c.infer("mlp", infer_inputs({"x": np.zeros((2, 64), np.float32)})),
                 "INVALID_ARGUMENT", "inputs[0].shape", "[2, 64]", "[1, 64]")
    expect_error(lambda: c.infer("two-inputs", infer_inputs({"a": np.zeros((2, 16), np.float32)})),
                 "INVALID_ARGUMENT", "missing input 'b'")


def test_unknown_requested_output(pool):
    expect_error(lambda: pool["client"].infer("mlp", infer_inputs(X),
                                              outputs=[tritonclient_grpc.InferRequestedOutput("logits")]),
                 "INVALID_ARGUMENT", "outputs[0].name", "logits")


def test_bad_verify_parameter(pool):
    expect_error(lambda: pool["client"].infer("mlp", infer_inputs(X), parameters={"verify": "never"}),
                 "INVALID_ARGUMENT", "parameters.verify")
    expect_error(lambda: pool["client"].infer("mlp", infer_inputs(X), parameters={"verify": 1}),
                 "INVALID_ARGUMENT", "parameters.verify")


def test_raw_contents_of_the_wrong_size(pool):
    req = raw_request("mlp", X)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    expect_rpc_error(lambda: pool["stub"].ModelInfer(req, timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                     "raw_input_contents[0]", "252 bytes", "needs 256")
    req = raw_request("mlp", X)
    req.raw_input_contents.append(b"")
    expect_rpc_error(lambda: pool["stub"].ModelInfer(req, timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                     "raw_input_contents", "2 entries")


def test_typed_and_raw_together(pool):
    req = typed_request("mlp", X)
    req.raw_input_contents.append(X["x"].tobytes())
    expect_rpc_error(lambda: pool["stub"].ModelInfer(req, timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                     "inputs[0].contents", "raw_input_contents")


def test_typed_count_mismatch(pool):
    req = typed_request("mlp", X)
    del req.inputs[0].contents.fp32_contents[-1]
    expect_rpc_error(lambda: pool["stub"].ModelInfer(req, timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                     "inputs[0].contents.fp32_contents", "63 values")


def test_model_no_node_can_serve_is_unavailable(pool):
    c = pool["client"]
    assert not c.is_model_ready("cnn")
    image = np.zeros((1, 3, 32, 32), np.float32)
    t0 = time.monotonic()
    expect_error(lambda: c.infer("cnn", infer_inputs({"image": image}), client_timeout=30), "UNAVAILABLE",
                 "no node can serve model cnn version 1 (2 nodes known, 0 healthy)")
    assert time.monotonic() - t0 < 5  # at once, not after a timeout


def test_oversized_message(pool):
    big = {"x": np.zeros((MAX_MESSAGE // 4 + 1024,), np.float32)}
    expect_error(lambda: pool["client"].infer("mlp", infer_inputs(big), client_timeout=30), "RESOURCE_EXHAUSTED")
    # the gateway is still serving afterwards
    assert pool["client"].infer("mlp", infer_inputs(X)).as_numpy("probs").shape == (1, 10)

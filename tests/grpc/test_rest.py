"""The KServe v2 REST front door and the Prometheus endpoint, called by real clients:
tritonclient.http (binary tensor extension and JSON), curl (a child process), raw
HTTP for bad input, and prometheus_client's text parser for /metrics.

Same harness as test_oip.py (a child process: a real gateway with its gRPC,
REST and metrics ports, two real nodes running ONNX Runtime), so REST and gRPC
go through the one data plane and are counted together.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hyperinfer import dtypes
from hyperinfer.package import Manifest
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: the harness is a plain module here
from oip_harness import Harness, import_tritonclient_grpc, make_package  # noqa: E402

try:
    import tritonclient.http as tclient
    tgrpc = import_tritonclient_grpc()
except ImportError:
    pytest.skip("tritonclient[http,grpc] is not installed", allow_module_level=True)
from support import metric_total, parse_metrics  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_MESSAGE = 4 * 1024 * 1024
MODELS = ["mlp", "int-bool", "two-inputs", "simple"]  # simple: Triton's example model (INT32 add/sub)
X = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rest")
    repo = tmp / "repo"
    for name in MODELS:
        make_package(repo, name)
    make_package(repo, "cnn", target="cuda-sm90")  # offered, but no node here can run it
    with Harness(repo, tmp, max_message=MAX_MESSAGE, sample_rate=0, http=True) as h:
        client = tclient.InferenceServerClient(h.http_address, network_timeout=30)
        deadline = time.monotonic() + 30
        while not all(client.is_model_ready(m) for m in MODELS):
            assert time.monotonic() < deadline, "nodes did not serve every model in 30 s"
            time.sleep(0.05)
        yield {"client": client, "repo": repo, "http": h.http_address, "metrics": h.metrics_address,
               "grpc": h.address, "gateway_key": h.gateway_key}
        client.close()


def reference(repo: Path, name: str, inputs: dict[str, np.ndarray]):
    m = Manifest.loads((repo / name / "1" / "manifest.json").read_bytes())
    return ORTRunner(repo / name / "1" / "model.onnx", m.inputs).run(inputs), m


def assert_matches(got: dict[str, np.ndarray], repo: Path, name: str, inputs: dict[str, np.ndarray]) -> None:
    want, m = reference(repo, name, inputs)
    for spec in m.outputs:
        g, w = got[spec.name], want[spec.name]
        assert g.dtype == w.dtype and g.shape == w.shape, (spec.name, g.dtype, g.shape)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, atol=spec.tolerance.atol, rtol=spec.tolerance.rtol)
        else:
            np.testing.assert_array_equal(g, w)


def check_receipt(pool, params: dict, model: str) -> None:
    text = params[RECEIPT_PARAMETER]
    r = receipt_from_json(text)
    assert r.model_name == model and r.status == "unchecked"
    checks = verify_receipt(text, pool["gateway_key"])
    assert checks and all(c.ok for c in checks), checks


def call(pool, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         where: str = "http") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*pool[where].rsplit(":", 1), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


INPUTS = {
    "mlp": lambda rng: {"x": rng.standard_normal((1, 64)).astype(np.float32)},
    "int-bool": lambda rng: {"scores": rng.standard_normal((4, 10)).astype(np.float32)},
    "two-inputs": lambda rng: {"b": rng.standard_normal((2, 16)).astype(np.float32),
                               "a": rng.standard_normal((2, 16)).astype(np.float32)},
    "simple": lambda rng: {"INPUT0": rng.integers(-1000, 1000, (1, 16), dtype=np.int32),
                           "INPUT1": rng.integers(-1000, 1000, (1, 16), dtype=np.int32)},
}


# ------------------------------------------------------------------ health and metadata

def test_health_and_metadata(pool):
    c = pool["client"]
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("mlp") and c.is_model_ready("mlp", "1")
    assert not c.is_model_ready("mlp", "7") and not c.is_model_ready("nope") and not c.is_model_ready("cnn")
    assert c.get_server_metadata()["name"] == "hyperinfer"
    md = c.get_model_metadata("int-bool")
    assert md["name"] == "int-bool" and md["versions"] == ["1"] and md["platform"] == "hyperinfer-tvm"
    assert md["inputs"] == [{"name": "scores", "datatype": "FP32", "shape": [4, 10]}]
    assert [(t["name"], t["datatype"]) for t in md["outputs"]] == [("label", "INT64"), ("positive", "BOOL"),
                                                                    ("scaled", "FP32")]
    # the same answer as the gRPC front door: one data plane behind both
    g = tgrpc.InferenceServerClient(pool["grpc"])
    try:
        gm = g.get_model_metadata("int-bool", as_json=True)
        assert [(t["name"], t["datatype"]) for t in gm["outputs"]] == [(t["name"], t["datatype"]) for t in md["outputs"]]
    finally:
        g.close()


# ------------------------------------------------------------------ inference

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_tritonclient_http_infer_with_receipt(pool, model, binary):
    arrays = INPUTS[model](np.random.default_rng(7))
    inputs = []
    for name, a in arrays.items():
        i = tclient.InferInput(name, list(a.shape), dtypes.from_name(a.dtype.name).oip)
        i.set_data_from_numpy(a, binary_data=binary)
        inputs.append(i)
    _, m = reference(pool["repo"], model, arrays)
    outputs = [tclient.InferRequestedOutput(o.name, binary_data=binary) for o in m.outputs]
    res = pool["client"].infer(model, inputs, outputs=outputs, request_id=f"rest-{model}")
    resp = res.get_response()
    assert resp["id"] == f"rest-{model}" and resp["model_name"] == model and resp["model_version"] == "1"
    for o in resp["outputs"]:
        assert ("data" in o) is (not binary)
    assert_matches({o.name: res.as_numpy(o.name) for o in m.outputs}, pool["repo"], model, arrays)
    check_receipt(pool, resp["parameters"], model)


def test_tritonclient_http_defaults_and_subset(pool):
    # no outputs named: tritonclient asks for every output in binary; one named: only that one
    scores = INPUTS["int-bool"](np.random.default_rng(8))
    i = tclient.InferInput("scores", [4, 10], "FP32")
    i.set_data_from_numpy(scores["scores"])
    res = pool["client"].infer("int-bool", [i], model_version="1")
    assert [o["name"] for o in res.get_response()["outputs"]] == ["label", "positive", "scaled"]
    assert_matches({n: res.as_numpy(n) for n in ("label", "positive", "scaled")}, pool["repo"], "int-bool", scores)
    only = pool["client"].infer("int-bool", [i], outputs=[tclient.InferRequestedOutput("positive")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["positive"]


def test_gzip_request_body(pool):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": X.ravel().tolist()}]}).encode()
    status, headers, data = call(pool, "POST", "/v2/models/mlp/infer", gzip.compress(body),
                                 {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert status == 200, data
    out = json.loads(data)["outputs"][0]
    assert_matches({"probs": np.asarray(out["data"], np.float32).reshape(out["shape"])}, pool["repo"], "mlp",
                   {"x": X})


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_json_infer(pool):
    body = json.dumps({"id": "curl-1", "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                                   "data": X.tolist()}]})  # nested lists, as KServe allows
    proc = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
                           "-d", body, f"http://{pool['http']}/v2/models/mlp/versions/1/infer"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resp = json.loads(proc.stdout)
    assert resp["id"] == "curl-1" and resp["model_version"] == "1"
    (out,) = resp["outputs"]
    assert out["name"] == "probs" and out["datatype"] == "FP32" and out["shape"] == [1, 10]
    assert_matches({"probs": np.asarray(out["data"], np.float32).reshape(1, 10)}, pool["repo"], "mlp", {"x": X})
    check_receipt(pool, resp["parameters"], "mlp")
    # an error through curl: the status and one JSON line
    bad = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-d", "{}",
                          f"http://{pool['http']}/v2/models/nope/infer"], capture_output=True, text=True, timeout=60)
    text, code = bad.stdout.rsplit("\n", 1)
    assert code == "404" and "nope" in json.loads(text)["error"]


# ------------------------------------------------------------------ bad input, every endpoint

def _json_body(inputs=None, **extra) -> bytes:
    doc = {"inputs": inputs if inputs is not None else
           [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}], **extra}
    return json.dumps(doc).encode()


def _binary(json_doc: dict, blob: bytes) -> tuple[bytes, dict]:
    head = json.dumps(json_doc).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


_X_BIN = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
INFER = "/v2/models/mlp/infer"
BAD = [
    # (method, path, body, headers, status, fragment of the error)
    ("GET", "/nope", None, {}, 404, "no such endpoint"),
    ("POST", "/v2/health/live", b"", {}, 405, "not allowed"),
    ("GET", "/v2/models/nope", None, {}, 404, "nope"),
    ("GET", "/v2/models/mlp/versions/abc", None, {}, 400, "positive integer version"),
    ("GET", "/v2/models/mlp/versions/7", None, {}, 404, "7"),
    ("GET", "/v2/models/nope/ready", None, {}, 404, "nope"),
    ("GET", "/v2/models/cnn/ready", None, {}, 503, "not ready"),
    ("GET", INFER, None, {}, 405, "not allowed"),
    ("POST", "/v2/models/nope/infer", _json_body(), {}, 404, "nope"),
    ("POST", "/v2/models/mlp/versions/0/infer", _json_body(), {}, 400, "positive integer version"),
    ("POST", "/v2/models/cnn/infer", _json_body([{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                  "data": [0.0] * 3072}]), {}, 503, "cnn"),
    ("POST", INFER, b"not json", {}, 400, "not valid JSON"),
    ("POST", INFER, b"[1, 2]", {}, 400, "expected a JSON object"),
    ("POST", INFER, b"{}", {}, 400, "inputs: expected a list"),
    ("POST", INFER, _json_body([{"shape": [1, 64], "datatype": "FP32", "data": []}]), {}, 400, "inputs[0].name"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 64], "datatype": "FP99", "data": []}]), {}, 400,
     "inputs[0].datatype"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, -64], "datatype": "FP32", "data": []}]), {}, 400,
     "negative dimension"),
    ("POST", INFER, _json_body([{"name": "x", "shape": "1x64", "datatype": "FP32", "data": []}]), {}, 400,
     "inputs[0].shape"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 3}]), {}, 400,
     "inputs[0].data: 3 values"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}]), {}, 400,
     "takes numbers"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1.0], [1.0, 2.0]]}]),
     {}, 400, "inputs[0].data"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 64], "datatype": "FP32"}]), {}, 400, "inputs[0].data"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": [0.0] * 64}]), {}, 400,
     "inputs[0].shape: [2, 32]"),
    ("POST", INFER, _json_body([{"name": "x", "shape": [1, 64], "datatype": "INT32", "data": [0] * 64}]), {}, 400,
     "inputs[0].datatype: INT32"),
    ("POST", INFER, _json_body([{"name": "y", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]), {}, 400,
     "no input 'y'"),
    ("POST", INFER, _json_body([]), {}, 400, "missing input 'x'"),
    ("POST", INFER, _json_body(outputs=[{"name": "logits"}]), {}, 400, "outputs[0].name"),
    ("POST", INFER, _json_body(outputs=[{"name": "probs", "parameters": {"binary_data": "yes"}}]), {}, 400,
     "outputs[0].parameters.binary_data"),
    ("POST", INFER, _json_body(outputs=[{"name": "probs", "parameters": {"classification": 3}}]), {}, 400,
     "classification"),
    ("POST", INFER, _json_body(parameters={"verify": "maybe"}), {}, 400, "parameters.verify"),
    ("POST", INFER, _json_body(parameters={"timeout": -5}), {}, 400, "parameters.timeout"),
    ("POST", INFER, _json_body(parameters={"nested": {"a": 1}}), {}, 400, "parameters.nested"),
    ("POST", INFER, _json_body(), {"Inference-Header-Content-Length": "x"}, 400, "Inference-Header-Content-Length"),
    ("POST", INFER, _json_body(), {"Inference-Header-Content-Length": "999999"}, 400, "the body has only"),
    ("POST", INFER, *_binary(_X_BIN, b"\0" * 100), 400, "only 100 follow"),
    ("POST", INFER, *_binary(_X_BIN, b"\0" * 300), 400, "binary_data_size add up to 256"),
    ("POST", INFER, *_binary({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                          "parameters": {"binary_data_size": 255}}]}, b"\0" * 255), 400,
     "shape [1, 64] of FP32 needs 256"),
    ("POST", INFER, _json_body(), {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("POST", INFER, b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ("POST", INFER, b"{" + b" " * (MAX_MESSAGE + 10) + b"}", {}, 413, "limit"),
    ("POST", INFER, gzip.compress(b"{" + b" " * (MAX_MESSAGE + 10) + b"}"), {"Content-Encoding": "gzip"}, 413,
     "limit"),
]


@pytest.mark.parametrize("method,path,body,headers,status,fragment", BAD,
                         ids=[f"{i}-{b[1]}-{b[4]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_precise_status_and_json_error(pool, method, path, body, headers, status, fragment):
    got, hdrs, data = call(pool, method, path, body, headers)
    assert got == status, data[:500]
    assert hdrs["content-type"].startswith("application/json")
    err = json.loads(data)["error"]
    assert fragment in err and "Traceback" not in err, err


def test_tritonclient_http_sees_the_error(pool):
    i = tclient.InferInput("x", [2, 32], "FP32")
    i.set_data_from_numpy(np.zeros((2, 32), np.float32))
    with pytest.raises(InferenceServerException) as ei:
        pool["client"].infer("mlp", [i])
    assert ei.value.status() == "400" and "inputs[0].shape: [2, 32]" in ei.value.message()
    # and the server is fine afterwards
    assert pool["client"].is_server_live()


# ------------------------------------------------------------------ metrics

def scrape(pool) -> dict[str, dict[tuple, float]]:
    status, headers, data = call(pool, "GET", "/metrics", where="metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return parse_metrics(data.decode())


total = metric_total


def test_metrics_count_what_was_sent(pool):
    before = scrape(pool)
    c = pool["client"]
    n_rest, n_grpc, n_bad = 7, 5, 2
    arrays = INPUTS["two-inputs"](np.random.default_rng(9))
    for _ in range(n_rest):
        ins = []
        for name, a in arrays.items():
            ins.append(tclient.InferInput(name, list(a.shape), "FP32"))
            ins[-1].set_data_from_numpy(a)
        c.infer("two-inputs", ins)
    g = tgrpc.InferenceServerClient(pool["grpc"])
    try:
        for _ in range(n_grpc):
            ins = []
            for name, a in arrays.items():
                ins.append(tgrpc.InferInput(name, list(a.shape), "FP32"))
                ins[-1].set_data_from_numpy(a)
            g.infer("two-inputs", ins)
    finally:
        g.close()
    for _ in range(n_bad):
        status, _, _ = call(pool, "POST", "/v2/models/two-inputs/infer", _json_body([]))
        assert status == 400
    sent = n_rest + n_grpc
    # the ledger writes behind: wait until every job is in it
    deadline = time.monotonic() + 20
    while True:
        after = scrape(pool)
        jobs = total(after, "hyperinfer_node_jobs_total") - total(before, "hyperinfer_node_jobs_total")
        if jobs >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert jobs == sent
    # Triton's names, from the data plane's statistics: REST and gRPC counted alike, failures by reason
    model = {"model": "two-inputs", "version": "1"}
    delta = lambda name, **kw: total(after, name, **kw) - total(before, name, **kw)  # noqa: E731
    assert delta("nv_inference_request_success_total", **model) == sent
    assert delta("nv_inference_count_total", **model) == sent
    assert delta("nv_inference_exec_count_total", **model) == sent
    assert delta("nv_inference_request_failure_total", **model, reason="INVALID_ARGUMENT") == n_bad
    assert delta("nv_inference_request_failure_total", **model) == n_bad
    assert delta("nv_inference_request_duration_us_total", **model) > 0
    assert delta("nv_inference_compute_infer_duration_us_total", **model) > 0
    assert total(after, "hyperinfer_nodes_healthy") == 2
    assert total(after, "hyperinfer_nodes", state="healthy") == 2
    assert {dict(k)["operator"] for k in after["hyperinfer_node_jobs_total"]} == {"operator0", "operator1"}
    assert total(after, "hyperinfer_node_faults_total") == 0
    # the /metrics port serves nothing else
    status, _, data = call(pool, "GET", "/v2/health/live", where="metrics")
    assert status == 404 and "/metrics" in json.loads(data)["error"]


# ------------------------------------------------------------------ Triton's extensions over HTTP

def test_statistics_config_and_repository_over_http(pool):
    c = pool["client"]
    # statistics: the same counters as gRPC ModelStatistics and the nv_* metrics
    g = tgrpc.InferenceServerClient(pool["grpc"])
    try:
        rest = c.get_inference_statistics("two-inputs")["model_stats"]
        grpc_stats = g.get_inference_statistics("two-inputs", as_json=True)["model_stats"]
    finally:
        g.close()
    assert [(s["name"], s["version"]) for s in rest] == [("two-inputs", "1")]
    ok = rest[0]["inference_stats"]["success"]["count"]
    assert int(grpc_stats[0]["inference_stats"]["success"].get("count", 0)) >= ok
    assert total(scrape(pool), "nv_inference_request_success_total", model="two-inputs") >= ok
    assert {s["name"] for s in c.get_inference_statistics()["model_stats"]} >= set(MODELS)
    assert c.get_inference_statistics("mlp", "1")["model_stats"][0]["version"] == "1"
    # config: Triton's ModelConfig as JSON
    cfg = c.get_model_config("int-bool")
    assert cfg["name"] == "int-bool" and [t["name"] for t in cfg["input"]] == ["scores"]
    # repository: index, unload, load (the model is offered again and served)
    index = {(e["name"], e["version"]): e["state"] for e in c.get_model_repository_index()}
    assert index[("int-bool", "1")] == "READY"
    c.unload_model("int-bool")
    assert not c.is_model_ready("int-bool")
    assert ("int-bool", "1") not in {(e["name"], e["version"]) for e in
                                     c.get_model_repository_index() if e["state"] == "READY"}
    c.load_model("int-bool")
    deadline = time.monotonic() + 30
    while not c.is_model_ready("int-bool"):
        assert time.monotonic() < deadline, "int-bool was not served again within 30 s"
        time.sleep(0.05)
    for method, path, body, status, fragment in [
        ("GET", "/v2/models/nope/stats", None, 404, "nope"),
        ("GET", "/v2/models/nope/config", None, 404, "nope"),
        ("POST", "/v2/repository/index", b'{"ready": "yes"}', 400, "ready"),
        ("POST", "/v2/repository/models/nope/load", b"{}", 404, "nope"),
        ("POST", "/v2/repository/models/mlp/load", b'{"parameters": {"colour": "red"}}', 400, "colour"),
        ("POST", "/v2/repository/models/mlp/load", b'{"parameters": {"file:1/model.onnx": "%%"}}', 400, "base64"),
        ("POST", "/v2/repository/models/mlp/unload", b'{"parameters": {"unload_dependents": 1}}', 400,
         "unload_dependents"),
        ("GET", "/v2/repository/index", None, 405, "not allowed"),
    ]:
        got, _, data = call(pool, method, path, body)
        assert got == status and fragment in json.loads(data)["error"], (path, got, data)


# ------------------------------------------------------------------ TLS

def test_rest_and_metrics_over_tls_with_the_gateway_certificate(tmp_path):
    """With --tls-cert/--tls-key the REST and metrics ports are HTTPS with the gateway's certificate."""
    import ssl

    from hyperinfer import pki

    repo = tmp_path / "repo"
    make_package(repo, "mlp")
    pki.pool_pki(tmp_path / "pki", ["gateway", "node"])
    ca = str(tmp_path / "pki" / "ca.pem")
    with Harness(repo, tmp_path, tls=tmp_path / "pki", http=True) as h:
        client = tclient.InferenceServerClient(h.http_address, ssl=True, ssl_options={"ca_certs": ca},
                                               network_timeout=30)
        deadline = time.monotonic() + 30
        while not client.is_model_ready("mlp"):
            assert time.monotonic() < deadline, "nodes did not serve mlp over TLS in 30 s"
            time.sleep(0.05)
        i = tclient.InferInput("x", [1, 64], "FP32")
        i.set_data_from_numpy(X)
        res = client.infer("mlp", [i])
        assert_matches({"probs": res.as_numpy("probs")}, repo, "mlp", {"x": X})
        client.close()
        ctx = ssl.create_default_context(cafile=ca)
        host, port = h.metrics_address.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
        conn.request("GET", "/metrics")
        assert b"nv_inference_request_success" in conn.getresponse().read()
        conn.close()
        # plaintext HTTP to the TLS port gets no answer it could mistake for one
        plain = http.client.HTTPConnection(*h.http_address.rsplit(":", 1), timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/v2/health/live")
            plain.getresponse()
        plain.close()


# ------------------------------------------------------------------ metrics with a cheater

def test_metrics_show_a_cheaters_faults_slashes_and_quarantine(tmp_path):
    """Three operators, one of them returns wrong (but signed) floats. Every request is checked;
    /metrics reports per node and operator exactly what the ledger says (Pool.Status)."""
    from hyperinfer.pool_status import fetch_status

    repo = tmp_path / "repo"
    make_package(repo, "mlp")
    with Harness(repo, tmp_path, http=True, nodes=3, tamper=1, sample_rate=1.0) as h:
        pool = {"http": h.http_address, "metrics": h.metrics_address}
        client = tclient.InferenceServerClient(h.http_address, network_timeout=30)
        deadline = time.monotonic() + 30
        while total(scrape(pool), "hyperinfer_nodes_healthy") < 3:
            assert time.monotonic() < deadline, "three nodes did not join in 30 s"
            time.sleep(0.05)
        i = tclient.InferInput("x", [1, 64], "FP32")
        i.set_data_from_numpy(X)
        deadline = time.monotonic() + 60
        while total(scrape(pool), "hyperinfer_nodes", state="quarantined") < 1:
            assert time.monotonic() < deadline, "the cheater was not quarantined in 60 s"
            try:
                res = client.infer("mlp", [i], parameters={"verify": "always"})  # never the cheater's answer
            except InferenceServerException as e:
                # 503 while every node is held by a pending dispute or a missed heartbeat: retry
                assert e.status() == "503", e
                time.sleep(0.2)
                continue
            assert_matches({"probs": res.as_numpy("probs")}, repo, "mlp", {"x": X})
        client.close()
        time.sleep(0.5)  # the ledger writes behind
        m, status = scrape(pool), fetch_status(h.address)
    cheater = "operator2"
    for n in status["nodes"]:
        labels = {"node": n["node_id"], "operator": n["operator"]}
        assert total(m, "hyperinfer_node_jobs_total", **labels) == n["jobs"], n
        assert total(m, "hyperinfer_node_checks_total", **labels) == n["checks"], n
        assert total(m, "hyperinfer_node_faults_total", **labels) == n["faults"], n
        assert total(m, "hyperinfer_node_slashed_total", **labels) == pytest.approx(n["slashed"]), n
        assert total(m, "hyperinfer_node_stake", **labels) == pytest.approx(n["stake"]), n
        assert total(m, "hyperinfer_node_up", **labels) == (1.0 if n["state"] == "healthy" else 0.0), n
        if n["operator"] == cheater:
            assert n["state"] == "quarantined" and n["faults"] >= 1 and n["slashed"] > 0
            assert total(m, "hyperinfer_node_quarantined", **labels) == 1
        else:
            assert n["faults"] == 0 and total(m, "hyperinfer_node_quarantined", **labels) == 0
    assert total(m, "hyperinfer_nodes", state="quarantined") == 1 and total(m, "hyperinfer_nodes_healthy") == 2
    # disputes recorded as evidence name the nodes involved
    assert total(m, "hyperinfer_node_disputes_total", operator=cheater) == total(m, "hyperinfer_disputes_total")

"""Triton's extension RPCs on a real pool: `hyperinfer up` (a gateway and a node as processes)
serving Triton's example models `simple` and `simple_int8`, compiled here by `hyperinfer models
build`, called by Triton's own gRPC Python examples (tests/e2e/triton_examples, unmodified apart
from the server name) and by tritonclient.grpc: ModelStatistics counts what was sent,
ModelConfig, ModelStreamInfer with receipts, RepositoryIndex/Load/Unload (including a package
sent with the load request), and a precise status for bad input on every new RPC.

The model control example runs last of the examples (it unloads `simple`, which is then
loaded again) and before anything adds a package (it expects 8 in the repository).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from hyperinfer import zoo
from hyperinfer.package import MANIFEST, Manifest
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json

sys.path.insert(0, str(Path(__file__).parent))
from test_up import Up, free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
from oip_harness import import_tritonclient_grpc  # noqa: E402

try:
    grpcclient = import_tritonclient_grpc()
except ImportError:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)
from tritonclient.grpc import service_pb2 as tpb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as tpb_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

EXAMPLES = Path(__file__).parent / "triton_examples"
# (script, the line it prints on success); model control last: it unloads `simple`
SCRIPTS = [
    ("simple_grpc_infer_client.py", "PASS: infer"),
    ("simple_grpc_async_infer_client.py", "PASS: Async infer"),
    ("simple_grpc_aio_infer_client.py", "PASS: grpc aio infer"),
    ("simple_grpc_health_metadata.py", None),
    ("simple_grpc_custom_args_client.py", "PASS: CustomArgs"),
    ("simple_grpc_keepalive_client.py", "PASS: KeepAlive"),
    ("grpc_explicit_int_content_client.py", "PASS: explicit int"),
    ("grpc_explicit_int8_content_client.py", "PASS: explicit int8"),
    ("simple_grpc_model_control.py", "PASS: model control"),
]


def republish(src: Path, version: int) -> Path:
    """A copy of a package as another version of the same model (same artifacts)."""
    dst = src.parent / str(version)
    shutil.copytree(src, dst)
    d = json.loads((dst / MANIFEST).read_text())
    d["version"] = version
    (dst / MANIFEST).write_text(json.dumps(d, indent=2))
    return dst


@pytest.fixture(scope="module")
def pool(compiled_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "repo"
    for name in ("simple", "simple_int8"):
        zoo.build(name, repo, sources=tmp / "onnx", progress=False)
    for name in ("mlp", "int-bool", "two-inputs"):
        shutil.copytree(compiled_small(name).path, repo / name / "1")
        republish(repo / name / "1", 2)
    # 8 packages, as in the repository Triton's model control example expects
    assert sum(1 for _ in repo.glob("*/*/manifest.json")) == 8
    port = free_port()
    up = Up(["--repository", str(repo), "--nodes", "1", "--port", str(port), "--state", str(tmp / "state"),
             "--http-port", "0", "--metrics-port", "0",
             "--allow-unsigned", "--threads", "1", "--heartbeat-interval", "0.2", "--model-timeout", "240",
             "--open-model-control"],  # Triton's own examples call load/unload without credentials
            cwd=tmp)
    try:
        up.find(r"^ready in [\d.]+ s", 300)
        address = f"127.0.0.1:{port}"
        client = grpcclient.InferenceServerClient(address)
        channel = grpc.insecure_channel(address)
        yield {"address": address, "client": client, "stub": tpb_grpc.GRPCInferenceServiceStub(channel),
               "repo": repo, "tmp": tmp, "up": up}
        channel.close()
        client.close()
    finally:
        up.kill_all()


def run_example(script: str, address: str, tmp: Path) -> subprocess.CompletedProcess:
    path = EXAMPLES / script
    if script == "simple_grpc_health_metadata.py":  # the one change: the server's name
        text = path.read_text()
        assert text.count('metadata.name == "triton"') == 1
        path = tmp / script
        path.write_text(text.replace('metadata.name == "triton"', 'metadata.name == "hyperinfer"'))
    return subprocess.run([sys.executable, str(path), "-u", address], capture_output=True, text=True, timeout=120)


def simple_inputs(dtype=np.int32, datatype="INT32", offset=0):
    a = (np.arange(16, dtype=dtype) + offset).reshape(1, 16)
    b = np.ones((1, 16), dtype=dtype)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], datatype), grpcclient.InferInput("INPUT1", [1, 16], datatype)]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    return e.value.code(), e.value.details()


def stats(client, name: str):
    (s,) = client.get_inference_statistics(model_name=name, model_version="1").model_stats
    return s


# ---------------------------------------------------------------- Triton's examples

def test_tritons_grpc_examples_pass_unmodified(pool):
    failed = []
    for script, marker in SCRIPTS:
        p = run_example(script, pool["address"], pool["tmp"])
        if p.returncode != 0 or (marker and marker not in p.stdout):
            failed.append(f"{script}: exit {p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    assert not failed, "\n\n".join(failed)
    # the model control example left `simple` unloaded, with its config override dropped
    client = pool["client"]
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    assert client.is_model_ready("simple") and client.get_model_config("simple").config.max_batch_size == 8


# ---------------------------------------------------------------- ModelStatistics

def test_statistics_count_what_was_sent(pool):
    client = pool["client"]
    before = stats(client, "simple_int8")
    sent, bad = 5, 2
    for i in range(sent):
        inputs, a, b = simple_inputs(np.int8, "INT8", offset=i)
        np.testing.assert_array_equal(client.infer("simple_int8", inputs).as_numpy("OUTPUT0"), a + b)
    for _ in range(bad):
        wrong = [grpcclient.InferInput("INPUT0", [1, 16], "INT8")]
        wrong[0].set_data_from_numpy(np.zeros((1, 16), np.int8))
        with pytest.raises(InferenceServerException, match="missing input 'INPUT1'"):
            client.infer("simple_int8", wrong)
    after = stats(client, "simple_int8")
    assert after.name == "simple_int8" and after.version == "1"
    s0, s1 = before.inference_stats, after.inference_stats
    assert s1.success.count - s0.success.count == sent
    assert s1.fail.count - s0.fail.count == bad
    assert after.inference_count - before.inference_count == sent
    assert after.execution_count - before.execution_count == sent
    assert s1.compute_infer.count - s0.compute_infer.count == sent and s1.compute_infer.ns > s0.compute_infer.ns
    assert after.last_inference >= before.last_inference > 0
    # the stages of every successful request add up to its duration
    parts = s1.queue.ns + s1.compute_input.ns + s1.compute_infer.ns + s1.compute_output.ns
    assert parts == s1.success.ns
    # all models: one entry per offered model version
    every = client.get_inference_statistics().model_stats
    assert {(m.name, m.version) for m in every} >= {("simple", "1"), ("mlp", "1"), ("mlp", "2")}


# ---------------------------------------------------------------- ModelConfig

def test_model_config_is_generated_from_the_manifest(pool):
    ext = pool["client"].get_server_metadata().extensions
    assert {"statistics", "model_configuration", "model_repository"} <= set(ext)
    c = pool["client"].get_model_config("simple").config
    assert c.name == "simple" and c.platform == "hyperinfer-tvm" and c.backend == "tvm"
    assert c.max_batch_size == 8  # compiled with --max-batch 8, as Triton's `simple`
    assert [(t.name, mc_type(t.data_type), list(t.dims)) for t in c.input] == [
        ("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    assert [t.name for t in c.output] == ["OUTPUT0", "OUTPUT1"]
    assert [(g.name, g.count) for g in c.instance_group] == [("cpu-x86_64", 1)]
    assert c.parameters["hyperinfer.targets"].string_value == "cpu-x86_64"
    m = pool["client"].get_model_config("mlp", "2").config
    assert m.max_batch_size == 0 and [list(t.dims) for t in m.input] == [[1, 64]]  # batch dim kept
    assert m.version_policy.specific.versions == [2]


def mc_type(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


# ---------------------------------------------------------------- ModelStreamInfer

def test_stream_answers_each_request_in_order_with_receipts(pool):
    client = grpcclient.InferenceServerClient(pool["address"])
    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 4:
            done.set()

    client.start_stream(callback=callback)
    try:
        for i in range(3):
            inputs, _, _ = simple_inputs(offset=10 * i)
            client.async_stream_infer("simple", inputs, request_id=f"r{i}")
            if i == 1:  # a bad request in the middle: its own error, the stream goes on
                bad = [grpcclient.InferInput("INPUT0", [1, 8], "INT32"), simple_inputs()[0][1]]
                bad[0].set_data_from_numpy(np.zeros((1, 8), np.int32))
                client.async_stream_infer("simple", bad, request_id="bad")
        assert done.wait(60), results
    finally:
        client.stop_stream()
        client.close()
    assert [e is None for _, e in results] == [True, True, False, True]
    assert "inputs[0].shape: [1, 8]" in results[2][1].message()
    for i, (r, _) in zip([0, 1, None, 2], results):
        if i is None:
            continue
        resp = r.get_response()
        assert resp.id == f"r{i}"
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0")[0], np.arange(16) + 10 * i + 1)
        receipt = receipt_from_json(resp.parameters[RECEIPT_PARAMETER].string_param)
        assert receipt.model_name == "simple" and receipt.node_id and receipt.gateway_signature


# ---------------------------------------------------------------- repository control

def test_load_adds_a_package_sent_with_the_request(pool):
    client, repo = pool["client"], pool["repo"]
    src = pool["tmp"] / "upload"
    shutil.copytree(repo / "simple_int8" / "1", src / "3")
    d = json.loads((src / "3" / MANIFEST).read_text())
    d["version"] = 3
    (src / "3" / MANIFEST).write_text(json.dumps(d))
    files = {f"file:{p.relative_to(src).as_posix()}": p.read_bytes() for p in src.rglob("*") if p.is_file()}

    tampered = dict(files)
    tampered["file:3/artifacts/cpu-x86_64.so"] = b"not the artifact"
    with pytest.raises(InferenceServerException, match="does not match the manifest's sha256") as e:
        client.load_model("simple_int8", files=tampered)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert not (repo / "simple_int8" / "3").exists()

    client.load_model("simple_int8", files=files)
    assert Manifest.loads((repo / "simple_int8" / "3" / MANIFEST).read_bytes()).version == 3
    assert client.is_model_ready("simple_int8", "3")  # load answers once a node serves it
    inputs, a, b = simple_inputs(np.int8, "INT8")
    res = client.infer("simple_int8", inputs, model_version="3")
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("simple_int8", "3")] == "READY"

    with pytest.raises(InferenceServerException, match="version 3 is already in the repository") as e:
        client.load_model("simple_int8", files=files)
    assert e.value.status() == "StatusCode.ALREADY_EXISTS"


def test_unload_retires_and_load_offers_again(pool):
    client, repo = pool["client"], pool["repo"]
    client.unload_model("two-inputs")
    assert not client.is_model_ready("two-inputs")
    assert (repo / "two-inputs" / "UNLOADED").is_file()
    index = {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert index[("two-inputs", "2")] == ("UNAVAILABLE", "unloaded")
    ready = {(m.name, m.version) for m in pool["stub"].RepositoryIndex(tpb.RepositoryIndexRequest(ready=True)).models}
    assert ("two-inputs", "1") not in ready and ("simple", "1") in ready
    with pytest.raises(InferenceServerException, match="unknown model 'two-inputs'"):
        client.get_model_metadata("two-inputs")
    client.load_model("two-inputs")
    assert client.is_model_ready("two-inputs") and not (repo / "two-inputs" / "UNLOADED").exists()


# ---------------------------------------------------------------- bad input: precise status, never a traceback

def _load(name, **params):
    req = tpb.RepositoryModelLoadRequest(model_name=name)
    for k, v in params.items():
        req.parameters[k].CopyFrom(v)
    return req


BAD = [
    ("ModelStatistics", tpb.ModelStatisticsRequest(name="nope"), "NOT_FOUND", "unknown model 'nope'"),
    ("ModelStatistics", tpb.ModelStatisticsRequest(name="simple", version="x"), "INVALID_ARGUMENT",
     "failed to get model version from specified version string 'x'"),
    ("ModelStatistics", tpb.ModelStatisticsRequest(name="simple", version="9"), "NOT_FOUND", "no version 9"),
    ("ModelStatistics", tpb.ModelStatisticsRequest(version="1"), "INVALID_ARGUMENT", "without a model name"),
    ("ModelConfig", tpb.ModelConfigRequest(name=""), "INVALID_ARGUMENT", "name: empty model name"),
    ("ModelConfig", tpb.ModelConfigRequest(name="nope"), "NOT_FOUND", "unknown model 'nope'"),
    ("ModelConfig", tpb.ModelConfigRequest(name="simple", version="-1"), "INVALID_ARGUMENT", "version"),
    ("RepositoryIndex", tpb.RepositoryIndexRequest(repository_name="elsewhere"), "INVALID_ARGUMENT",
     "repository_name: 'elsewhere'"),
    ("RepositoryModelLoad", _load(""), "INVALID_ARGUMENT", "model_name: empty"),
    ("RepositoryModelLoad", _load("../etc"), "INVALID_ARGUMENT", "invalid model name '../etc'"),
    ("RepositoryModelLoad", _load("nope"), "NOT_FOUND", "failed to load 'nope'"),
    ("RepositoryModelLoad", _load("simple", config=tpb.ModelRepositoryParameter(string_param="{nope")),
     "INVALID_ARGUMENT", "parameters.config: failed to load 'simple': not valid JSON"),
    ("RepositoryModelLoad", _load("simple", config=tpb.ModelRepositoryParameter(string_param="[1]")),
     "INVALID_ARGUMENT", "must be a JSON object"),
    ("RepositoryModelLoad", _load("simple", config=tpb.ModelRepositoryParameter(string_param='{"bogus": 1}')),
     "INVALID_ARGUMENT", "not a Triton ModelConfig"),
    ("RepositoryModelLoad", _load("simple", config=tpb.ModelRepositoryParameter(string_param='{"input": []}')),
     "INVALID_ARGUMENT", "parameters.config.input"),
    ("RepositoryModelLoad", _load("simple", config=tpb.ModelRepositoryParameter(int64_param=3)),
     "INVALID_ARGUMENT", "parameters.config: must be a string_param"),
    ("RepositoryModelLoad", _load("simple", colour=tpb.ModelRepositoryParameter(bool_param=True)),
     "INVALID_ARGUMENT", "parameters['colour']: unknown parameter"),
    ("RepositoryModelLoad", _load("simple", **{"file:1/../../x": tpb.ModelRepositoryParameter(bytes_param=b"x")}),
     "INVALID_ARGUMENT", "not a relative path"),
    ("RepositoryModelLoad", _load("simple", **{"file:model.onnx": tpb.ModelRepositoryParameter(bytes_param=b"x")}),
     "INVALID_ARGUMENT", "file:<version>/<path>"),
    ("RepositoryModelLoad", _load("fresh", **{"file:1/model.onnx": tpb.ModelRepositoryParameter(bytes_param=b"x")}),
     "INVALID_ARGUMENT", "the files have no 1/manifest.json"),
    ("RepositoryModelUnload", tpb.RepositoryModelUnloadRequest(model_name="nope"), "NOT_FOUND",
     "failed to unload 'nope'"),
    ("SystemSharedMemoryRegister", tpb.SystemSharedMemoryRegisterRequest(name="r"), "UNIMPLEMENTED",
     "shared memory is not supported"),
    ("CudaSharedMemoryStatus", tpb.CudaSharedMemoryStatusRequest(), "UNIMPLEMENTED", "shared memory"),
    ("TraceSetting", tpb.TraceSettingRequest(), "UNIMPLEMENTED", "trace settings"),
    ("LogSettings", tpb.LogSettingsRequest(), "UNIMPLEMENTED", "log settings"),
]


def test_bad_input_gets_a_precise_status(pool):
    stub = pool["stub"]
    wrong = []
    for method, request, code, needle in BAD:
        got, details = code_of(getattr(stub, method), request, timeout=30)
        if got.name != code or needle not in details:
            wrong.append(f"{method}({str(request).strip()!r}): {got.name} {details!r}; want {code} {needle!r}")
    assert not wrong, "\n".join(wrong)
    assert not (pool["repo"] / "fresh").exists()  # a refused upload leaves nothing behind
    assert not list(pool["repo"].glob(".*upload*"))
    assert pool["client"].is_server_live() and pool["client"].is_model_ready("simple")
    assert "Traceback" not in (pool["tmp"] / "state" / "gateway.log").read_text(errors="replace")

"""Property-based fuzzing of a live gateway's Open Inference Protocol service (hypothesis).

A real gateway with two real nodes (tests/grpc/oip_harness.py, a child process)
gets malformed ModelInfer requests: wrong and absurd shapes ([0, 2^63-1], negative,
40 dimensions), unknown and mismatched datatypes, wrong byte counts, typed contents
in the wrong field, random raw bytes, random parameters, unknown models and
versions, and bytes that are not a protobuf message at all. Every request gets
a defined status (never INTERNAL/UNKNOWN, never a hang), and afterwards the
gateway is alive, still answers a good request correctly, and its memory has
not grown without bound.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from support import wait_for

sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import Harness, make_package  # noqa: E402

MODELS = {"mlp": {"x": (1, 64)}, "two-inputs": {"a": (2, 16), "b": (2, 16)}, "int-bool": {"scores": (4, 10)}}
OIP_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]
CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents"]
# statuses a malformed request may get; INTERNAL/UNKNOWN would mean the gateway broke
DEFINED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}
MAX_MESSAGE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    for name in MODELS:
        make_package(tmp / "repo", name)
    with Harness(tmp / "repo", tmp, max_message=MAX_MESSAGE, sample_rate=0.2) as h:
        ch = grpc.insecure_channel(h.address, options=[("grpc.max_send_message_length", 16 << 20)])
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        wait_for(lambda: all(stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=5).ready for m in MODELS),
                 60, "nodes to serve every model")
        yield {"stub": stub, "channel": ch, "proc": psutil.Process(h.proc.pid)}
        ch.close()


dims = st.one_of(st.integers(0, 4), st.integers(-3, -1), st.sampled_from([64, 16, 10, 2**31, 2**62, 2**63 - 1]))
shapes = st.one_of(st.lists(dims, max_size=4), st.just([0, 2**63 - 1]), st.lists(st.just(1), min_size=33, max_size=40),
                   st.sampled_from([list(s) for m in MODELS.values() for s in m.values()]))
texts = st.text(max_size=12)
param_values = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), texts,
                         st.sampled_from(["auto", "sync", "always", "AUTO", ""]))
params = st.dictionaries(st.one_of(st.sampled_from(["verify", "hyperinfer.verify", "binary_data_output", "priority",
                                                    "timeout", "sequence_id"]), texts), param_values, max_size=3)
tensor_params = st.dictionaries(st.sampled_from(["binary_data", "shared_memory_region", "classification", "x"]),
                                param_values, max_size=2)


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    model = draw(st.one_of(st.sampled_from(sorted(MODELS)), texts))
    req = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "1", "2", "0", "-1", "x"])),
                               id=draw(texts))
    names = list(MODELS.get(model, {"x": (1, 64)}))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        t = req.inputs.add(name=draw(st.one_of(st.sampled_from(names), texts)),
                           datatype=draw(st.one_of(st.sampled_from(OIP_TYPES), texts)), shape=draw(shapes))
        for k, v in draw(tensor_params).items():
            _set(t.parameters[k], v)
        if raw:
            count = min(math.prod(max(d, 0) for d in t.shape), 4096)
            size = draw(st.sampled_from([0, 1, 3, 4 * count, 4 * count + 1]))
            req.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        elif draw(st.booleans()):
            field = draw(st.sampled_from(CONTENT_FIELDS))
            n = draw(st.integers(0, 70))
            values = {"bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=4),
                      "fp32_contents": st.floats(width=32, allow_nan=True), "fp64_contents": st.floats(),
                      "int_contents": st.integers(-2**31, 2**31 - 1), "uint_contents": st.integers(0, 2**32 - 1),
                      "int64_contents": st.integers(-2**63, 2**63 - 1), "uint64_contents": st.integers(0, 2**64 - 1),
                      }[field]
            getattr(t.contents, field).extend(draw(st.lists(values, min_size=n, max_size=n)))
    if raw and draw(st.booleans()):
        req.raw_input_contents.append(draw(st.binary(max_size=8)))  # one entry too many
    for k, v in draw(params).items():
        _set(req.parameters[k], v)
    for _ in range(draw(st.integers(0, 2))):
        o = req.outputs.add(name=draw(st.one_of(st.sampled_from(["probs", "product", "label", "nope"]), texts)))
        for k, v in draw(tensor_params).items():
            _set(o.parameters[k], v)
    return req


def _set(p: pb.InferParameter, v) -> None:
    if isinstance(v, bool):
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    elif isinstance(v, float):
        p.double_param = v
    else:
        p.string_param = v


def call(gateway, req: pb.ModelInferRequest) -> grpc.StatusCode:
    try:
        gateway["stub"].ModelInfer(req, timeout=20)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        assert e.code() in DEFINED, (e.code(), e.details(), req)
        assert e.details() and "internal" not in e.details().lower(), e.details()
        return e.code()


@settings(max_examples=220, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
@given(req=infer_requests())
def test_malformed_infer_requests_get_defined_statuses(gateway, req):
    call(gateway, req)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(data=st.binary(max_size=200))
def test_bytes_that_are_not_a_request(gateway, data):
    """Raw bytes on the wire: INVALID_ARGUMENT when they do not parse (gRPC alone says INTERNAL)."""
    infer = gateway["channel"].unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        infer(data, timeout=20)
    except grpc.RpcError as e:
        assert e.code() in DEFINED, (e.code(), e.details(), data)


def test_gateway_alive_correct_and_bounded_after_fuzzing(gateway):
    """Runs after the fuzz tests (file order): still live, still right, memory bounded."""
    stub = gateway["stub"]
    rss_before = gateway["proc"].memory_info().rss
    for shape in ([0, 2**63 - 1], [2**62, 0], [1] * 40):  # the case and friends, many times
        for _ in range(20):
            req = pb.ModelInferRequest(model_name="mlp")
            req.inputs.add(name="x", datatype="FP32", shape=shape)
            req.raw_input_contents.append(b"")
            assert call(gateway, req) == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(x.tobytes())
    resp = stub.ModelInfer(req, timeout=20)
    probs = np.frombuffer(resp.raw_output_contents[0], np.float32)
    assert probs.shape == (10,) and np.isfinite(probs).all()
    assert gateway["proc"].memory_info().rss - rss_before < 64 << 20

"""Open Inference Protocol protobuf <-> numpy: every datatype both ways, every rejection names its field."""

from __future__ import annotations

import numpy as np
import pytest

from hyperinfer import dtypes
from hyperinfer.errors import InvalidArgument
from hyperinfer.gateway.converters import (
    array_to_typed_tensor,
    outputs_from_proto,
    parameters_to_dict,
    request_from_proto,
    response_to_proto,
)
from hyperinfer.gateway.dataplane import InferResponse, OutputTensor
from hyperinfer.proto.inference import grpc_service_pb2 as pb

ALL = [d.name for d in dtypes.BY_NAME.values()]
TYPED = [d.name for d in dtypes.BY_NAME.values() if d.oip_contents_field]


def sample(dtype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def raw_request(arrays: dict[str, np.ndarray], **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", **kw)
    for name, a in arrays.items():
        req.inputs.add(name=name, datatype=dtypes.from_name(a.dtype.name).oip, shape=a.shape)
        req.raw_input_contents.append(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return req


def typed_request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    for name, a in arrays.items():
        req.inputs.append(array_to_typed_tensor(name, a))
    return req


def reject(req, *fragments):
    with pytest.raises(InvalidArgument) as ei:
        request_from_proto(req)
    for f in fragments:
        assert f in str(ei.value), str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("dtype", ALL)
def test_raw_round_trip(dtype):
    a = sample(dtype)
    dec = request_from_proto(raw_request({"x": a}))
    (inp,) = dec.inputs
    assert inp.name == "x" and inp.datatype == dtypes.from_name(dtype).oip and inp.shape == (2, 3)
    assert inp.array.dtype == a.dtype and np.array_equal(inp.array, a)
    resp = response_to_proto(InferResponse("m", "1", "id", [OutputTensor("y", inp.datatype, inp.array)], {}))
    assert len(resp.raw_output_contents) == 1 and not resp.outputs[0].HasField("contents")
    back = outputs_from_proto(resp)["y"]
    assert back.dtype == a.dtype and np.array_equal(back, a)


@pytest.mark.parametrize("dtype", TYPED)
def test_typed_round_trip(dtype):
    a = sample(dtype)
    dec = request_from_proto(typed_request({"x": a}))
    arr = dec.inputs[0].array
    assert arr.dtype == a.dtype and arr.shape == a.shape and np.array_equal(arr, a)
    resp = response_to_proto(InferResponse("m", "1", "", [OutputTensor("y", dtypes.from_name(dtype).oip, arr)], {},
                                           typed=True))
    assert not resp.raw_output_contents
    field = dtypes.from_name(dtype).oip_contents_field
    assert len(getattr(resp.outputs[0].contents, field)) == a.size
    back = outputs_from_proto(resp)["y"]
    assert back.dtype == a.dtype and np.array_equal(back, a)


def test_typed_response_falls_back_to_raw_for_fp16():
    outs = [OutputTensor("h", "FP16", np.ones(3, np.float16)), OutputTensor("f", "FP32", np.ones(3, np.float32))]
    resp = response_to_proto(InferResponse("m", "1", "", outs, {}, typed=True))
    assert len(resp.raw_output_contents) == 2  # all-or-nothing: raw entries are indexed like outputs
    assert outputs_from_proto(resp)["h"].dtype == np.float16


def test_scalar_and_empty_tensors():
    dec = request_from_proto(raw_request({"s": np.array(3.5, np.float32), "e": np.zeros((0, 4), np.int64)}))
    assert dec.inputs[0].array.shape == () and dec.inputs[0].array == 3.5
    assert dec.inputs[1].array.shape == (0, 4)


def test_parameters_and_requested_outputs():
    req = raw_request({"x": sample("float32")})
    req.parameters["verify"].string_param = "sync"
    req.parameters["n"].int64_param = 3
    req.parameters["binary_data_output"].bool_param = False
    o = req.outputs.add(name="y")
    o.parameters["binary_data"].bool_param = False
    req.outputs.add(name="z")
    dec = request_from_proto(req)
    assert dec.parameters == {"verify": "sync", "n": 3, "binary_data_output": False}
    assert dec.binary_output is False
    assert [(o.name, o.binary) for o in dec.outputs] == [("y", False), ("z", None)]


def test_response_parameters():
    resp = response_to_proto(InferResponse("m", "1", "abc", [], {"s": "x", "b": True, "i": 2, "f": 0.5}))
    assert parameters_to_dict(resp.parameters) == {"s": "x", "b": True, "i": 2, "f": 0.5}
    assert resp.id == "abc" and resp.model_version == "1"


def test_raw_is_little_endian_row_major():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="INT32", shape=[2, 3])
    req.raw_input_contents.append(a.astype(">i4").tobytes())  # big-endian bytes decode differently
    assert not np.array_equal(request_from_proto(req).inputs[0].array, a)
    req.raw_input_contents[0] = a.astype("<i4").tobytes()
    np.testing.assert_array_equal(request_from_proto(req).inputs[0].array, a)


# ------------------------------------------------------------------ rejections

def test_both_typed_and_raw():
    req = typed_request({"x": sample("float32")})
    req.raw_input_contents.append(sample("float32").tobytes())
    reject(req, "inputs[0].contents", "raw_input_contents")


def test_raw_count_mismatch():
    req = raw_request({"a": sample("float32"), "b": sample("float32")})
    del req.raw_input_contents[1]
    reject(req, "raw_input_contents", "1 entries", "2 inputs")


@pytest.mark.parametrize("dtype", ALL)
def test_raw_size_mismatch(dtype):
    req = raw_request({"x": sample(dtype)})
    req.raw_input_contents[0] = req.raw_input_contents[0] + b"\0" * np.dtype(dtype).itemsize
    reject(req, "raw_input_contents[0]", "'x'", f"needs {6 * np.dtype(dtype).itemsize}")


@pytest.mark.parametrize("dtype", TYPED)
def test_typed_count_mismatch(dtype):
    req = typed_request({"x": sample(dtype)})
    req.inputs[0].shape[1] = 4
    reject(req, f"inputs[0].contents.{dtypes.from_name(dtype).oip_contents_field}", "6 values", "needs 8")


def test_typed_wrong_field():
    req = pb.ModelInferRequest()
    t = req.inputs.add(name="x", datatype="FP32", shape=[2])
    t.contents.int_contents.extend([1, 2])
    reject(req, "inputs[0].contents.int_contents", "fp32_contents")


def test_typed_fp16_has_no_field():
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP16", shape=[2])
    reject(req, "inputs[0].contents", "raw_input_contents")


@pytest.mark.parametrize("datatype,value", [("INT8", 128), ("INT16", -40000), ("UINT8", 256), ("UINT16", 70000)])
def test_typed_out_of_range(datatype, value):
    req = pb.ModelInferRequest()
    t = req.inputs.add(name="x", datatype=datatype, shape=[1])
    getattr(t.contents, dtypes.from_oip(datatype).oip_contents_field).append(value)
    reject(req, "inputs[0].contents", "range")


def test_raw_bool_bytes_must_be_0_or_1():
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="BOOL", shape=[2])
    req.raw_input_contents.append(b"\x01\x02")
    reject(req, "raw_input_contents[0]", "BOOL")


@pytest.mark.parametrize("datatype", ["FP8", "BYTES", "fp32", ""])
def test_unknown_datatype(datatype):
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype=datatype, shape=[1])
    reject(req, "inputs[0].datatype", "unsupported datatype")


def test_negative_dims():
    req = raw_request({"x": sample("float32")})
    req.inputs[0].shape[0] = -1
    reject(req, "inputs[0].shape", "negative")


def test_duplicate_input_names():
    req = raw_request({"x": sample("float32")})
    req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    req.raw_input_contents.append(sample("float32").tobytes())
    reject(req, "inputs[1].name", "'x'", "more than once")


def test_empty_input_name():
    req = raw_request({"": sample("float32")})
    reject(req, "inputs[0].name", "empty")


def test_duplicate_and_empty_output_names():
    req = raw_request({"x": sample("float32")})
    req.outputs.add(name="y")
    req.outputs.add(name="y")
    reject(req, "outputs[1].name", "more than once")
    req = raw_request({"x": sample("float32")})
    req.outputs.add(name="")
    reject(req, "outputs[0].name", "empty")


def test_shared_memory_and_classification_refused():
    req = raw_request({"x": sample("float32")})
    req.inputs[0].parameters["shared_memory_region"].string_param = "r"
    reject(req, "inputs[0].parameters.shared_memory_region")
    req = raw_request({"x": sample("float32")})
    req.outputs.add(name="y").parameters["classification"].int64_param = 3
    reject(req, "outputs[0].parameters.classification")


def test_binary_flags_must_be_bool():
    req = raw_request({"x": sample("float32")})
    req.parameters["binary_data_output"].string_param = "no"
    reject(req, "parameters.binary_data_output")
    req = raw_request({"x": sample("float32")})
    req.outputs.add(name="y").parameters["binary_data"].int64_param = 0
    reject(req, "outputs[0].parameters.binary_data")


def test_huge_shape_is_rejected_not_allocated():
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP32", shape=[2**40, 2**40])
    req.raw_input_contents.append(b"\0" * 4)
    reject(req, "inputs[0].shape", "too large")


@pytest.mark.parametrize("shape", [[0, 2**63 - 1], [2**62, 0, 4], [0, 2**40, 2**40], [1] * 40])
def test_shape_no_array_can_have_is_invalid_argument(shape):
    """[0, 2^63-1] has zero elements, so the byte count matches, but numpy cannot shape an array
    like it: once an INTERNAL error with a traceback, now INVALID_ARGUMENT naming the field."""
    for raw in (True, False):
        req = pb.ModelInferRequest(model_name="m")
        req.inputs.add(name="x", datatype="FP32", shape=shape)
        if raw:
            req.raw_input_contents.append(b"")
        reject(req, "inputs[0].shape")


def test_pool_tensor_shape_checked_too():
    from hyperinfer.proto.v1 import pool_pb2
    from hyperinfer.transport import tensors

    with pytest.raises(InvalidArgument, match="shape"):
        tensors.from_proto(pool_pb2.Tensor(name="x", dtype="float32", shape=[0, 2**63 - 1], data=b""))

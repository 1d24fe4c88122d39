"""transport/wire.py: Worker requests serialized by hand parse to exactly the message protobuf
builds, for every dtype, shape and layout a gateway forwards."""

from __future__ import annotations

import numpy as np
import pytest

from hyperinfer.proto.v1 import pool_pb2
from hyperinfer.transport import tensors, wire


def reference(request_id, model_name, version, inputs) -> pool_pb2.InferRequest:
    return pool_pb2.InferRequest(request_id=request_id, model_name=model_name, model_version=version,
                                 inputs=tensors.many_to_proto(inputs))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**32 + 5, 2**63 - 1])
def test_varint_matches_protobuf(n):
    # a uint64 field's encoding after its one-byte key is the varint of its value
    encoded = pool_pb2.Tensor(shape=[n]).SerializeToString()  # packed: key, length, varint
    assert encoded[2:] == wire.varint(n)


def test_request_parses_to_the_protobuf_message():
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.random((1, 3, 64, 80), dtype=np.float32),
        "ids": np.arange(7, dtype=np.int64).reshape(1, 7),
        "half": rng.random((2, 3)).astype(np.float16),
        "mask": np.array([[True, False, True]]),
        "u8": np.arange(300, dtype=np.uint8)[:256].reshape(16, 16),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }
    data = wire.infer_request_bytes("req-1", "model", 3, inputs)
    assert pool_pb2.InferRequest.FromString(data) == reference("req-1", "model", 3, inputs)


def test_non_contiguous_and_big_endian_arrays_go_as_canonical_bytes():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    inputs = {"t": base.T, "strided": base[:, ::2], "be": np.arange(5, dtype=">i4")}
    msg = pool_pb2.InferRequest.FromString(wire.infer_request_bytes("r", "m", 1, inputs))
    assert msg == reference("r", "m", 1, inputs)
    got = tensors.many_from_proto(msg.inputs)
    for name, arr in inputs.items():
        np.testing.assert_array_equal(got[name], arr)
        assert got[name].dtype.byteorder in ("=", "<", "|")


def test_order_and_large_tensor():
    x = np.random.default_rng(1).random((1, 3, 640, 640), dtype=np.float32)  # PP-OCR det's input
    inputs = {"b": np.ones((2,), np.int32), "x": x}
    msg = pool_pb2.InferRequest.FromString(wire.infer_request_bytes("r", "m", 1, inputs, order=["x", "b"]))
    assert [t.name for t in msg.inputs] == ["x", "b"]
    assert msg.inputs[0].data == x.tobytes() and list(msg.inputs[0].shape) == [1, 3, 640, 640]


def test_response_parses_to_the_protobuf_message():
    rng = np.random.default_rng(2)
    outputs = {"probs": rng.random((1, 1, 64, 64), dtype=np.float32), "ids": np.arange(6, dtype=np.int64)[::2],
               "none": np.zeros((0,), np.float32)}
    data = wire.infer_response_bytes(outputs, b"attestation-json", b"s" * 64)
    ref = pool_pb2.InferResponse(outputs=tensors.many_to_proto(outputs), attestation=b"attestation-json",
                                 signature=b"s" * 64)
    assert pool_pb2.InferResponse.FromString(data) == ref


def test_oip_response_with_raw_outputs_appended_parses_to_the_protobuf_message():
    """The gateway's ModelInferResponse with its raw_output_contents appended by hand is the
    message response_to_proto builds, for every dtype and odd shape; typed responses still go
    through protobuf."""
    from hyperinfer.gateway import converters
    from hyperinfer.gateway.dataplane import InferResponse, OutputTensor
    from hyperinfer.proto.inference import grpc_service_pb2 as pb

    rng = np.random.default_rng(1)
    outputs = [OutputTensor("maps", "FP32", rng.random((1, 1, 64, 80), dtype=np.float32)),
               OutputTensor("ids", "INT64", np.arange(7, dtype=np.int64).reshape(1, 7)),
               OutputTensor("half", "FP16", rng.random((2, 3)).astype(np.float16)),
               OutputTensor("mask", "BOOL", np.array([[True, False, True]])),
               OutputTensor("scalar", "FP64", np.array(3.5)),
               OutputTensor("empty", "FP32", np.zeros((0, 4), np.float32)),
               OutputTensor("strided", "FP32", rng.random((6, 8), dtype=np.float32)[::2, ::3])]
    resp = InferResponse("m", "2", "req-9", outputs, {"receipt": "{\"a\": 1}", "verify": "auto"})
    data = converters.response_bytes(resp)
    assert pb.ModelInferResponse.FromString(data) == converters.response_to_proto(resp)
    got = converters.outputs_from_proto(pb.ModelInferResponse.FromString(data))
    for o in outputs:
        np.testing.assert_array_equal(got[o.name], o.array)
    typed = InferResponse("m", "2", "t", outputs[:2], typed=True)
    assert converters.response_bytes(typed) == converters.response_to_proto(typed).SerializeToString()

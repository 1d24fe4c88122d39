"""Worker requests and responses serialized with their tensor bytes copied once.

protobuf's serializer copies a large bytes field several times: building a
``hyperinfer.v1.InferRequest`` for PP-OCR det's 4.9 MB input and serializing it
took 16 ms here, 40 times one memcpy of the input. That is the gateway's
largest cost on big inputs (a zero-logic proxy forwards the same bytes in a few
ms). The protobuf wire format allows this instead: a message is the
concatenation of its fields, in any order, so the small fields are serialized
by protobuf and each tensor's ``data`` is appended as a length-delimited field
(key, length, bytes), all joined into the final bytes in one copy. The result
parses to the same message (tests/unit/test_wire.py). The node answers with
:func:`infer_response_bytes` the same way (PP-OCR det's 1.6 MB output: 4.9 ms
through protobuf); servers send bytes a servicer returns as they are
(``transport.errors.ErrorInterceptor``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from hyperinfer import dtypes
from hyperinfer.proto.v1 import pool_pb2
from hyperinfer.verify.digest import canonical_array

_LENGTH_DELIMITED = 2
_INPUTS = pool_pb2.InferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_OUTPUTS = pool_pb2.InferResponse.DESCRIPTOR.fields_by_name["outputs"].number
_DATA = pool_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (protobuf's encoding of lengths and keys)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(number: int) -> bytes:
    return varint(number << 3 | _LENGTH_DELIMITED)


def _tensor_parts(name: str, arr: np.ndarray, number: int = _INPUTS) -> list:
    """One ``Tensor`` field (number ``number`` of the enclosing message): its key, its length, its
    small fields, its data."""
    a = canonical_array(arr)
    head = pool_pb2.Tensor(name=name, dtype=dtypes.name_of(a.dtype), shape=a.shape).SerializeToString()
    data_head = _key(_DATA) + varint(a.nbytes)
    size = len(head) + len(data_head) + a.nbytes
    # a 0-d or empty array still exports a (flat, C-contiguous) buffer; reshape(-1) is a view
    return [_key(number), varint(size), head, data_head, memoryview(a.reshape(-1)).cast("B")]


def infer_request_bytes(request_id: str, model_name: str, model_version: int,
                        inputs: Mapping[str, np.ndarray], order: Iterable[str] | None = None) -> bytes:
    """The serialized ``hyperinfer.v1.InferRequest`` (what ``tensors.many_to_proto`` and
    ``SerializeToString`` give), with each tensor's bytes copied once."""
    parts = [pool_pb2.InferRequest(request_id=request_id, model_name=model_name,
                                   model_version=int(model_version)).SerializeToString()]
    for name in (list(order) if order is not None else list(inputs)):
        parts += _tensor_parts(name, inputs[name])
    return b"".join(parts)


def infer_response_bytes(outputs: Mapping[str, np.ndarray], attestation: bytes, signature: bytes) -> bytes:
    """The serialized ``hyperinfer.v1.InferResponse``, each output's bytes copied once."""
    parts = [pool_pb2.InferResponse(attestation=attestation, signature=signature).SerializeToString()]
    for name, arr in outputs.items():
        parts += _tensor_parts(name, arr, _OUTPUTS)
    return b"".join(parts)


def with_bytes_fields(message: bytes, number: int, arrays: Iterable[np.ndarray]) -> bytes:
    """``message`` (serialized) with one length-delimited field ``number`` appended per array,
    its canonical bytes copied once: a repeated bytes field such as OIP's
    ``raw_output_contents`` without protobuf's copies (the parsed message has the fields in
    this order after the ones ``message`` holds)."""
    parts = [message]
    for arr in arrays:
        a = canonical_array(arr)
        parts += [_key(number), varint(a.nbytes), memoryview(a.reshape(-1)).cast("B")]
    return b"".join(parts)

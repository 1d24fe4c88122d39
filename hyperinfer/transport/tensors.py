"""numpy <-> hyperinfer.v1.Tensor (C-contiguous little-endian bytes)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from hyperinfer import dtypes
from hyperinfer.errors import InvalidArgument
from hyperinfer.proto.v1 import pool_pb2
from hyperinfer.verify.digest import canonical_array


def to_proto(name: str, arr: np.ndarray) -> pool_pb2.Tensor:
    a = canonical_array(arr)
    return pool_pb2.Tensor(name=name, dtype=dtypes.name_of(a.dtype), shape=a.shape, data=a.tobytes())


def from_proto(t: pool_pb2.Tensor) -> np.ndarray:
    native = dtypes.numpy_dtype(t.dtype)
    wire = native if np.little_endian else native.newbyteorder("<")  # the wire is little-endian
    shape = tuple(t.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"tensor {t.name!r}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if len(t.data) != count * wire.itemsize:
        raise InvalidArgument(
            f"tensor {t.name!r}: {len(t.data)} bytes of data, shape {list(shape)} of {t.dtype} needs "
            f"{count * wire.itemsize}"
        )
    arr = np.frombuffer(t.data, dtype=wire).reshape(shape)
    return arr if wire is native else arr.astype(native)


def many_to_proto(tensors: Mapping[str, np.ndarray], order: Iterable[str] | None = None) -> list[pool_pb2.Tensor]:
    names = list(order) if order is not None else list(tensors)
    return [to_proto(n, tensors[n]) for n in names]


def many_from_proto(items: Iterable[pool_pb2.Tensor]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in items:
        if t.name in out:
            raise InvalidArgument(f"tensor {t.name!r} given twice")
        out[t.name] = from_proto(t)
    return out

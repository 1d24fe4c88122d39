"""numpy <-> hyperinfer.v1.Tensor (C-contiguous little-endian bytes)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from hyperinfer import dtypes
from hyperinfer.errors import InvalidArgument
from hyperinfer.proto.v1 import pool_pb2
from hyperinfer.verify.digest import canonical_array


# numpy arrays have at most 64 dimensions (32 before numpy 2); no model needs more than a handful
MAX_DIMS = 32
# the product of a shape's non-zero dimensions: a bound far above anything a message can carry,
# and far below where numpy's index arithmetic overflows ([0, 2**63-1] has 0 elements but no
# numpy array can have that shape)
MAX_ELEMENTS = 2**48


def check_shape(shape, where: str) -> tuple[int, ...]:
    """A tensor shape as ints; InvalidArgument (naming ``where``) for negative dimensions, too many
    dimensions, or dimensions no array can have, even with zero elements."""
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(f"{where}: {len(dims)} dimensions, at most {MAX_DIMS}")
    for d in dims:
        if d < 0:
            raise InvalidArgument(f"{where}: negative dimension in {list(dims)}")
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidArgument(f"{where}: {list(dims)} is too large (more than 2^48 elements, "
                              "not counting zero dimensions)")
    return dims


def to_proto(name: str, arr: np.ndarray) -> pool_pb2.Tensor:
    a = canonical_array(arr)
    return pool_pb2.Tensor(name=name, dtype=dtypes.name_of(a.dtype), shape=a.shape, data=a.tobytes())


def from_proto(t: pool_pb2.Tensor) -> np.ndarray:
    native = dtypes.numpy_dtype(t.dtype)
    wire = native if np.little_endian else native.newbyteorder("<")  # the wire is little-endian
    shape = check_shape(t.shape, f"tensor {t.name!r}: shape")
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

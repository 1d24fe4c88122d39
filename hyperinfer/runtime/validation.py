"""Check request tensors against a manifest: names, dtypes, shapes, finiteness of sizes."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from hyperinfer.errors import InvalidArgument
from hyperinfer.package import TensorSpec


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the inputs in manifest order as C-contiguous arrays, or raise InvalidArgument
    naming the offending input."""
    expected = [s.name for s in specs]
    unknown = [n for n in inputs if n not in expected]
    if unknown:
        raise InvalidArgument(
            f"unknown input {unknown[0]!r}; the model's inputs are: {', '.join(expected)}"
        )
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise InvalidArgument(f"missing input {missing[0]!r}; the model's inputs are: {', '.join(expected)}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = inputs[spec.name]
        if not isinstance(arr, np.ndarray):
            raise InvalidArgument(f"input {spec.name!r}: expected a numpy array, got {type(arr).__name__}")
        if arr.dtype.name != spec.dtype:
            raise InvalidArgument(f"input {spec.name!r}: dtype {arr.dtype.name}, expected {spec.dtype}")
        if tuple(arr.shape) != tuple(spec.shape):
            raise InvalidArgument(
                f"input {spec.name!r}: shape {list(arr.shape)}, expected {list(spec.shape)}"
            )
        out[spec.name] = np.ascontiguousarray(arr)
    return out

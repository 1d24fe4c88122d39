"""One table for tensor element types across ONNX, numpy and the Open Inference Protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperinfer.errors import InvalidArgument


@dataclass(frozen=True)
class DType:
    name: str  # numpy name, used in manifests and on the pool wire
    oip: str  # Open Inference Protocol datatype
    onnx: int  # onnx.TensorProto enum value
    oip_contents_field: str  # InferTensorContents field for typed contents


# onnx.TensorProto values are stable; hard-coded so this module does not import onnx.
_TABLE = [
    DType("bool", "BOOL", 9, "bool_contents"),
    DType("uint8", "UINT8", 2, "uint_contents"),
    DType("uint16", "UINT16", 4, "uint_contents"),
    DType("uint32", "UINT32", 12, "uint_contents"),
    DType("uint64", "UINT64", 13, "uint64_contents"),
    DType("int8", "INT8", 3, "int_contents"),
    DType("int16", "INT16", 5, "int_contents"),
    DType("int32", "INT32", 6, "int_contents"),
    DType("int64", "INT64", 7, "int64_contents"),
    DType("float16", "FP16", 10, ""),  # no typed contents field in the protocol: raw only
    DType("float32", "FP32", 1, "fp32_contents"),
    DType("float64", "FP64", 11, "fp64_contents"),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_OIP = {d.oip: d for d in _TABLE}
BY_ONNX = {d.onnx: d for d in _TABLE}


def from_name(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"unsupported dtype {name!r}; supported: {', '.join(BY_NAME)}") from None


def from_oip(datatype: str) -> DType:
    try:
        return BY_OIP[datatype]
    except KeyError:
        raise InvalidArgument(
            f"unsupported datatype {datatype!r}; supported: {', '.join(BY_OIP)}"
        ) from None


def from_onnx(elem_type: int) -> DType:
    try:
        return BY_ONNX[elem_type]
    except KeyError:
        raise InvalidArgument(f"unsupported ONNX element type {elem_type}") from None


_NUMPY_BY_NAME: dict[str, np.dtype] = {}
_NAME_BY_NUMPY: dict[np.dtype, str] = {}


def numpy_dtype(name: str) -> np.dtype:
    dt = _NUMPY_BY_NAME.get(name)
    if dt is None:
        dt = _NUMPY_BY_NAME[name] = np.dtype(from_name(name).name)
    return dt


def name_of(dtype: np.dtype) -> str:
    """``dtype.name``, cached: numpy computes that property anew on each access (~2-10 us),
    and the request path reads it for every tensor several times."""
    name = _NAME_BY_NUMPY.get(dtype)
    if name is None:
        name = _NAME_BY_NUMPY[dtype] = dtype.name
    return name


def is_exact(name: str) -> bool:
    """Integer and bool outputs must agree exactly; floats within tolerance."""
    return not np.issubdtype(numpy_dtype(name), np.floating)

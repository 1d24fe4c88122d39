"""A named pass/fail line, the unit of every offline audit (receipts, evidence)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from hyperinfer import dtypes
from hyperinfer.errors import InvalidArgument
from hyperinfer.verify.digest import canonical_array


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def all_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidArgument(f"{field}: not valid base64") from None
    # canonical only: otherwise unused padding bits let two strings carry the same bytes
    if b64(data) != value:
        raise InvalidArgument(f"{field}: not canonical base64")
    return data


def unhex(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise InvalidArgument(f"{field}: not valid hex") from None
    if data.hex() != value:
        raise InvalidArgument(f"{field}: not lowercase hex")
    return data


def tensors_to_json(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Lossless JSON form: dtype, shape and the canonical little-endian bytes in base64."""
    out = {}
    for name, arr in tensors.items():
        a = canonical_array(arr)
        out[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "data": b64(a.tobytes())}
    return out


def tensors_from_json(d: Any, field: str) -> dict[str, np.ndarray]:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{field}: expected an object of tensors")
    out = {}
    for name, t in d.items():
        try:
            dt = np.dtype(dtypes.from_name(t["dtype"]).name).newbyteorder("<")
            shape = tuple(int(x) for x in t["shape"])
            data = unb64(t["data"], f"{field}.{name}.data")
            out[name] = np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"{field}.{name}: malformed tensor ({type(e).__name__}: {e})") from None
    return out

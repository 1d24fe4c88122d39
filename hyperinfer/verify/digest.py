"""Canonical tensor digests (design §4).

sha256 over, in the manifest's order, each tensor's name, dtype, shape and
C-contiguous little-endian bytes, each field length-prefixed so that no two
different tensor lists encode to the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Mapping, Sequence

import numpy as np

from hyperinfer.dtypes import name_of

_PREFIX = b"hyperinfer-tensors-v1\0"


def canonical_array(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian copy (or view) of ``arr``."""
    a = np.asarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np_little_endian()):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def np_little_endian() -> bool:
    return np.little_endian


def _field(h, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def tensors_digest(names: Sequence[str], tensors: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 of the tensors named in ``names`` (the manifest order)."""
    h = hashlib.sha256(_PREFIX)
    h.update(struct.pack("<Q", len(names)))
    for name in names:
        a = canonical_array(tensors[name])
        _field(h, name.encode())
        _field(h, name_of(a.dtype).encode())
        h.update(struct.pack("<Q", a.ndim))
        for d in a.shape:
            h.update(struct.pack("<Q", d))
        _field(h, a.tobytes())
    return h.hexdigest()

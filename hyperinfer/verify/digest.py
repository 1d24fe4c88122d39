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


_Q = struct.Struct("<Q")


def tensors_digest(names: Sequence[str], tensors: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 of the tensors named in ``names`` (the manifest order)."""
    # computed on every request by the gateway (inputs, outputs) and the node: the header
    # fields of each tensor go to sha256 in one update, its data without a copy
    h = hashlib.sha256()
    head = [_PREFIX, _Q.pack(len(names))]
    for name in names:
        a = canonical_array(tensors[name])
        n, t = name.encode(), name_of(a.dtype).encode()
        head += (_Q.pack(len(n)), n, _Q.pack(len(t)), t, struct.pack(f"<{a.ndim + 1}Q", a.ndim, *a.shape),
                 _Q.pack(a.nbytes))
        h.update(b"".join(head))
        head = []
        h.update(a)  # C-contiguous: its buffer, no copy
    if head:
        h.update(b"".join(head))
    return h.hexdigest()

"""Keep large freed buffers in the process instead of returning them to the kernel.

Every request through a gateway or node allocates and frees a few buffers the size of
its tensors (the received message, the parsed field, the request for the node, gRPC's
slices). glibc serves blocks over its mmap threshold with a fresh mmap and gives them
back with munmap, and trims freed heap tops over its trim threshold, so each request
pays page faults on every megabyte again: on PP-OCR det (4.9 MB in) that was ~8 ms of a
gateway's 31 ms of CPU per request here. With both thresholds raised (glibc's
largest mmap threshold, 32 MiB) the same blocks are reused; a process keeps at most
:data:`TRIM_THRESHOLD` bytes of freed memory at its heap top.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h

_done: bool | None = None


def keep_freed_buffers() -> bool:
    """Set glibc's thresholds once per process; False where the C library is not glibc
    (nothing changes there)."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others: no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done

"""transport/allocator.py: servers raise glibc's mmap/trim thresholds where glibc is the C library."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_thresholds_once_per_process():
    # in a fresh process: mallopt is process-wide, this test must not change the test runner's
    code = ("from hyperinfer.transport.allocator import keep_freed_buffers as k\n"
            "from hyperinfer.transport.server import make_server\n"
            "make_server()\n"  # every server calls it
            "import hyperinfer.transport.allocator as a\n"
            "print(a._done, k(), k())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]

"""A cross-vendor pool: one node on a TVM CPU artifact, one on the vulkan artifact (WGSL run by
wgpu-native; lavapipe here), verify=always. Every request is checked on the other vendor's
artifact, all agree within the calibrated tolerance, and no honest node is at fault.

Runs scripts/check_honest_pool.py (real gateway and node processes on 127.0.0.1, tritonclient);
scripts/check_vulkan_pool.sh is the long PP-OCR run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_honest_pool.py"
REQUESTS = 40


def test_cpu_and_vulkan_nodes_agree_on_every_check(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from hyperinfer.node.devices import detect
    from hyperinfer.runtime import webgpu

    if not webgpu.adapters():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: no WebGPU adapter: {webgpu.why_not()}")
        pytest.skip(webgpu.why_not())
    cpu = "cpu-x86_64-avx2" if "cpu-x86_64-avx2" in detect("cpu").targets else "cpu-x86_64"
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "cnn", "--requests", str(REQUESTS),
                          "--targets", f"{cpu},vulkan", "--work", str(tmp_path), "--timeout", "300"],
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    m = re.search(r"checked (\d+), agreed (\d+), across artifacts (\d+), nodes at fault (\d+): OK", out)
    assert m, out[-4000:]
    assert tuple(map(int, m.groups())) == (REQUESTS, REQUESTS, REQUESTS, 0), out[-4000:]
    # both directions happened: CPU answers checked on vulkan and vulkan answers checked on the CPU
    assert re.search(rf"{cpu} -> vulkan: \d+", out) and re.search(rf"vulkan -> {cpu}: \d+", out), out[-4000:]
    # the two artifacts' floats really differ (so the agreement is the tolerance's doing, not identity)
    diff = re.search(r"max \|difference\| ([0-9.e+-]+)", out)
    assert diff and float(diff.group(1)) > 0, out[-4000:]
    stakes = re.findall(r"faults (\d+), stake ([0-9.]+), slashed ([0-9.]+)", out)
    assert len(stakes) == 2 and all(f == "0" and float(s) == 0 for f, _, s in stakes), out[-4000:]

"""Two honest nodes on different artifacts (cpu-x86_64 and cpu-x86_64-avx2, whose floats
differ) are never found at fault: every one of 300 requests is checked across the two
artifacts and agrees within the calibrated tolerance, and neither node has a fault.

Runs scripts/check_honest_pool.py (real gateway and node processes on 127.0.0.1),
the same script that checks a PP-OCR model for the README.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_honest_pool.py"


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_honest_nodes_on_different_artifacts_are_never_at_fault(model, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from hyperinfer.node.devices import detect

    if "cpu-x86_64-avx2" not in detect("cpu").targets:
        pytest.skip("this CPU cannot run the cpu-x86_64-avx2 artifact")
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", model, "--requests", "300",
                          "--work", str(tmp_path), "--timeout", "180"],
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    m = re.search(r"checked (\d+), agreed (\d+), across artifacts (\d+), nodes at fault (\d+): OK", out)
    assert m, out[-4000:]
    checked, agreed, across, faults = map(int, m.groups())
    assert (checked, agreed, across, faults) == (300, 300, 300, 0), out[-4000:]
    # both nodes did the work, as primary and as validator
    jobs = [int(j) for j in re.findall(r"node \w+ operator-\d: jobs (\d+)", out)]
    assert len(jobs) == 2 and all(j >= 100 for j in jobs) and sum(jobs) == 600, out[-4000:]

"""scripts/reliability_report.py on a tiny run: real gateway and node processes, honest and cheating,
a few seconds of load; the table is printed and the verdict holds (nothing lost, no honest fault,
wrong answers within the bound)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "reliability_report.py"


def test_tiny_reliability_run(compiled_small, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(compiled_small("mlp").path, repo / "mlp" / "1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--duration", "4", "--clients", "2", "--honest", "2",
         "--cheaters", "zeros,stall", "--runner", "ort", "--verify", "sync", "--probation-jobs", "3",
         "--repository", str(repo), "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for row in ("| requests sent |", "| answered |", "| wrong answers served (vs ONNX Runtime) |",
                "| latency p50 / p99 |", "| honest faults | 0 |", "| lost | 0 |", "| node2 | lazy | zeros |"):
        assert row in proc.stdout, proc.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["sent"] == r["answered"] + sum(r["errored"].values()) > 0
    assert r["lost"] == 0 and r["honest_faults"] == 0 and r["ok"]
    lazy = next(n for n in r["nodes"] if n["behaviour"] == "zeros")
    assert lazy["faults"] >= 1 and lazy["wrong_served"] == 0  # sync: caught before it was returned

"""scripts/bench_pool.py --quick end to end: a real gateway and node processes on 127.0.0.1,
the MLP compiled into a temporary work dir; the script must exit 0 and print its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pool_quick(tmp_path):
    md = tmp_path / "bench.md"
    # on timeout subprocess.run SIGKILLs the script; its children die with it (PR_SET_PDEATHSIG)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_pool.py"), "--quick",
         "--work", str(tmp_path / "work"), "--markdown", str(md)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    try:
        check_output(proc.stdout, md.read_text())
    except (AssertionError, StopIteration, ValueError, IndexError) as e:
        raise AssertionError(f"{type(e).__name__}: {e}\nstdout:\n{proc.stdout}") from None


def check_output(out: str, markdown: str) -> None:
    assert out.splitlines()[0].startswith("machine: ") and "load average" in out.splitlines()[0]
    lines = out.splitlines()

    def row(prefix: str) -> list[str]:
        hits = [ln for ln in lines if ln.startswith(prefix)]
        assert hits, f"no table row starting with {prefix!r} in:\n{out}"
        return [c.strip() for c in hits[-1].strip("|").split("|")]

    for label in ("cold 1", "warm 1"):
        cells = row(f"| {label} ")
        # listening, health, joined, loaded, ready: seconds after start; the heartbeat wait may round to 0.00
        assert all(float(c) > 0 for c in cells[1:6]) and float(cells[6]) >= 0, cells
    for label in ("Challenge RPC", "Join RPC (signed declaration)", "PoolClient.join"):
        cells = row(f"| {label}")
        assert float(cells[1]) > 0 and cells[-1] == "10", cells
    mlp_rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.startswith("| mlp ")]
    download = next(r for r in mlp_rows if len(r) == 8)  # artifact, MB, raw MB/s, raw ms, node MB/s, ...
    assert float(download[2]) > 0 and float(download[4]) > 0, download
    infer = next(r for r in mlp_rows if len(r) == 17)  # model, input, TVM p50, ..., bit-identical
    assert infer[1] == "1x64" and float(infer[5]) > 0 and infer[-1] == "yes", infer
    for section in ("## Join: node start to ready", "## Join RPC round trip", "## Artifact download",
                    "## Inference: node vs in-process"):
        assert section in markdown

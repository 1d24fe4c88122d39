"""Helpers shared by test modules (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import time


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` every 50 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_cli(*args: str, cwd=None, timeout: float = 600) -> "subprocess.CompletedProcess":
    """``hyperinfer ARGS`` in a child process of this interpreter, output captured."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "hyperinfer", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(proc, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, exactly one ``Error:`` line naming each needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def parse_metrics(text: str) -> dict[str, dict[tuple, float]]:
    """Prometheus text parsed with prometheus_client's own parser: {sample name: {labels: value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def metric_total(metrics: dict, name: str, **labels) -> float:
    """The sum of a sample over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in metrics.get(name, {}).items() if want <= set(k))


def build_and_compare(tmp_path, clean, target, name: str = "model", rtol: float = 1e-4, tuning_db=None):
    """Build ``clean`` (a cleaned model) for ``target`` with the project's CPU pipeline, run it
    and ONNX Runtime (2 threads each) on two seeded random inputs, and assert every output
    matches: same shape and dtype, integers exactly, floats within ``rtol`` of the output's
    scale. Returns the BuildResult."""
    import numpy as np
    import onnx

    from hyperinfer.compile import build, cleanup
    from hyperinfer.runtime import ORTRunner, TVMRunner

    so = tmp_path / f"{name}-{target.id}.so"
    built = build.build_artifact(build.import_onnx(clean.model), target, so, tuning_db=tuning_db)
    onnx_path = tmp_path / f"{name}.onnx"
    onnx.save(clean.model, str(onnx_path))
    ort = ORTRunner(onnx_path, clean.inputs, [o.name for o in clean.outputs], threads=2)
    tvm_r = TVMRunner(so, clean.inputs, clean.outputs, threads=2)
    for seed in (0, 1):
        x = cleanup.random_inputs(clean.inputs, np.random.default_rng(seed))
        ref, got = ort.run(x), tvm_r.run(x)
        for k, a in ref.items():
            b = got[k]
            assert b.shape == a.shape and b.dtype == a.dtype, k
            if a.dtype.kind in "biu":
                np.testing.assert_array_equal(b, a)
            else:
                scale = max(1.0, float(np.abs(a).max()))
                assert float(np.abs(a.astype(np.float64) - b).max()) <= rtol * scale, k
    return built


def workspace_allocations(func, target) -> dict[str, int]:
    """Buffers a scheduled PrimFunc, compiled alone for ``target`` (a TargetInfo), allocates
    through ``TVMBackendAllocWorkspace`` at run time (a call each time its scope is entered):
    buffer name -> bytes (-1 when the size is not a constant)."""
    import re

    from hyperinfer.compile import tune

    ll = tune.compile_function(func, tune.tuning_target(target, 2))[0].inspect_source("ll")
    calls = re.findall(r"%([\w.]+) = (?:tail )?call ptr %\w+\(i32 1, i32 %\w+, i64 (%?\w+), i32 \d+, i32 \d+\)", ll)
    assert len(calls) == len(re.findall(r"= load ptr, ptr @__TVMBackendAllocWorkspace", ll)), "unparsed workspace call"
    return {name: (int(n) if n.isdigit() else -1) for name, n in calls}

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

"""`hyperinfer infer` against a real gateway (the harness in oip_harness.py): output, receipt,
and one-line errors for missing files, bad flags, unreachable gateways and status errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperinfer.verify.receipt import verify_receipt

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: the harness is a plain module here
from oip_harness import Harness, make_package  # noqa: E402

# the `hyperinfer` command, run by this interpreter (no reliance on PATH or a __main__ module)
HYPERINFER = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oip-cli")
    make_package(tmp / "repo", "mlp")
    with Harness(tmp / "repo", tmp) as h:
        x = tmp / "x.npy"
        np.save(x, np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
        yield {"address": h.address, "key": h.gateway_key, "x": x, "tmp": tmp}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HYPERINFER, "infer", *args], capture_output=True, text=True,
                          timeout=120)


def ready_cli(gateway, *args: str) -> subprocess.CompletedProcess:
    """The nodes join a moment after the harness reports READY: retry while nothing serves the model."""
    import time

    deadline = time.monotonic() + 30
    while True:
        p = cli("--url", gateway["address"], *args)
        if "no node can serve" not in p.stderr or time.monotonic() > deadline:
            return p
        time.sleep(0.2)


def test_text_output(gateway):
    p = ready_cli(gateway, "--model", "mlp", "--input", f"x={gateway['x']}")
    assert p.returncode == 0, p.stderr
    assert "output probs: float32[1, 10]" in p.stdout and "receipt: status=unchecked node=" in p.stdout


def test_json_output_and_saved_files(gateway, tmp_path):
    p = ready_cli(gateway, "--model", "mlp", "--version", "1", "--input", f"x={gateway['x']}", "--verify", "always",
                  "--json", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["outputs"]["probs"]["shape"] == [1, 10] and doc["receipt"]["status"] == "agreed"
    assert np.load(tmp_path / "probs.npy").shape == (1, 10)
    checks = verify_receipt((tmp_path / "receipt.json").read_text().strip(), gateway["key"])
    assert all(c.ok for c in checks)


@pytest.mark.parametrize("args,message", [
    (["--model", "mlp", "--input", "x=/nonexistent/x.npy"], "Error: --input x: file /nonexistent/x.npy not found"),
    (["--model", "mlp", "--input", "x"], "Error: --input 'x': expected NAME=FILE.npy"),
    (["--model", "mlp"], "Error: give at least one --input NAME=FILE.npy"),
    (["--model", "mlp", "--input", "X", "--verify", "later"], "Error: --verify 'later'"),
])
def test_usage_errors(gateway, args, message):
    p = cli("--url", gateway["address"], *args)
    assert p.returncode == 1 and p.stderr.startswith(message), p.stderr
    assert "Traceback" not in p.stderr


def test_status_errors_are_one_line(gateway):
    p = ready_cli(gateway, "--model", "mlp", "--input", f"y={gateway['x']}")
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith("Error: INVALID_ARGUMENT: inputs[0].name:"), p.stderr
    p = cli("--url", gateway["address"], "--model", "nope", "--input", f"x={gateway['x']}")
    assert p.returncode == 1 and p.stderr.startswith("Error: NOT_FOUND: unknown model 'nope'"), p.stderr


def test_unreachable_gateway(gateway):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = cli("--url", f"127.0.0.1:{port}", "--model", "mlp", "--input", f"x={gateway['x']}", "--timeout", "5")
    assert p.returncode == 1 and p.stderr.startswith(f"Error: cannot reach the gateway at 127.0.0.1:{port}"), p.stderr
    assert "Traceback" not in p.stderr

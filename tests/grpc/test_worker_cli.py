"""`hyperinfer node` as a real process: start line, model-loaded line, SIGTERM ->
Leave and exit 0; `hyperinfer keys`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from hyperinfer import zoo
from hyperinfer.identity import describe, load_or_create_key

gateway_app = pytest.importorskip("hyperinfer.gateway.app")
from hyperinfer.gateway.config import GatewayConfig  # noqa: E402

CLI = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]


def env(tmp_path):
    return {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
            "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}


@pytest.fixture()
def gateway(tmp_path):
    try:
        from hyperinfer.compile import compile_model
    except ImportError:
        from hyperinfer.compile.pipeline import compile_model
    key_path = tmp_path / "publisher.key"
    load_or_create_key(key_path)
    path, shapes = zoo.build_small("mlp", tmp_path / "src")
    compile_model(path, name="mlp", out_dir=tmp_path / "repo", targets=["cpu-x86_64"], input_shapes=shapes,
                  version=1, progress=False, sign_key=key_path)
    gw = gateway_app.Gateway(GatewayConfig(repository=tmp_path / "repo", listen="127.0.0.1:0",
                                           db=tmp_path / "gw.db", key=tmp_path / "gw.key", heartbeat_interval=0.3,
                                           open_pool=True))
    gw.start()
    yield gw, describe(load_or_create_key(key_path)[0])["public_key"]
    gw.stop(0)


class Lines:
    """Reads a pipe on a thread so the test can wait for a line with a timeout."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._t.start()

    def _read(self, pipe):
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")


def test_node_process_lifecycle(tmp_path, gateway):
    gw, publisher_hex = gateway
    proc = subprocess.Popen(
        [*CLI, "node", "--gateway", gw.address, "--key", str(tmp_path / "node.key"), "--operator", "op-cli",
         "--device", "cpu", "--threads", "1", "--cache", str(tmp_path / "cache"),
         "--trust-publisher", publisher_hex],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path))
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        m = out.wait(r"^node ([0-9a-f]{32}) listening on 127\.0\.0\.1:(\d+) targets=(\S+)")
        node_id, targets = m.group(1), m.group(3).split(",")
        assert targets[-1] == "cpu-x86_64" and all(t.startswith("cpu-") for t in targets)
        out.wait(r"^loaded model mlp/1 target=cpu-x86_64 artifact=[0-9a-f]{16} \(signed by [0-9a-f]{32}\)")
        deadline = time.monotonic() + 20
        while not gw.registry.schedulable_nodes("mlp", 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [n.node_id for n in gw.registry.schedulable_nodes("mlp", 1)] == [node_id]
        assert oct((tmp_path / "node.key").stat().st_mode & 0o777) == "0o600"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out.wait(r"^node stopped", timeout=5)
    assert gw.registry.get(node_id).state == "left"
    assert not any("Traceback" in line for line in err.lines), err.lines


def test_node_refuses_bad_flags_without_traceback(tmp_path):
    for args, needle in [
        (["--device", "tpu"], "--device"),
        (["--max-concurrency", "0"], "--max-concurrency"),
        (["--listen", "0.0.0.0:0"], "--advertise"),
        (["--trust-publisher", "not-a-key"], "not-a-key"),
    ]:
        p = subprocess.run([*CLI, "node", "--gateway", "127.0.0.1:1", "--key", str(tmp_path / "k.key"), *args],
                           capture_output=True, text=True, env=env(tmp_path), timeout=60)
        assert p.returncode != 0 and needle in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_keys_create_and_show(tmp_path):
    path = tmp_path / "sub" / "pub.key"
    p = subprocess.run([*CLI, "keys", "show", str(path)], capture_output=True, text=True, env=env(tmp_path), timeout=60)
    assert p.returncode == 1 and "not found" in p.stderr
    p = subprocess.run([*CLI, "keys", "create", str(path)], capture_output=True, text=True, env=env(tmp_path), timeout=60)
    assert p.returncode == 0, p.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    d = describe(load_or_create_key(path)[0])
    p = subprocess.run([*CLI, "keys", "show", str(path)], capture_output=True, text=True, env=env(tmp_path), timeout=60)
    assert f"id: {d['id']}" in p.stdout and f"public_key: {d['public_key']}" in p.stdout
    p = subprocess.run([*CLI, "keys", "create", str(path)], capture_output=True, text=True, env=env(tmp_path), timeout=60)
    assert p.returncode == 1 and "already exists" in p.stderr

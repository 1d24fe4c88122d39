"""`hyperinfer gateway` as a real process: startup lines, defaults under XDG dirs, pool status
against it, restart keeps the registry, graceful SIGTERM; bad flags give one Error line."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.verify import payloads
from hyperinfer.verify.signing import fingerprint, public_bytes, sign

HYPERINFER = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]


def _package(repo):
    d = repo / "m" / "1"
    (d / "artifacts").mkdir(parents=True)
    data = b"not really native code"
    (d / "artifacts" / "cpu-x86_64.so").write_bytes(data)
    m = Manifest(name="m", version=1, source_sha256="0" * 64, model_sha256="0" * 64,
                 inputs=[TensorSpec("x", "float32", (1,))], outputs=[OutputSpec("y", "float32", (1,))],
                 tvm_version="test",
                 artifacts={"cpu-x86_64": ArtifactInfo("cpu-x86_64", {}, "artifacts/cpu-x86_64.so",
                                                       hashlib.sha256(data).hexdigest(), len(data))})
    (d / "manifest.json").write_bytes(m.dumps())


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
             HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", COLUMNS="200")
    e.pop("HYPERINFER_GATEWAY", None)
    return e


class Proc:
    def __init__(self, args, env):
        self.p = subprocess.Popen(HYPERINFER + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen))

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise


def _join(address: str, key: Ed25519PrivateKey) -> None:
    with grpc.insecure_channel(address) as ch:
        stub = pool_pb2_grpc.PoolStub(ch)
        pub = public_bytes(key)
        c = stub.Challenge(pool_pb2.ChallengeRequest(public_key=pub), timeout=10)
        data = payloads.join_payload(nonce=c.nonce, gateway_id=c.gateway_id, node_id=fingerprint(pub),
                                     operator="op", listen_address="127.0.0.1:9999", targets=["cpu-x86_64"],
                                     max_concurrency=1)
        stub.Join(pool_pb2.JoinRequest(public_key=pub, nonce=c.nonce, signature=sign(key, data), operator="op",
                                       listen_address="127.0.0.1:9999", targets=["cpu-x86_64"],
                                       max_concurrency=1), timeout=10)


def _status(address: str, env) -> dict:
    r = subprocess.run(HYPERINFER + ["pool", "status", "--gateway", address, "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_gateway_process(tmp_path, env):
    repo = tmp_path / "repo"
    _package(repo)
    g = Proc(["gateway", "--repository", str(repo), "--listen", "127.0.0.1:0", "--heartbeat-interval", "2",
              "--open-pool"], env)
    try:
        gw_id, address = g.expect(r"gateway (\w+) listening on (\S+)").groups()
        g.expect(r"offering m/1 targets=cpu-x86_64 \(UNSIGNED\)")
        key_file = tmp_path / "config" / "hyperinfer" / "gateway.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data" / "hyperinfer" / "gateway.db").is_file()

        node_key = Ed25519PrivateKey.generate()
        _join(address, node_key)
        g.expect(r"node \w+ joined: operator=op")
        st = _status(address, env)
        assert st["gateway_id"] == gw_id
        assert [(n["node_id"], n["state"]) for n in st["nodes"]] == [(fingerprint(public_bytes(node_key)), "healthy")]
        g.expect(r"healthy -> stale", timeout=20)  # no heartbeats: stale after 3 intervals, logged
    finally:
        rc = g.stop()
    assert rc == 0, "\n".join(g.seen)
    g.expect("gateway stopped")

    # restart: same identity, node still registered (stale until it heartbeats)
    g = Proc(["gateway", "--repository", str(repo), "--listen", "127.0.0.1:0", "--open-pool"], env)
    try:
        gw_id2, address = g.expect(r"gateway (\w+) listening on (\S+)").groups()
        assert gw_id2 == gw_id
        assert [n["state"] for n in _status(address, env)["nodes"]] == ["stale"]
    finally:
        assert g.stop() == 0


def test_gateway_bad_repository(tmp_path, env):
    r = subprocess.run(HYPERINFER + ["gateway", "--repository", str(tmp_path / "missing"), "--listen", "127.0.0.1:0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error: --repository") and "not a directory" in r.stderr
    assert "Traceback" not in r.stderr

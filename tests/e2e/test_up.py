"""`hyperinfer up` end to end: a gateway and three nodes as real processes on 127.0.0.1,
started by one command, called with tritonclient, a node killed, then Ctrl-C.

The tests of this module run in order on one `up` process (the kill and the
SIGINT come last). Every wait is bounded; the teardown kills whatever is left.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from hyperinfer.package import ModelPackage
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
from oip_harness import import_tritonclient_grpc  # noqa: E402

try:
    tritonclient_grpc = import_tritonclient_grpc()  # private descriptor pool (see there)
except ImportError:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)

NODES = 3
NODE_LINE = re.compile(r"^(node\d+) id=(\S+) operator=(\S+) target=(\S+) pid=(\d+) listen=(\S+)", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A `hyperinfer up` process; its merged stdout/stderr is read by a thread into ``lines``."""

    def __init__(self, args: list[str], cwd: Path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "hyperinfer", "up", *args], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.output)
            if m:
                return m
            if self.proc.poll() is not None:
                self._reader.join(5)
                m = rx.search(self.output)
                if m:
                    return m
                raise AssertionError(f"`up` exited with {self.proc.returncode} before printing {pattern!r}:\n"
                                     f"{self.output[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for `up` to print {pattern!r}:\n"
                             f"{self.output[-4000:]}")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_all(self) -> None:
        procs = self.descendants()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def mlp_package(compiled_small) -> ModelPackage:
    return compiled_small("mlp")


@pytest.fixture(scope="module")
def pool(mlp_package, repository, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up")
    port = free_port()
    up = Up(["--repository", str(repository), "--nodes", str(NODES), "--port", str(port), "--state",
             str(tmp / "state"), "--allow-unsigned", "--threads", "1", "--model-timeout", "240",
             "--http-port", "0", "--metrics-port", "0"], cwd=tmp)
    try:
        up.find(r"^ready in [\d.]+ s", 300)
        up.find(r"^node3 id=", 10)
        nodes = {m.group(1): {"id": m.group(2), "operator": m.group(3), "target": m.group(4),
                              "pid": int(m.group(5)), "listen": m.group(6)}
                 for m in NODE_LINE.finditer(up.output)}
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        yield {"up": up, "port": port, "nodes": nodes, "client": client, "state": tmp / "state",
               "gateway_pid": int(up.find(r"gateway pid (\d+) listening", 1).group(1))}
        client.close()
    finally:
        up.kill_all()


def infer_mlp(client, x: np.ndarray, verify: str = "auto"):
    inp = tritonclient_grpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp], parameters={"verify": verify}, client_timeout=60)


def test_up_starts_every_node_and_serves_what_onnx_runtime_computes(pool, mlp_package):
    up, nodes = pool["up"], pool["nodes"]
    assert sorted(nodes) == [f"node{i}" for i in range(1, NODES + 1)], up.output
    assert len({n["id"] for n in nodes.values()}) == NODES
    assert len({n["operator"] for n in nodes.values()}) == NODES  # one operator per node
    assert all(n["listen"].startswith("127.0.0.1:") for n in nodes.values())
    assert all("cpu-x86_64" in n["target"] for n in nodes.values())
    assert all(psutil.pid_exists(n["pid"]) for n in nodes.values())
    # the repository already had a package: no PP-OCR download or compile
    assert "compiling the bundled" not in up.output
    assert not (pool["state"] / "publisher.key").exists()
    assert f"endpoint 127.0.0.1:{pool['port']}" in up.output
    # the REST and metrics ports (free ones here: --http-port 0 --metrics-port 0) answer
    import urllib.request

    m = re.search(r"endpoint http://(\S+)/v2: KServe v2 REST.*metrics: http://(\S+)/metrics", up.output)
    assert m, up.output
    assert urllib.request.urlopen(f"http://{m.group(1)}/v2/models/mlp/ready", timeout=10).status == 200
    assert b"hyperinfer_nodes_healthy 3.0" in urllib.request.urlopen(f"http://{m.group(2)}/metrics", timeout=10).read()

    ort = ORTRunner.for_package(mlp_package, threads=1)
    tol = mlp_package.manifest.outputs[0].tolerance
    rng = np.random.default_rng(3)
    answered_by = set()
    for i in range(6):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        res = infer_mlp(pool["client"], x, verify="always" if i < 2 else "auto")
        np.testing.assert_allclose(res.as_numpy("probs"), ort.run({"x": x})["probs"], atol=tol.atol, rtol=tol.rtol)
        receipt = receipt_from_json(res.get_response().parameters[RECEIPT_PARAMETER].string_param)
        answered_by.add(receipt.node_id)
        if i < 2:
            assert receipt.status == "agreed", receipt
            assert receipt.validator_node_id != receipt.node_id
    assert answered_by <= {n["id"] for n in nodes.values()}
    # the live status (plain lines: stdout is a pipe) counts the requests
    up.find(r"^status node\d state=healthy requests=[1-9]", 15)


def test_killing_a_node_leaves_the_pool_serving_and_up_reports_it(pool, mlp_package):
    up, victim = pool["up"], pool["nodes"]["node3"]
    os.kill(victim["pid"], signal.SIGKILL)
    up.find(rf"^node3 \(pid {victim['pid']}, id \w+\) is gone: killed by SIGKILL; 2 of 3 node\(s\) left", 20)
    ort = ORTRunner.for_package(mlp_package, threads=1)
    tol = mlp_package.manifest.outputs[0].tolerance
    rng = np.random.default_rng(4)
    for _ in range(10):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        res = infer_mlp(pool["client"], x)
        np.testing.assert_allclose(res.as_numpy("probs"), ort.run({"x": x})["probs"], atol=tol.atol, rtol=tol.rtol)
        receipt = receipt_from_json(res.get_response().parameters[RECEIPT_PARAMETER].string_param)
        assert receipt.node_id != victim["id"]
    assert up.proc.poll() is None, up.output[-3000:]
    up.find(r"^status node3 state=gone", 15)


def test_sigint_stops_every_process(pool):
    up = pool["up"]
    children = up.descendants()
    pids = {p.pid for p in children} | {n["pid"] for n in pool["nodes"].values()} | {pool["gateway_pid"]}
    assert pool["gateway_pid"] in {p.pid for p in children}
    up.proc.send_signal(signal.SIGINT)
    rc = up.proc.wait(60)
    assert rc == 0, up.output[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if not gone(p)] == []
    up._reader.join(5)
    assert "stopped; logs in" in up.output
    assert "Traceback" not in up.output


def test_up_demo_exits_by_itself(mlp_package, repository, tmp_path):
    """What scripts/quickstart.sh runs (on the MLP instead of PP-OCR): ready, verified requests, exit 0;
    with --tls every channel is TLS (mutual between the gateway and the nodes)."""
    up = Up(["--repository", str(repository), "--nodes", "2", "--port", "0", "--state", str(tmp_path / "state"),
             "--allow-unsigned", "--demo", "--demo-model", "mlp", "--demo-requests", "2", "--exit-after-demo",
             "--tls"], cwd=tmp_path)
    try:
        assert up.proc.wait(300) == 0, up.output[-4000:]
        up._reader.join(5)
        out = up.output
        assert out.count("status agreed") == 2, out
        assert "stopped; logs in" in out and "Traceback" not in out
        assert len(list((tmp_path / "state" / "receipts").glob("demo-*.json"))) == 2
        assert "(TLS, mutual with nodes)" in (tmp_path / "state" / "gateway.log").read_text()
        assert {p.name for p in (tmp_path / "state" / "tls").glob("*.pem")} == {
            "ca.pem", "gateway.pem", "node1.pem", "node2.pem", "client.pem"}
    finally:
        up.kill_all()

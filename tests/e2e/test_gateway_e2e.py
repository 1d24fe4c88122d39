"""End to end, real processes: `hyperinfer gateway` + two `hyperinfer node`s of different
operators serving compiled TVM artifacts, called with tritonclient.

Every wait is bounded; every child process is killed in teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from hyperinfer import zoo
from hyperinfer.identity import load_public_key
from hyperinfer.package import ModelPackage
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
from oip_harness import import_tritonclient_grpc  # noqa: E402

try:
    tritonclient_grpc = import_tritonclient_grpc()  # coexists with hyperinfer's OIP module (see there)
except ImportError:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = ["mlp", "int-bool"]
# the `hyperinfer` command, run by this interpreter (no reliance on PATH or a __main__ module)
HYPERINFER = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]
TARGET = "cpu-x86_64"


def wait_for(pred, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode} while waiting for {what}:\n{p.log()}")
        try:
            if pred():
                return
        except (InferenceServerException, grpc.RpcError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Child:
    """A child process with its output in a file (a pipe could fill up and block it)."""

    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([*HYPERINFER, *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def find(self, pattern: str, timeout: float) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            m = re.search(pattern, self.log_path.read_text(errors="replace"))
            if m:
                found.append(m)
            return bool(m)

        wait_for(seen, timeout, f"{self.name} to print {pattern!r}", [self])
        return found[0]

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from hyperinfer.compile import compile_model

    tmp = tmp_path_factory.mktemp("e2e-repo")
    for name in MODELS:
        src, shapes = zoo.build_small(name, tmp / "onnx")
        compile_model(src, name=name, out_dir=tmp / "repo", targets=[TARGET], input_shapes=shapes,
                      version=1, progress=False, threads=1)
    return tmp / "repo"


@pytest.fixture(scope="module")
def pool(repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-pool")
    children: list[Child] = []
    try:
        gw = Child("gateway", ["gateway", "--repository", str(repo), "--listen", "127.0.0.1:0",
                               "--db", str(tmp / "gateway.db"), "--key", str(tmp / "gateway.key"),
                               "--heartbeat-interval", "0.5", "--open-pool", "--audit-rate", "0"], tmp)
        children.append(gw)
        address = gw.find(r"listening on (\S+:\d+)", 60).group(1)
        gateway_key = bytes.fromhex(gw.find(r"public key ([0-9a-f]{64})", 10).group(1))
        nodes = []
        for i in range(2):
            n = Child(f"node{i}", ["node", "--gateway", address, "--key", str(tmp / f"node{i}.key"),
                                   "--operator", f"operator{i}", "--cache", str(tmp / f"cache{i}"),
                                   "--allow-unsigned", str(repo), "--device", "cpu", "--threads", "1",
                                   "--max-concurrency", "4", "--grace", "1"], tmp)
            children.append(n)
            nodes.append(n)
        client = tritonclient_grpc.InferenceServerClient(address)
        channel = grpc.insecure_channel(address)
        pool_stub = pool_pb2_grpc.PoolStub(channel)

        def all_ready() -> bool:
            status = pool_stub.Status(pool_pb2.StatusRequest(), timeout=5)
            ready = {m.name: m.ready_nodes for m in status.models}
            return all(ready.get(m) == 2 for m in MODELS) and all(client.is_model_ready(m) for m in MODELS)

        wait_for(all_ready, 120, "both nodes to load every model", children)
        node_keys = {}
        for i in range(2):
            pub = load_public_key(tmp / f"node{i}.key")
            from hyperinfer.verify.signing import fingerprint

            node_keys[fingerprint(pub)] = pub
        yield {"address": address, "client": client, "gateway_key": gateway_key, "nodes": nodes,
               "node_keys": node_keys, "repo": repo, "gateway": gw, "tmp": tmp}
        channel.close()
        client.close()
    finally:
        for c in reversed(children):
            c.stop()


def infer_inputs(arrays):
    out = []
    for name, a in arrays.items():
        i = tritonclient_grpc.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def reference(repo: Path, name: str, inputs):
    pkg = ModelPackage.open(repo / name / "1")
    return ORTRunner.for_package(pkg, threads=1).run(inputs), pkg.manifest


def receipt_json(result) -> str:
    return result.get_response().parameters[RECEIPT_PARAMETER].string_param


def test_results_match_onnx_runtime(pool):
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
        res = pool["client"].infer("mlp", infer_inputs(x), client_timeout=60)
        want, m = reference(pool["repo"], "mlp", x)
        tol = m.outputs[0].tolerance
        np.testing.assert_allclose(res.as_numpy("probs"), want["probs"], atol=tol.atol, rtol=tol.rtol)
    scores = {"scores": rng.standard_normal((4, 10)).astype(np.float32)}
    res = pool["client"].infer("int-bool", infer_inputs(scores), client_timeout=60)
    want, m = reference(pool["repo"], "int-bool", scores)
    np.testing.assert_array_equal(res.as_numpy("label"), want["label"])
    np.testing.assert_array_equal(res.as_numpy("positive"), want["positive"])
    np.testing.assert_allclose(res.as_numpy("scaled"), want["scaled"], rtol=1e-5, atol=1e-6)


def test_receipt_verifies_with_the_published_keys(pool):
    x = {"x": np.ones((1, 64), np.float32)}
    for mode, statuses in (("auto", {"unchecked", "pending"}), ("sync", {"unchecked", "agreed"}),
                           ("always", {"agreed"})):
        res = pool["client"].infer("mlp", infer_inputs(x), parameters={"verify": mode}, client_timeout=60)
        rj = receipt_json(res)
        checks = verify_receipt(rj, pool["gateway_key"], pool["node_keys"])
        assert all(c.ok for c in checks), (mode, [c for c in checks if not c.ok])
        r = receipt_from_json(rj)
        # a node still on probation has its answer held until checked, whatever the mode
        assert r.status in statuses or (r.probation and r.status in ("agreed", "refereed")), (mode, r.status)
        assert r.node_id in pool["node_keys"]
        if r.status == "agreed":
            assert r.validator_node_id in pool["node_keys"] and r.validator_node_id != r.node_id


def test_cli_infer(pool, tmp_path):
    x = np.random.default_rng(5).standard_normal((1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [*HYPERINFER, "infer", "--url", pool["address"], "--model", "mlp",
         "--input", f"x={tmp_path / 'x.npy'}", "--verify", "always", "--json", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["outputs"]["probs"]["shape"] == [1, 10] and doc["receipt"]["status"] == "agreed"
    want, _ = reference(pool["repo"], "mlp", {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probs.npy"), want["probs"], rtol=1e-5, atol=1e-6)
    checks = verify_receipt((tmp_path / "out" / "receipt.json").read_text().strip(), pool["gateway_key"])
    assert all(c.ok for c in checks)


def test_bad_requests_get_precise_status(pool):
    c = pool["client"]
    with pytest.raises(InferenceServerException) as ei:
        c.infer("mlp", infer_inputs({"x": np.ones((1, 32), np.float32)}))
    assert ei.value.status() == "StatusCode.INVALID_ARGUMENT" and "inputs[0].shape" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        c.infer("missing-model", infer_inputs({"x": np.ones((1, 64), np.float32)}))
    assert ei.value.status() == "StatusCode.NOT_FOUND"


def test_killing_a_node_mid_run_leaves_the_gateway_serving(pool):
    """Last in this module: it kills node1."""
    client = tritonclient_grpc.InferenceServerClient(pool["address"])
    x = {"x": np.random.default_rng(9).standard_normal((1, 64)).astype(np.float32)}
    want, m = reference(pool["repo"], "mlp", x)
    errors: list[Exception] = []
    served: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                res = client.infer("mlp", infer_inputs(x), client_timeout=30)
                np.testing.assert_allclose(res.as_numpy("probs"), want["probs"],
                                           atol=m.outputs[0].tolerance.atol, rtol=m.outputs[0].tolerance.rtol)
                served.append(receipt_from_json(receipt_json(res)).node_id)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(served) >= 20, 60, "traffic on both nodes")
        victim = pool["nodes"][1]
        victim.stop(sig=signal.SIGKILL)
        killed_at = len(served)
        wait_for(lambda: len(served) >= killed_at + 30, 60, "requests after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        client.close()
    assert not errors, errors[:3]
    assert len(set(served[:killed_at])) == 2  # both nodes served before the kill
    assert len(set(served[killed_at + 5:])) == 1  # only the survivor afterwards

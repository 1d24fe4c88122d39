"""End to end, real processes: `hyperinfer gateway` with its REST and metrics ports, two
`hyperinfer node`s (one with its own /metrics) serving the compiled PP-OCR angle
classifier; called with tritonclient.http and curl; /metrics read with the Prometheus
text parser, and its counts checked against what was sent.

Every wait is bounded; every child process is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hyperinfer import zoo
from hyperinfer.identity import load_public_key
from hyperinfer.package import ModelPackage
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.agreement import within_tolerance
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json, verify_receipt
from hyperinfer.verify.signing import fingerprint

try:
    import tritonclient.http as tclient
except ImportError:
    pytest.skip("tritonclient[http] is not installed", allow_module_level=True)
from support import metric_total, parse_metrics  # noqa: E402

HYPERINFER = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]
MODEL = "ppocr-cls"


class Child:
    """A child process with its output in a file (a pipe could fill up and block it)."""

    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*HYPERINFER, *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def find(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_path.read_text(errors="replace"))
            if m:
                return m
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not print {pattern!r} in {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory, ppocr_paths):
    from hyperinfer.compile import compile_model

    tmp = tmp_path_factory.mktemp("rest-e2e")
    compile_model(ppocr_paths[MODEL], MODEL, out_dir=tmp / "repo", targets=["cpu-x86_64"],
                  input_shapes={"x": zoo.PPOCR[MODEL].input_shape}, progress=False, samples=2)
    children: list[Child] = []
    try:
        # every request checked (in the background, no probation) on the other operator's node:
        # checks and agreements show in /metrics
        gw = Child("gateway", ["gateway", "--repository", str(tmp / "repo"), "--listen", "127.0.0.1:0",
                               "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                               "--db", str(tmp / "gateway.db"), "--key", str(tmp / "gateway.key"),
                               "--heartbeat-interval", "0.5", "--sample-rate", "1", "--probation-jobs", "0", "--open-pool", "--audit-rate", "0"], tmp)
        children.append(gw)
        grpc_address = gw.find(r"listening on (\S+:\d+)", 60).group(1)
        rest = gw.find(r"REST \(KServe v2 HTTP\) on http://(\S+)/v2", 10).group(1)
        metrics = gw.find(r"metrics \(Prometheus\) on http://(\S+)/metrics", 10).group(1)
        gateway_key = bytes.fromhex(gw.find(r"public key ([0-9a-f]{64})", 10).group(1))
        for i in range(2):
            extra = ["--metrics-listen", "127.0.0.1:0"] if i == 0 else []
            children.append(Child(f"node{i}", [
                "node", "--gateway", grpc_address, "--key", str(tmp / f"node{i}.key"), "--operator", f"operator{i}",
                "--cache", str(tmp / f"cache{i}"), "--allow-unsigned", str(tmp / "repo"), "--device", "cpu", "--threads", "1",
                "--grace", "1", *extra], tmp))
        node0_metrics = children[1].find(r"metrics \(Prometheus\) on http://(\S+)/metrics", 60).group(1)
        client = tclient.InferenceServerClient(rest, network_timeout=60)
        deadline = time.monotonic() + 120
        while not (client.is_model_ready(MODEL)
                   and total(scrape(metrics), "hyperinfer_nodes_healthy") == 2
                   and b"ppocr-cls" in urllib.request.urlopen(f"http://{node0_metrics}/metrics").read()):
            for c in children:
                assert c.proc.poll() is None, f"{c.name} exited:\n{c.log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the nodes did not serve ppocr-cls within 120 s"
            time.sleep(0.2)
        pkg = ModelPackage.open(tmp / "repo" / MODEL / "1")
        node_keys = {}
        for i in range(2):
            pub = load_public_key(tmp / f"node{i}.key")
            node_keys[fingerprint(pub)] = pub
        yield {"client": client, "rest": rest, "metrics": metrics, "node0_metrics": node0_metrics,
               "gateway_key": gateway_key, "node_keys": node_keys, "pkg": pkg,
               "node0_id": fingerprint(load_public_key(tmp / "node0.key"))}
        client.close()
    finally:
        for c in reversed(children):
            c.stop()


def scrape(address: str) -> dict[str, dict[tuple, float]]:
    return parse_metrics(urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode())


total = metric_total


def page(seed: int) -> np.ndarray:
    """A 48x192 'text line': dark strokes on a light background, normalized as PP-OCR does."""
    rng = np.random.default_rng(seed)
    img = np.full((48, 192), 0.9, np.float32)
    for x in range(8, 184, 12):
        img[12 + rng.integers(0, 6):36 - rng.integers(0, 6), x:x + 4 + rng.integers(0, 4)] = 0.1
    x = np.repeat(img[None, None], 3, axis=1)
    return ((x - 0.5) / 0.5).astype(np.float32)


def check(pool, outputs: dict[str, np.ndarray], x: np.ndarray, receipt_text: str) -> None:
    m = pool["pkg"].manifest
    want = ORTRunner.for_package(pool["pkg"], threads=1).run({"x": x})
    res = within_tolerance(outputs, want, m.outputs)
    assert res.agree, res.reason
    checks = verify_receipt(receipt_text, pool["gateway_key"], pool["node_keys"])
    assert all(c.ok for c in checks), checks
    assert receipt_from_json(receipt_text).model_name == MODEL


def test_tritonclient_http_infers_ppocr_with_receipts(pool):
    m = pool["pkg"].manifest
    for seed, binary in ((1, True), (2, False)):
        x = page(seed)
        i = tclient.InferInput("x", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        outs = [tclient.InferRequestedOutput(o.name, binary_data=binary) for o in m.outputs]
        r = pool["client"].infer(MODEL, [i], outputs=outs, request_id=f"http-{seed}")
        resp = r.get_response()
        assert resp["id"] == f"http-{seed}"
        check(pool, {o.name: r.as_numpy(o.name) for o in m.outputs}, x, resp["parameters"][RECEIPT_PARAMETER])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_infers_ppocr_with_json(pool, tmp_path):
    x = page(3)
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                            "data": x.ravel().tolist()}]}))
    proc = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
                           "--data-binary", f"@{body}", f"http://{pool['rest']}/v2/models/{MODEL}/infer"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resp = json.loads(proc.stdout)
    outs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in resp["outputs"]}
    check(pool, outs, x, resp["parameters"][RECEIPT_PARAMETER])


def quiet_metrics(address: str, timeout: float = 60.0) -> dict:
    """A scrape once earlier requests' checks and write-behind ledger rows have all landed
    (every success verified, the ledger's job count unchanged over half a second)."""
    deadline = time.monotonic() + timeout
    before = scrape(address)
    while True:
        time.sleep(0.5)
        now = scrape(address)
        verified = total(now, "hyperinfer_verification_duration_seconds_count") >= total(
            now, "nv_inference_request_success_total")
        if verified and total(now, "hyperinfer_node_jobs_total") == total(before, "hyperinfer_node_jobs_total"):
            return now
        assert time.monotonic() < deadline, "earlier requests' checks did not settle within 60 s"
        before = now


def test_metrics_after_a_load_run_match_what_was_sent(pool):
    g0, n0 = quiet_metrics(pool["metrics"]), scrape(pool["node0_metrics"])
    n = 8
    x = page(4)
    for k in range(n):
        i = tclient.InferInput("x", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        pool["client"].infer(MODEL, [i])
    model = {"model": MODEL, "version": "1"}

    def settled():  # the background checks (sample rate 1) and the ledger's writes behind
        g = scrape(pool["metrics"])
        done = (total(g, "hyperinfer_node_checks_total") - total(g0, "hyperinfer_node_checks_total") >= 2 * n
                and total(g, "hyperinfer_verification_duration_seconds_count")
                - total(g0, "hyperinfer_verification_duration_seconds_count") >= n)
        return g if done else None

    deadline = time.monotonic() + 60
    while (g1 := settled()) is None:
        assert time.monotonic() < deadline, "the checks did not all reach the ledger within 60 s"
        time.sleep(0.2)
    n1 = scrape(pool["node0_metrics"])
    d = lambda a, b, name, **kw: total(b, name, **kw) - total(a, name, **kw)  # noqa: E731
    assert d(g0, g1, "nv_inference_request_success_total", **model) == n
    assert d(g0, g1, "nv_inference_count_total", **model) == n
    assert d(g0, g1, "nv_inference_request_failure_total", **model) == 0
    # each request: the primary's job and the validator's, on the two operators' nodes; all agree
    assert d(g0, g1, "hyperinfer_node_jobs_total") == 2 * n
    assert d(g0, g1, "hyperinfer_node_checks_total") == 2 * n
    assert d(g0, g1, "hyperinfer_node_agreements_total") == 2 * n
    assert d(g0, g1, "hyperinfer_node_faults_total") == 0 and total(g1, "hyperinfer_disputes_total") == 0
    assert d(g0, g1, "hyperinfer_verification_duration_seconds_count", model=MODEL, mode="background") == n
    # node0's own count of the runs it did equals the jobs the gateway's ledger credits it with
    node0 = pool["node0_id"]
    assert d(n0, n1, "nv_inference_request_success_total", **model) == \
        d(g0, g1, "hyperinfer_node_jobs_total", node=node0) > 0
    assert total(n1, "hyperinfer_node_model_loaded", model=MODEL, target="cpu-x86_64") == 1
    # the gateway proved itself on each of those calls with its session HMAC, never an Ed25519 signature
    assert d(n0, n1, "hyperinfer_node_worker_calls_total", auth="session") == \
        d(n0, n1, "nv_inference_request_success_total", **model)
    assert total(n1, "hyperinfer_node_worker_calls_total", auth="signed") == 0
    assert total(n1, "hyperinfer_node_worker_sessions") == 1

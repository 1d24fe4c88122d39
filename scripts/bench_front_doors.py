#!/usr/bin/env python
"""Front doors compared: gRPC vs KServe v2 REST (binary tensors, JSON tensors) vs a direct node call.

Starts (127.0.0.1, every child stopped at exit) ``hyperinfer gateway`` with its gRPC,
REST and metrics ports, and one ``hyperinfer node`` serving the MLP and the PP-OCR
angle classifier (1x3x48x192 input) compiled for cpu-x86_64 with TVM. Sample rate 0
and no probation: only the front doors and the data plane are measured, no checks.

Then, in one run, for each model:

1. sequential latency (p50, p99), the doors called in turn call by call so load from
   other processes hits all alike: direct to the node (``hyperinfer.v1.Worker/Infer``),
   gateway gRPC (tritonclient.grpc), gateway REST with the binary tensor extension
   (tritonclient.http, its default), gateway REST with JSON tensors (tritonclient.http
   ``binary_data=False``), and REST JSON from a plain ``http.client`` (what curl sends);
2. the gateway process's CPU time per request, per door (robust on a busy machine: what a
   door costs the gateway, client excluded);
3. throughput (requests/s) with several client threads, per door;

printed as ratios to the direct call and to gRPC. Numbers depend on the machine and
on what else runs on it: the CPU count and load average are printed first.

    python scripts/bench_front_doors.py [--requests 300] [--seconds 4] [--threads 4] [--no-cls]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from hyperinfer import zoo
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport import tensors
from hyperinfer.transport.server import channel

TARGET = "cpu-x86_64"
HYPERINFER = [sys.executable, "-c", "from hyperinfer.cli import entrypoint; entrypoint()"]


class Child:
    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*HYPERINFER, *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     start_new_session=True)

    def find(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_path.read_text(errors="replace"))
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not print {pattern!r} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


CACHE = Path.home() / ".cache" / "hyperinfer" / "bench-front-doors"


def compile_models(repo: Path, tmp: Path, cls: bool) -> dict[str, np.ndarray]:
    """The packages, compiled once into CACHE and linked into ``repo``."""
    from hyperinfer.compile import compile_model
    from hyperinfer.package import ModelPackage

    def cached(name: str, build) -> None:
        dest = CACHE / name / "1"
        if not (dest.is_dir() and TARGET in ModelPackage.open(dest).manifest.artifacts):
            t0 = time.perf_counter()
            build()
            print(f"compiled {name} for {TARGET} in {time.perf_counter() - t0:.1f} s")
        repo.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(CACHE / name, target_is_directory=True)

    inputs = {}
    src, shapes = zoo.build_small("mlp", tmp / "onnx")
    cached("mlp", lambda: compile_model(src, name="mlp", out_dir=CACHE, targets=[TARGET], input_shapes=shapes,
                                        progress=False, threads=1, force=True))
    inputs["mlp"] = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    if cls:
        shape = zoo.PPOCR["ppocr-cls"].input_shape
        cached("ppocr-cls", lambda: compile_model(zoo.fetch_ppocr(names=("ppocr-cls",))["ppocr-cls"],
                                                  name="ppocr-cls", out_dir=CACHE, targets=[TARGET],
                                                  input_shapes={"x": shape}, progress=False, samples=2, force=True))
        inputs["ppocr-cls"] = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    return inputs


class Doors:
    """One callable per front door and model; each call is one request."""

    def __init__(self, grpc_address: str, rest_address: str, node_address: str, direct_ok: bool):
        import tritonclient.grpc as tg
        import tritonclient.http as th

        self.tg, self.th = tg, th
        self.grpc_address, self.rest_address, self.node_address = grpc_address, rest_address, node_address
        self.direct_ok = direct_ok

    def make(self, door: str, model: str, x: np.ndarray):
        """A fresh client (one per thread) and its call."""
        tg, th = self.tg, self.th
        if door == "direct node":
            stub = pool_pb2_grpc.WorkerStub(channel(self.node_address))
            req = pool_pb2.InferRequest(model_name=model, model_version=1, inputs=tensors.many_to_proto({"x": x}))

            def call():
                req.request_id = uuid.uuid4().hex  # as the gateway does
                stub.Infer(req, timeout=30)
            return call
        if door == "gateway gRPC":
            c = tg.InferenceServerClient(self.grpc_address)
            i = tg.InferInput("x", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            return lambda: c.infer(model, [i], client_timeout=30)
        if door.startswith("REST "):
            binary = door == "REST binary"
            c = th.InferenceServerClient(self.rest_address, network_timeout=30)
            i = th.InferInput("x", list(x.shape), "FP32")
            i.set_data_from_numpy(x, binary_data=binary)
            out = [th.InferRequestedOutput(n, binary_data=binary) for n in self.outputs(model)]
            return lambda: c.infer(model, [i], outputs=out)
        if door == "JSON http.client":
            host, port = self.rest_address.rsplit(":", 1)
            body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}).encode()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)

            def call():
                conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(data[:200])
                json.loads(data)
            return call
        raise ValueError(door)

    def outputs(self, model: str) -> list[str]:
        c = self.th.InferenceServerClient(self.rest_address)
        try:
            return [o["name"] for o in c.get_model_metadata(model)["outputs"]]
        finally:
            c.close()


DOORS = ["direct node", "gateway gRPC", "REST binary", "REST JSON", "JSON http.client"]


def latency(doors: Doors, model: str, x: np.ndarray, n: int) -> dict[str, list[float]]:
    names = [d for d in DOORS if d != "direct node" or doors.direct_ok]
    calls = {d: doors.make(d, model, x) for d in names}
    for fn in calls.values():  # warm-up: connections, first runs
        for _ in range(5):
            fn()
    out: dict[str, list[float]] = {d: [] for d in names}
    for _ in range(n):
        for d, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            out[d].append(time.perf_counter() - t0)
    return out


def gateway_cpu(doors: Doors, model: str, x: np.ndarray, n: int, pid: int) -> dict[str, float]:
    """Seconds of gateway-process CPU per request, per door (n sequential requests each)."""
    import psutil

    proc = psutil.Process(pid)
    out = {}
    for d in DOORS:
        if d == "direct node":
            continue
        fn = doors.make(d, model, x)
        fn()
        t = proc.cpu_times()
        for _ in range(n):
            fn()
        t2 = proc.cpu_times()
        out[d] = (t2.user + t2.system - t.user - t.system) / n
    return out


def throughput(doors: Doors, door: str, model: str, x: np.ndarray, seconds: float, threads: int) -> float:
    calls = [doors.make(door, model, x) for _ in range(threads)]
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = [0.0]

    def work(i: int) -> None:
        start.wait()
        while time.monotonic() < stop[0]:
            calls[i]()
            counts[i] += 1

    ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    stop[0] = time.monotonic() + seconds
    t0 = time.monotonic()
    start.wait()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per door and model")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput row")
    ap.add_argument("--threads", type=int, default=4, help="client threads for throughput")
    ap.add_argument("--no-cls", action="store_true", help="MLP only (no PP-OCR cls compile)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="hyperinfer-front-doors-"))
    inputs = compile_models(tmp / "repo", tmp, cls=not args.no_cls)
    children: list[Child] = []
    try:
        gw = Child("gateway", ["gateway", "--repository", str(tmp / "repo"), "--listen", "127.0.0.1:0",
                               "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                               "--db", str(tmp / "gateway.db"), "--key", str(tmp / "gateway.key"),
                               "--sample-rate", "0", "--probation-jobs", "0", "--heartbeat-interval", "0.5",
                               "--open-pool", "--audit-rate", "0"], tmp)
        children.append(gw)
        grpc_address = gw.find(r"listening on (\S+:\d+)", 60)
        rest_address = gw.find(r"REST \(KServe v2 HTTP\) on https?://(\S+)/v2", 10)
        node = Child("node", ["node", "--gateway", grpc_address, "--key", str(tmp / "node.key"),
                              "--operator", "bench", "--cache", str(tmp / "cache"), "--allow-unsigned", str(tmp / "repo"),
                              "--device", "cpu", "--threads", "1", "--max-concurrency", "8", "--grace", "1"], tmp)
        children.append(node)
        node_address = node.find(r"listening on (\S+:\d+)", 60)
        import tritonclient.http as th

        c = th.InferenceServerClient(rest_address)
        deadline = time.monotonic() + 300
        while not all(c.is_model_ready(m) for m in inputs):
            if time.monotonic() > deadline:
                raise SystemExit("the node did not load every model within 300 s")
            time.sleep(0.2)
        c.close()
        direct_ok = True
        try:
            Doors(grpc_address, rest_address, node_address, True).make("direct node", "mlp", inputs["mlp"])()
        except Exception as e:  # noqa: BLE001 - a node that takes only gateway-signed calls
            print(f"direct node calls refused ({type(e).__name__}); ratios to gRPC only")
            direct_ok = False
        doors = Doors(grpc_address, rest_address, node_address, direct_ok)

        for model, x in inputs.items():
            print(f"\n## {model}: input {list(x.shape)} float32 ({x.nbytes / 1024:.1f} KiB), "
                  f"{args.requests} sequential requests per door, interleaved")
            lat = latency(doors, model, x, args.requests)
            base = pct(lat["gateway gRPC"], 50)
            direct = pct(lat["direct node"], 50) if direct_ok else None
            print(f"| door | p50 ms | p99 ms | mean ms | p50 / direct | p50 / gRPC |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for d, xs in lat.items():
                p50 = pct(xs, 50)
                vs_direct = f"{p50 / direct:.2f}" if direct else "n/a"
                print(f"| {d} | {p50 * 1e3:.3f} | {pct(xs, 99) * 1e3:.3f} | {statistics.fmean(xs) * 1e3:.3f} | "
                      f"{vs_direct} | {p50 / base:.2f} |")
            cpu = gateway_cpu(doors, model, x, args.requests, gw.proc.pid)
            print(f"\ngateway CPU per request ({args.requests} sequential requests per door)")
            print("| door | gateway CPU ms / request | / gRPC |")
            print("| --- | ---: | ---: |")
            for d, c in cpu.items():
                print(f"| {d} | {c * 1e3:.3f} | {c / cpu['gateway gRPC']:.2f} |")
            print(f"\nthroughput, {args.threads} client threads, {args.seconds:g} s per door")
            print("| door | requests/s | / gRPC |")
            print("| --- | ---: | ---: |")
            rows = {}
            for d in DOORS:
                if d == "direct node" and not direct_ok:
                    continue
                rows[d] = throughput(doors, d, model, x, args.seconds, args.threads)
            for d, r in rows.items():
                print(f"| {d} | {r:.0f} | {r / rows['gateway gRPC']:.2f} |")
    finally:
        for ch in reversed(children):
            ch.stop()


if __name__ == "__main__":
    main()

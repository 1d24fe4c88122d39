#!/usr/bin/env python
"""Dynamic batching benchmark: PP-OCR rec and cls through the gateway, with and without
batching on the node, at 1, 4 and 16 concurrent clients.

Compiles both models with ``--max-batch 16`` (kept in ``--repo`` and reused; the
first run takes several minutes), starts a gateway (sample rate 0: this measures
the node) and one ``hyperinfer node``, twice: once with ``--no-batching`` and once
with batching (``--batch-window-us``). Same artifact both times. Prints
requests/s and p50/p99 latency per row and the ratio batched / unbatched, and
the batch sizes the node ran (from its log).

    python scripts/bench_batching.py [--seconds 8] [--clients 1 4 16] [--window-us 0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import HYPERINFER, Child, pct, read_line, wait_for  # noqa: E402

from hyperinfer import zoo  # noqa: E402
from hyperinfer.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc  # noqa: E402
from hyperinfer.transport.server import channel  # noqa: E402

TARGET = "cpu-x86_64-avx2"
MODELS = ("ppocr-cls", "ppocr-rec")

LAUNCHER = r"""
import sys
from pathlib import Path
from hyperinfer.gateway.app import EXTENSIONS, Gateway, install_extensions
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.oip_servicer import install
from hyperinfer.verify.sampling import SamplingPolicy

repo, tmp = Path(sys.argv[1]), Path(sys.argv[2])
gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp / "gateway.db", key=tmp / "gateway.key",
                           heartbeat_interval=0.5, max_workers=48, open_pool=True, audit_rate=0.0))
install_extensions(gw, tuple(e for e in EXTENSIONS if "oip_servicer" not in e))
install(gw, policy=SamplingPolicy(default_rate=0.0))
gw.start()
print("READY", gw.address, flush=True)
sys.stdin.read()
gw.stop(grace=1)
"""


def compile_models(repo: Path, max_batch: int) -> None:
    from hyperinfer.compile import compile_model
    from hyperinfer.package import ModelPackage

    paths = zoo.fetch_ppocr(names=MODELS)
    for name in MODELS:
        dest = repo / name / "1"
        if dest.is_dir():
            m = ModelPackage.open(dest).manifest
            if m.batch is not None and m.batch.max_batch == max_batch and TARGET in m.artifacts:
                print(f"reusing {dest} (batch sizes {', '.join(map(str, m.batch.sizes))})")
                continue
        t0 = time.perf_counter()
        shape = zoo.PPOCR[name].input_shape
        import onnx

        input_name = onnx.load(str(paths[name]), load_external_data=False).graph.input[0].name
        compile_model(paths[name], name, out_dir=repo, targets=[TARGET], input_shapes={input_name: shape},
                      progress=True, force=True, max_batch=max_batch, threads=os.cpu_count())
        print(f"compiled {name} with --max-batch {max_batch} in {time.perf_counter() - t0:.0f}s")


class Pool:
    def __init__(self, repo: Path, tmp: Path):
        self.tmp = tmp
        self.repo = repo
        tmp.mkdir(parents=True, exist_ok=True)
        self.gateway = Child("gateway", ["-c", LAUNCHER, str(repo), str(tmp)], tmp, stdin=subprocess.PIPE)
        line = read_line(self.gateway.proc, 60)
        if not line.startswith("READY"):
            raise SystemExit(f"gateway failed: {line}\n{self.gateway.log_path.read_text()[-2000:]}")
        self.address = line.split()[1]
        self.pool = pool_pb2_grpc.PoolStub(channel(self.address))
        self.node: Child | None = None
        self.runs = 0

    def start_node(self, batching: bool, window_us: int) -> Child:
        self.runs += 1
        flags = ["--batch-window-us", str(window_us)] if batching else ["--no-batching"]
        self.node = Child(f"node-{'batched' if batching else 'plain'}", [
            *HYPERINFER, "node", "--gateway", self.address, "--key", str(self.tmp / "node.key"),
            "--cache", str(self.tmp / "cache"), "--allow-unsigned", str(self.repo), "--device", "cpu", "--target", TARGET,
            "--max-concurrency", "32", "--grace", "1", *flags], self.tmp)
        wait_for(lambda: all(self.ready(m) for m in MODELS), 300, "the node to load both models")
        return self.node

    def ready(self, model: str) -> bool:
        status = self.pool.Status(pool_pb2.StatusRequest(), timeout=5)
        return any(m.name == model and m.ready_nodes >= 1 for m in status.models)

    def stop_node(self) -> None:
        self.node.stop()
        wait_for(lambda: not any(self.ready(m) for m in MODELS), 60, "the node to leave")

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        try:
            self.gateway.proc.stdin.close()
            self.gateway.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.gateway.stop()


def kernel_ratios(repo: Path, reps: int) -> None:
    """In one process, no gRPC: time per request of a batched entry point vs batch 1, called in
    turn (the ceiling of what batching can gain on this CPU, before any transport)."""
    from hyperinfer.package import ModelPackage
    from hyperinfer.runtime import TVMRunner

    print("\nper-request time of the batched entry points vs batch 1, in process (TVMRunner, "
          f"{os.cpu_count()} threads, median of {reps} calls each, called in turn)\n")
    print("| model | batch 1 ms | " + " | ".join(f"batch {k} ms/request" for k in (2, 4, 8, 16)) + " | best x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in MODELS:
        pkg = ModelPackage.open(repo / model / "1")
        runner = TVMRunner.for_package(pkg, TARGET, threads=os.cpu_count())
        shape = pkg.manifest.inputs[0].shape
        items = [{pkg.manifest.inputs[0].name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
                 for i in range(pkg.manifest.batch.max_batch)]
        sizes = [k for k in pkg.manifest.batch.sizes]
        times: dict[int, list[float]] = {k: [] for k in sizes}
        for k in sizes:  # warm-up
            runner.run_batch(items[:k], k) if k > 1 else runner.run(items[0])
        for _ in range(reps):
            for k in sizes:
                t0 = time.perf_counter()
                runner.run_batch(items[:k], k) if k > 1 else runner.run(items[0])
                times[k].append((time.perf_counter() - t0) / k)
        med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        best = max(med[1] / med[k] for k in sizes)
        print(f"| {model} | {med[1]:.2f} | " + " | ".join(f"{med[k]:.2f} (x{med[1] / med[k]:.2f})" if k in med else "–"
                                                       for k in (2, 4, 8, 16)) + f" | x{best:.2f} |")


def request(model: str, seed: int) -> pb.ModelInferRequest:
    shape = zoo.PPOCR[model].input_shape
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.parameters["verify"].string_param = "auto"
    req.inputs.add(name="x", datatype="FP32", shape=list(shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def load(address: str, model: str, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """(requests/s, latencies, errors) with ``clients`` closed-loop client threads."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(i: int) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(channel(address))
        req = request(model, i)
        stub.ModelInfer(req, timeout=60)  # warm the channel
        start.wait()
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                stub.ModelInfer(req, timeout=60)
                lat[i].append(time.perf_counter() - t0)
            except grpc.RpcError:
                errors[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + seconds + 0.05
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.perf_counter() - t0
    flat = [x for xs in lat for x in xs]
    return len(flat) / elapsed, flat, sum(errors)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path.home() / ".cache" / "hyperinfer" / "bench-batching",
                   help="where the batched packages are compiled (reused when present)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per row")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--window-us", type=int, default=0, help="the batched node's --batch-window-us")
    p.add_argument("--kernel-reps", type=int, default=15, help="calls per size in the in-process table (0: skip)")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    compile_models(args.repo, args.max_batch)
    if args.kernel_reps:
        kernel_ratios(args.repo, args.kernel_reps)
    tmp = Path(tempfile.mkdtemp(prefix="hyperinfer-bench-batching-"))
    pools: dict[str, Pool] = {}
    results: dict[tuple[str, str, int], tuple[float, list[float], int]] = {}
    sizes = ""
    try:
        for mode in ("unbatched", "batched"):
            pools[mode] = Pool(args.repo, tmp / mode)
            pools[mode].start_node(mode == "batched", args.window_us)
        for model in MODELS:
            for clients in args.clients:
                acc = {mode: [0.0, [], 0] for mode in pools}
                for mode in ("unbatched", "batched", "batched", "unbatched"):
                    rps, lat, err = load(pools[mode].address, model, clients, args.seconds / 2)
                    acc[mode][0] += rps * args.seconds / 2  # requests done
                    acc[mode][1] += lat
                    acc[mode][2] += err
                for mode, (done, lat, err) in acc.items():
                    results[(mode, model, clients)] = (done / args.seconds, lat, err)
                    print(f"   {mode:9s} {model:10s} {clients:3d} clients: {done / args.seconds:7.1f} req/s "
                          f"p50 {pct(lat, 50) * 1e3:7.2f} ms p99 {pct(lat, 99) * 1e3:7.2f} ms ({err} errors)",
                          flush=True)
        node = pools["batched"].node
        pools["batched"].stop_node()
        sizes = batch_sizes_from_log(node.log_path)
    finally:
        for pool in pools.values():
            pool.close()

    print(f"\nDynamic batching on one node ({TARGET}, --max-batch {args.max_batch}, "
          f"--batch-window-us {args.window_us}; gateway at sample rate 0; clients, gateway and node share "
          f"{os.cpu_count()} CPUs; {args.seconds:.0f}s per row)\n")
    print("| model | clients | unbatched req/s | batched req/s | throughput x | unbatched p50 / p99 ms "
          "| batched p50 / p99 ms | p50 x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in MODELS:
        for clients in args.clients:
            r0, l0, _ = results[("unbatched", model, clients)]
            r1, l1, _ = results[("batched", model, clients)]
            print(f"| {model} | {clients} | {r0:.1f} | {r1:.1f} | {r1 / r0:.2f} | "
                  f"{pct(l0, 50) * 1e3:.1f} / {pct(l0, 99) * 1e3:.1f} | {pct(l1, 50) * 1e3:.1f} / "
                  f"{pct(l1, 99) * 1e3:.1f} | {pct(l1, 50) / pct(l0, 50):.2f} |")
    if sizes:
        print(f"\nbatches the node ran (size: count): {sizes}")
    print(f"logs in {tmp}")
    return 0


def batch_sizes_from_log(path: Path) -> str:
    """The node logs its batch-size histogram per model when it unloads (see node/batching.py)."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if "batch sizes" in ln]
    return "; ".join(ln.split("batch sizes", 1)[1].strip() for ln in lines)


if __name__ == "__main__":
    sys.exit(main())

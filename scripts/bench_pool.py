#!/usr/bin/env python
"""Pool benchmark: what joining, downloading artifacts and serving through a node cost.

Starts (all on 127.0.0.1, every child killed at exit, also on Ctrl-C):

- ``hyperinfer gateway`` offering the MLP and (unless ``--quick``) PP-OCR cls and
  rec, compiled for cpu-x86_64 (compiled once into ``--work``; reruns reuse them),
- ``hyperinfer node`` processes, one after the other,

then prints, in one run:

1. join: for each node start (cold: new key, empty cache; warm: same key, cached
   artifacts), seconds from ``Popen`` to: Worker listening (its stdout line), its
   standard health service SERVING, listed healthy by the gateway (``Pool.Status``),
   every offered model loaded on the node (its stdout lines) and the gateway seeing
   them loaded (needs a heartbeat). Then the Join round trip itself
   (``Challenge`` + signed ``Join``), timed in this process with the node's own
   ``PoolClient.join``, repeated;
2. artifact download: ``Pool.FetchArtifact`` of each artifact, the raw stream alone
   and through the node's own code path (``PoolClient.fetch`` into
   ``ArtifactCache.get``: chunk checks, sha256, write, fsync, rename);
3. inference: ``hyperinfer.v1.Worker/Infer`` on the running node vs the same
   artifact run in this process (``TVMRunner``, same thread count, same inputs),
   vs the node's data plane run in this process (input checks, digests, Ed25519
   attestation: the node minus gRPC), and ONNX Runtime in this process for
   reference. Called in turn, call by call, so that load from other processes hits
   all of them alike.

Numbers depend on the machine and on what else runs on it: the script prints the
CPU count and load average first and last; ratios within one run are what matter.

    python scripts/bench_pool.py [--threads 1] [--requests 400] [--markdown FILE] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

TARGET = "cpu-x86_64"
WORKER_SERVICE = "hyperinfer.v1.Worker"
PPOCR_INFER = ("ppocr-cls", "ppocr-rec")


def log(msg: str) -> None:
    print(msg, flush=True)


def machine_line() -> str:
    return f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)"


# ---------------------------------------------------------------- children

# The `hyperinfer` command, run by this interpreter. It first asks Linux to SIGTERM it when
# this process dies (even by SIGKILL), and exits if that already happened. Done in the child
# after exec: a preexec_fn would force fork() in a process with live gRPC threads, whose
# atfork handlers can abort the forked child.
HYPERINFER = ["-c", """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.get("HYPERINFER_BENCH_PARENT", os.getppid())):
    sys.exit(1)
sys.argv[0] = "hyperinfer"
from hyperinfer.cli import entrypoint
entrypoint()
"""]


class Child:
    """A child process whose stdout lines are kept with the time they arrived."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="1000",
                        HYPERINFER_BENCH_PARENT=str(os.getpid()), **(env or {}))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=full_env)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path.with_suffix(".stdout"), "wb") as out:
            for raw in self.proc.stdout:
                t = time.perf_counter()
                out.write(raw)
                out.flush()
                with self._lock:
                    self.lines.append((t, raw.decode(errors="replace").rstrip()))

    def find(self, pattern: str) -> list[tuple[float, re.Match]]:
        rx = re.compile(pattern)
        with self._lock:
            lines = list(self.lines)
        return [(t, m) for t, line in lines if (m := rx.search(line))]

    def wait_line(self, pattern: str, timeout: float) -> tuple[float, re.Match]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.find(pattern)
            if hits:
                return hits[0]
            self.check_alive(f"a line matching {pattern!r}")
            time.sleep(0.02)
        raise SystemExit(f"{self.name}: timed out after {timeout:.0f}s waiting for {pattern!r}; log {self.log_path}")

    def check_alive(self, waiting_for: str) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{self.name} exited with {self.proc.returncode} while waiting for {waiting_for}:\n{tail}")

    def cpu_s(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        self._log.close()


# ---------------------------------------------------------------- statistics and tables

def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def md_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table with padded columns (readable as plain text too). ``align``: l/r per column."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                                 for c, w, a in zip(cells, widths, align)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def round_robin(fns: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (one call each per round) after a warm-up.

    Call by call, so that load from other processes hits every variant alike and the
    i-th samples of two variants can be compared pairwise (``paired``).
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t)
    return samples


def paired(a: list[float], b: list[float]) -> float:
    """Median of a[i] - b[i]: a difference that the machine's load swings mostly cancel out of."""
    return statistics.median(x - y for x, y in zip(a, b))


class TimedStub:
    """Wraps a gRPC stub and records how long each unary call took, per method."""

    def __init__(self, stub):
        self._stub = stub
        self.times: dict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name):
        fn = getattr(self._stub, name)

        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[name].append(time.perf_counter() - t)

        return call


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.tmp = Path(tempfile.mkdtemp(prefix="hyperinfer-bench-pool-"))
        self.children: list[Child] = []
        self.gateway: Child | None = None
        self.node: Child | None = None
        self.packages: dict = {}
        self.sections: list[tuple[str, str]] = []  # (title, markdown table + notes)
        self.models = ["mlp"] if args.quick else ["mlp", *PPOCR_INFER]

    # ------------------------------------------------------------ setup

    def compile_all(self) -> None:
        from hyperinfer import zoo
        from hyperinfer.compile import compile_model
        from hyperinfer.package import ModelPackage

        store = self.work / "packages"
        store.mkdir(parents=True, exist_ok=True)
        ppocr = [m for m in self.models if m in zoo.PPOCR]
        paths = {}
        if ppocr and not all((store / m / "1" / "manifest.json").is_file() for m in ppocr):
            log(f"fetching the PP-OCR ONNX models ({', '.join(ppocr)}) …")
            paths = zoo.fetch_ppocr(names=tuple(ppocr))
        for name in self.models:
            dest = store / name / "1"
            if (dest / "manifest.json").is_file():
                pkg = ModelPackage.open(dest)
                if TARGET in pkg.manifest.artifacts:
                    self.packages[name] = pkg
                    log(f"using compiled {name} from {dest}")
                    continue
            if name in zoo.PPOCR:
                src, shapes = paths[name], {"x": zoo.PPOCR[name].input_shape}
            else:
                src, shapes = zoo.build_small(name, self.work / "onnx")
            log(f"compiling {name} for {TARGET} (once; kept in {store}) …")
            t0 = time.perf_counter()
            self.packages[name] = compile_model(src, name, out_dir=store, targets=[TARGET], input_shapes=shapes,
                                                version=1, force=True, progress=True)
            log(f"compiled {name} in {time.perf_counter() - t0:.1f}s")
        # this run's repository: exactly the models of this run
        repo = self.tmp / "repo"
        for name, pkg in self.packages.items():
            shutil.copytree(pkg.path, repo / name / "1")
        self.repo = repo

    def start_gateway(self) -> None:
        self.gateway = Child("gateway", [*HYPERINFER, "gateway", "--repository", str(self.repo),
                                         "--listen", "127.0.0.1:0", "--db", str(self.tmp / "gateway.db"),
                                         "--key", str(self.tmp / "gateway.key"),
                                         "--heartbeat-interval", str(self.args.heartbeat_interval),
                                         "--sample-rate", "0", "--probation-jobs", "0", "--open-pool",
                                         "--audit-rate", "0"], self.tmp)
        self.children.append(self.gateway)
        _, m = self.gateway.wait_line(r"listening on (\S+)", 90)
        self.address = m.group(1)
        from hyperinfer.proto.v1 import pool_pb2_grpc
        from hyperinfer.transport.server import channel

        self.gw_channel = channel(self.address)
        self.pool = pool_pb2_grpc.PoolStub(self.gw_channel)
        log(f"gateway listening on {self.address} (heartbeat interval {self.args.heartbeat_interval:g}s)")

    def node_args(self, key: Path, cache: Path, operator: str) -> list[str]:
        return [*HYPERINFER, "node", "--gateway", self.address, "--listen", "127.0.0.1:0", "--key", str(key),
                "--operator", operator, "--cache", str(cache), "--allow-unsigned", str(self.repo), "--device", "cpu",
                "--threads", str(self.args.threads), "--max-concurrency", "4", "--grace", "1"]

    def close(self) -> None:
        for c in reversed(self.children):
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"stopping {c.name}: {e}", file=sys.stderr)
        self.children.clear()

    # ------------------------------------------------------------ 1. join

    def node_start(self, label: str, key: Path, cache: Path, keep: bool) -> dict[str, float]:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from hyperinfer.proto.v1 import pool_pb2
        from hyperinfer.transport.server import channel

        operator = f"bench-{label.replace(' ', '-')}"
        env = {"TVM_NUM_THREADS": str(self.args.threads), "TVM_BIND_THREADS": "0"}
        child = Child(f"node-{label.replace(' ', '-')}", self.node_args(key, cache, operator), self.tmp, env)
        self.children.append(child)
        t0 = child.t0
        marks: dict[str, float] = {}
        want = set(self.models)
        health = None
        deadline = time.monotonic() + self.args.start_timeout
        while time.monotonic() < deadline:
            child.check_alive(f"{label} to be ready")
            now = time.perf_counter()
            if "listening" not in marks:
                hits = child.find(r"node (\w+) listening on (\S+)")
                if hits:
                    t, m = hits[0]
                    marks["listening"] = t - t0
                    child.node_id, child.address = m.group(1), m.group(2)
                    health = health_pb2_grpc.HealthStub(channel(child.address))
            if health is not None and "health" not in marks:
                try:
                    r = health.Check(health_pb2.HealthCheckRequest(service=WORKER_SERVICE), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        marks["health"] = now - t0
                except grpc.RpcError:
                    pass
            if "joined" not in marks or "ready" not in marks:
                try:
                    status = self.pool.Status(pool_pb2.StatusRequest(), timeout=2)
                except grpc.RpcError:
                    status = None
                for n in status.nodes if status else ():
                    # by node id: a warm restart keeps the key, and the pool keeps the operator it first saw
                    if n.node_id == getattr(child, "node_id", None) and n.state == "healthy":
                        marks.setdefault("joined", now - t0)
                        if {m.name for m in n.loaded} >= want:
                            marks["ready"] = now - t0
            if "loaded" not in marks:
                loaded = child.find(r"loaded model ([\w.-]+)/")
                if {m.group(1) for _, m in loaded} >= want:
                    marks["loaded"] = max(t for t, _ in loaded) - t0
            if len(marks) == 5:
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"{label}: not ready within {self.args.start_timeout:.0f}s (got {marks}); "
                             f"log {child.log_path}")
        log(f"   {label:8s} listening {marks['listening']:5.2f}s  health {marks['health']:5.2f}s  "
            f"joined {marks['joined']:5.2f}s  loaded {marks['loaded']:5.2f}s  ready at gateway {marks['ready']:5.2f}s")
        if keep:
            self.node = child
        else:
            t = time.perf_counter()
            child.stop()
            self.children.remove(child)
            marks["stop"] = time.perf_counter() - t
        return marks

    def bench_starts(self) -> None:
        a = self.args
        log(f"\n1a. node starts ({', '.join(self.models)} offered; {a.starts} cold, {a.starts} warm)")
        rows = []
        key = self.tmp / "node.key"
        cache = self.tmp / "node-cache"
        results = []
        for i in range(a.starts):
            # cold: a new operator's first start, no key, nothing cached
            key.unlink(missing_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
            results.append((f"cold {i + 1}", self.node_start(f"cold {i + 1}", key, cache, keep=False)))
        for i in range(a.starts):
            # warm: a restart, same key, artifacts in the cache (re-hashed, not downloaded)
            last = i == a.starts - 1
            results.append((f"warm {i + 1}", self.node_start(f"warm {i + 1}", key, cache, keep=last)))
        for label, m in results:
            rows.append([label, f"{m['listening']:.2f}", f"{m['health']:.2f}", f"{m['joined']:.2f}",
                         f"{m['loaded']:.2f}", f"{m['ready']:.2f}", f"{m['ready'] - m['loaded']:.2f}"])
        table = md_table(["node start", "listening s", "health SERVING s", "joined (listed) s",
                          "models loaded s", "ready at gateway s", "waiting for heartbeat s"],
                         rows, "lrrrrrr")
        note = (f"Seconds from starting `hyperinfer node` ({'+'.join(self.models)} offered, --threads {a.threads}). "
                "cold: new key, empty cache (downloads every artifact); warm: same key, artifacts cached. "
                "listening: its Worker server is up (stdout); health: grpc.health.v1 SERVING; joined: the gateway "
                "lists it healthy; loaded: every model loaded (stdout); ready: the gateway sees them loaded, "
                f"i.e. after the next heartbeat (interval {a.heartbeat_interval:g}s).")
        self.sections.append(("Join: node start to ready", table + "\n\n" + note))

    def bench_join_rpc(self) -> None:
        from hyperinfer.node.dataplane import DataPlane
        from hyperinfer.node.devices import detect
        from hyperinfer.node.pool_client import JoinSpec, PoolClient
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        n = self.args.joins
        log(f"\n1b. Join round trip, in this process with the node's PoolClient, {n} times")
        hw = detect("cpu")
        key = Ed25519PrivateKey.generate()
        client = PoolClient(self.address, key, DataPlane(key, 4),
                            JoinSpec("bench-join-rpc", "127.0.0.1:9", hw.targets, hw.devices))
        timed = TimedStub(client.stub)
        client.stub = timed
        try:
            for _ in range(3):  # warm-up: channel connect, first-call paths
                client.join()
            timed.times.clear()
            totals = []
            for _ in range(n):
                t = time.perf_counter()
                client.join()
                totals.append(time.perf_counter() - t)
        finally:
            client.stop(leave=True)
        rows = []
        for label, xs in (("Challenge RPC", timed.times["Challenge"]), ("Join RPC (signed declaration)",
                                                                        timed.times["Join"]),
                          ("PoolClient.join (challenge + sign + join)", totals)):
            rows.append([label, f"{pct(xs, 50) * 1e3:.2f}", f"{pct(xs, 99) * 1e3:.2f}",
                         f"{statistics.fmean(xs) * 1e3:.2f}", str(len(xs))])
            log(f"   {label:44s} p50 {pct(xs, 50) * 1e3:7.2f} ms  p99 {pct(xs, 99) * 1e3:7.2f} ms")
        offers = len(self.packages)
        table = md_table(["step", "p50 ms", "p99 ms", "mean ms", "n"], rows, "lrrrr")
        note = (f"Same key each time (a re-join: the gateway verifies the Ed25519 signature, consumes the nonce, "
                f"writes the node to SQLite). The Join answer carries the {offers} offered manifest(s).")
        self.sections.append(("Join RPC round trip", table + "\n\n" + note))

    # ------------------------------------------------------------ 2. download

    def bench_download(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from hyperinfer.node.cache import ArtifactCache
        from hyperinfer.node.dataplane import DataPlane
        from hyperinfer.node.pool_client import JoinSpec, PoolClient
        from hyperinfer.proto.v1 import pool_pb2
        from hyperinfer.verify.operators import fetch_fields, sign_call

        reps = self.args.fetches
        log(f"\n2. artifact download over Pool.FetchArtifact, {reps} fetches each (raw stream, node code path)")
        key = Ed25519PrivateKey.generate()
        client = PoolClient(self.address, key, DataPlane(key, 4), JoinSpec("bench-fetch", "127.0.0.1:9", [TARGET]))
        client.join()  # the pool API is closed: only a joined node's signed calls get artifacts
        order = sorted(self.packages, key=lambda n: -self.packages[n].manifest.artifacts[TARGET].size)
        rows = []
        try:
            for name in order:
                m = self.packages[name].manifest
                info = m.artifacts[TARGET]
                req = pool_pb2.FetchArtifactRequest(model_name=name, model_version=m.version, target_id=TARGET,
                                                    sha256=info.sha256, offset=0)

                def raw() -> None:
                    got = chunks = 0
                    # signed as the node signs it (single use, so once per stream; ~0.1 ms)
                    md = sign_call(key, "FetchArtifact", client.gateway_id,
                                   fetch_fields(name, m.version, TARGET, info.sha256, 0))
                    for c in client.stub.FetchArtifact(req, timeout=300, metadata=md):
                        got += len(c.data)
                        chunks += 1
                    if got != info.size:
                        raise SystemExit(f"{name}: stream gave {got} bytes, manifest says {info.size}")

                def node_path() -> None:
                    root = self.tmp / "fetch-cache"
                    shutil.rmtree(root, ignore_errors=True)
                    cache = ArtifactCache(root, retries=0, progress=False)
                    path = cache.get(info.sha256, info.size, client.fetch(name, m.version, TARGET, info.sha256),
                                     label=f"{name}/{m.version} [{TARGET}]")
                    if path.stat().st_size != info.size:
                        raise SystemExit(f"{name}: cached file has the wrong size")

                raw()  # warm-up (the gateway hashes each artifact once before serving it)
                times = {"raw": [], "node": []}
                for i in range(reps):
                    for k, fn in (("raw", raw), ("node", node_path)):
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
                    if sys.stderr.isatty():
                        print(f"\r   {name}: fetch {i + 1}/{reps}", end="", file=sys.stderr, flush=True)
                if sys.stderr.isatty():
                    print("\r\033[K", end="", file=sys.stderr, flush=True)
                mb = info.size / 1e6
                r50, n50 = pct(times["raw"], 50), pct(times["node"], 50)
                rows.append([name, f"{mb:.2f}", f"{mb / r50:.3g}", f"{r50 * 1e3:.1f}", f"{mb / n50:.3g}",
                             f"{n50 * 1e3:.1f}", f"{n50 / r50:.2f}", str(reps)])
                log(f"   {name:10s} {mb:6.2f} MB  raw {mb / r50:6.0f} MB/s ({r50 * 1e3:6.1f} ms)   "
                    f"node path {mb / n50:6.0f} MB/s ({n50 * 1e3:6.1f} ms)")
        finally:
            client.stop(leave=False)
            shutil.rmtree(self.tmp / "fetch-cache", ignore_errors=True)
        table = md_table(["artifact", "MB", "raw stream MB/s", "raw ms", "node path MB/s", "node path ms",
                          "node / raw", "fetches"], rows, "lrrrrrrr")
        note = ("p50 over the fetches; 1 MiB chunks; raw: iterate the stream; node path: PoolClient.fetch into "
                "ArtifactCache.get (chunk checks, sha256, write to a .part file, fsync, rename), empty cache each time.")
        self.sections.append(("Artifact download (FetchArtifact)", table + "\n\n" + note))

    # ------------------------------------------------------------ 3. inference

    def worker_auth(self, gateway_key):
        """``fields -> metadata`` for Worker calls to the node as the gateway makes them: a session
        HMAC when the node agreed one at its last join (its X25519 key in the gateway's store), else
        an Ed25519 signature."""
        import sqlite3

        from hyperinfer.verify.operators import sign_call
        from hyperinfer.verify.session import gateway_session, mac_call
        from hyperinfer.verify.signing import key_id

        node_id = self.node.node_id
        db = sqlite3.connect(f"file:{self.tmp / 'gateway.db'}?mode=ro", uri=True)
        row = db.execute("SELECT kx_public_key, kx_gateway FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        db.close()
        if row and row[0] and row[1] == key_id(gateway_key):
            session = gateway_session(gateway_key, node_id, bytes(row[0]))
            return lambda fields: mac_call(session, "Infer", fields)
        return lambda fields: sign_call(gateway_key, "Infer", node_id, fields)

    def bench_infer(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from hyperinfer.identity import load_key
        from hyperinfer.node.dataplane import DataPlane, LoadedModel
        from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
        from hyperinfer.runtime import ORTRunner, TVMRunner, configure_threads
        from hyperinfer.verify.operators import infer_fields
        from hyperinfer.transport import tensors
        from hyperinfer.transport.server import channel

        a = self.args
        configure_threads(a.threads)
        stub = pool_pb2_grpc.WorkerStub(channel(self.node.address))
        gateway_key = load_key(self.tmp / "gateway.key")
        auth = self.worker_auth(gateway_key)
        key = Ed25519PrivateKey.generate()
        rows, notes = [], []
        log(f"\n3. inference: node Worker/Infer vs in-process, {a.threads} thread(s) each")
        for name in self.models:
            pkg = self.packages[name]
            m = pkg.manifest
            n = a.requests if name == "mlp" else a.ppocr_requests
            ref_inputs, _ = pkg.load_reference()
            x = ref_inputs[0]
            runner = TVMRunner.for_package(pkg, TARGET, threads=a.threads)
            dp = DataPlane(key, 4)
            dp.add(LoadedModel(m, TARGET, m.artifacts[TARGET].sha256, runner))
            ort = ORTRunner.for_package(pkg, threads=a.threads)
            req = pool_pb2.InferRequest(model_name=name, model_version=m.version, inputs=tensors.many_to_proto(x))

            def node_call():
                req.request_id = uuid.uuid4().hex  # as the gateway does
                # nodes serve only their gateway's calls: authenticated here as the gateway does (session HMAC)
                md = auth(infer_fields(req.request_id, name, m.version))
                resp = stub.Infer(req, timeout=60, metadata=md)
                return tensors.many_from_proto(resp.outputs), resp

            # same artifact, same input: the node's answer must be bit-identical to ours
            got, resp = node_call()
            mine = runner.run(x)
            same = all(np.array_equal(got[o.name], mine[o.name]) for o in m.outputs)
            resp_bytes = resp.ByteSize()
            req_bytes = req.ByteSize()
            res = dp.infer("r" * 32, name, 0, x)

            def protobuf_steps():
                # what the node and its client do with protobuf beyond the data plane
                inputs = tensors.many_from_proto(pool_pb2.InferRequest.FromString(req_bytes_s).inputs)
                body = pool_pb2.InferResponse(outputs=tensors.many_to_proto(res.outputs), attestation=res.attestation,
                                              signature=res.signature).SerializeToString()
                tensors.many_from_proto(pool_pb2.InferResponse.FromString(body).outputs)
                return inputs

            req_bytes_s = req.SerializeToString()
            fns = {
                "tvm": lambda: runner.run(x),
                "dataplane": lambda: dp.infer(uuid.uuid4().hex, name, 0, x),
                "node": node_call,
                "protobuf": protobuf_steps,
                "ort": lambda: ort.run(x),
            }
            log(f"   {name}: {n} rounds of one call each, in turn …")
            cpu0 = self.node.cpu_s()
            s = round_robin(fns, n, a.warmup)
            node_cpu = (self.node.cpu_s() - cpu0) / (n + a.warmup) * 1e3
            p50 = {k: pct(v, 50) * 1e3 for k, v in s.items()}
            p99 = {k: pct(v, 99) * 1e3 for k, v in s.items()}
            shape = ";".join("x".join(str(d) for d in spec.shape) for spec in m.inputs)
            overhead = paired(s["node"], s["tvm"]) * 1e3
            dataplane_part = paired(s["dataplane"], s["tvm"]) * 1e3
            proto_part = p50["protobuf"]
            grpc_part = paired(s["node"], s["dataplane"]) * 1e3 - proto_part
            ratio = statistics.median(x / y for x, y in zip(s["node"], s["tvm"]))
            ort_ratio = statistics.median(x / y for x, y in zip(s["tvm"], s["ort"]))
            rows.append([name, shape, f"{p50['tvm']:.3f}", f"{p99['tvm']:.3f}", f"{p50['dataplane']:.3f}",
                         f"{p50['node']:.3f}", f"{p99['node']:.3f}", f"{ratio:.2f}",
                         f"{overhead:.3f}", f"{dataplane_part:.3f}", f"{proto_part:.3f}", f"{grpc_part:.3f}",
                         f"{node_cpu:.2f}", f"{p50['ort']:.3f}", f"{ort_ratio:.2f}",
                         f"{req_bytes / 1e3:.1f} / {resp_bytes / 1e3:.1f}", "yes" if same else "NO"])
            log(f"   {name:10s} in-process TVM p50 {p50['tvm']:8.3f} ms  node p50 {p50['node']:8.3f} ms  "
                f"x{ratio:.2f}  (+{overhead:.3f} ms: data plane {dataplane_part:.3f}, "
                f"protobuf {proto_part:.3f}, gRPC rest {grpc_part:.3f})  ORT {p50['ort']:.3f} ms")
            if not same:
                notes.append(f"{name}: the node's outputs differ from the in-process run of the same artifact!")
        header = ["model", "input", "TVM in-process p50 ms", "p99 ms", "node data plane in-process p50 ms",
                  "node Worker/Infer p50 ms", "p99 ms", "node / in-process", "overhead p50 ms",
                  "of which checks+digests+signing ms", "protobuf+tensor copies ms", "gRPC rest ms",
                  "node CPU ms/req", "ORT in-process p50 ms", "TVM / ORT", "request / response kB",
                  "bit-identical"]
        table = md_table(header, rows, "llrrrrrrrrrrrrrrl")
        note = (f"{a.threads} thread(s) for TVM in the node (--threads, TVM_NUM_THREADS) and in this process "
                f"(configure_threads), ONNX Runtime intra-op threads {a.threads}; same input (the package's first "
                "reference sample). The variants are called in turn, one call each per round; ratios and "
                "differences are medians of the per-round pairs (robust to load swings), so they need not equal "
                "the ratio of the p50 columns. overhead = node - in-process TVM; split into the node's data plane (input checks, sha256 digests of inputs and "
                "outputs, Ed25519 attestation; timed in this process), protobuf encode/decode and tensor copies on "
                "both sides (timed in this process), and the rest (gRPC client + server, thread hand-offs, "
                "loopback TCP). node CPU: CPU time of the node process per Worker/Infer call.")
        self.sections.append(("Inference: node vs in-process", table + "\n\n" + note + "".join(f"\n\n{x}" for x in notes)))

    # ------------------------------------------------------------ all

    def run(self) -> str:
        a = self.args
        start_line = machine_line()
        log(f"machine: {start_line}")
        log(f"work dir {self.work}; this run's files in {self.tmp}")
        self.compile_all()
        self.start_gateway()
        self.bench_starts()
        self.bench_join_rpc()
        self.bench_download()
        self.bench_infer()
        end_line = machine_line()
        md = [f"# hyperinfer pool benchmark{' (--quick)' if a.quick else ''}", "",
              f"Machine: {start_line} at start; {end_line} at the end. Target {TARGET}, 127.0.0.1, "
              f"gateway + node + this client share the machine.", ""]
        for title, body in self.sections:
            md += [f"## {title}", "", body, ""]
        return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="TVM threads in the node and in this process; ORT threads")
    p.add_argument("--requests", type=int, default=400, help="timed calls per runtime for the MLP")
    p.add_argument("--ppocr-requests", type=int, default=60, help="timed calls per runtime for PP-OCR models")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each block")
    p.add_argument("--joins", type=int, default=50, help="Join round trips")
    p.add_argument("--fetches", type=int, default=5, help="downloads per artifact and path")
    p.add_argument("--starts", type=int, default=2, help="cold and warm node starts (each)")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="gateway heartbeat interval (s)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds a node start may take")
    p.add_argument("--work", default=str(ROOT / ".hyperinfer" / "bench-pool"),
                   help="where compiled packages are kept between runs")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown to this file")
    p.add_argument("--quick", action="store_true", help="smoke run: MLP only, few repetitions")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.quick:
        args.requests = min(args.requests, 60)
        args.joins = min(args.joins, 10)
        args.fetches = min(args.fetches, 2)
        args.starts = 1
        args.heartbeat_interval = min(args.heartbeat_interval, 1.0)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    b = Bench(args)
    t0 = time.perf_counter()
    try:
        md = b.run()
    except KeyboardInterrupt:
        print("\ninterrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        b.close()
    print()
    print(md)
    if args.markdown:
        args.markdown.write_text(md + "\n")
        print(f"\nwrote {args.markdown}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; logs in {b.tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Gateway benchmark: what the Open Inference Protocol front door and verification cost.

Starts (all on 127.0.0.1, every child killed at exit):

- a gateway in a child process (the same Gateway + OIP install as ``hyperinfer
  gateway``, with a sample rate this script can change through the child's stdin),
- four ``hyperinfer node`` processes of different operators, serving the MLP
  and PP-OCRv4 det compiled for cpu-x86_64 with TVM,

then prints, in one run:

1. latency p50/p99, sequential, direct to a node (``hyperinfer.v1.Worker/Infer``)
   vs a zero-logic gRPC proxy vs through the gateway (OIP ModelInfer, raw
   contents) in auto/sync/always, and the gateway's own cost (gateway - proxy,
   target <= 0.5 ms at p50 in auto);
   1b. the same gateway with session HMACs and with Ed25519 signatures on its Worker calls,
   in alternating blocks (what the session saves end to end);
2. PP-OCR det direct / through a zero-logic proxy / through the gateway, at p50 (target <=
   1.03) with each process's CPU per request, at the sample rate and at rate 0; in rounds
   that call the node the gateway picked directly and through a proxy in front of it;
3. verification compute vs sample rate: node CPU per request, gateway CPU per
   request and validator runs per request, for several rates (mode auto);
4. throughput (requests/s, several client threads) with 4, 2 and 1 nodes, with one gateway
   process and with ``--workers`` processes on the same port and store;
5. what the gateway's own steps cost, timed in this process (where the added
   latency goes: an extra gRPC hop, one Ed25519 verify, one Ed25519 signature, the Worker
   call's session HMAC);
6. with ``--batching``: dynamic batching on PP-OCR rec and cls (scripts/bench_batching.py).

The client is hyperinfer's own OIP stub (the same messages tritonclient sends,
without its Python wrapper's cost). Numbers depend on the machine and on what
else runs on it: the script prints the CPU count and load average first.

    python scripts/bench_gateway.py [--requests 500] [--seconds 4] [--threads 4] [--workers 2] [--batching]
                                    [--rows 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import psutil

from hyperinfer import zoo
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
from hyperinfer.proto.v1 import pool_pb2, pool_pb2_grpc
from hyperinfer.transport import tensors
from hyperinfer.transport.server import channel

TARGET = "cpu-x86_64"
HYPERINFER = ["-c", "from hyperinfer.cli import entrypoint; entrypoint()"]  # the CLI, without PATH

# the gateway child: the extensions `hyperinfer gateway` installs, with a settable sample rate
LAUNCHER = r"""
import logging, multiprocessing, sys, threading, time
from dataclasses import replace
from pathlib import Path
import psutil
from hyperinfer.gateway.app import EXTENSIONS, Gateway, _worker_main, install_extensions, stop_workers
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.oip_servicer import install
from hyperinfer.verify.sampling import SamplingPolicy

repo, tmp, rate, most = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
# workers > 1: the store is shared and the port reusable from the start, as with `--workers N`;
# the other worker processes start and stop on command (`workers K`)
config = GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp / "gateway.db", key=tmp / "gateway.key",
                       heartbeat_interval=0.5, sample_rate=rate, workers=most, http_listen="off",
                       metrics_listen="off", open_pool=True, audit_rate=0.0)
gw = Gateway(config)
# `auth signed` / `auth session`: the A/B row makes the gateway sign its Worker calls (the fallback)
# or MAC them with the node's session (the default), without restarting anything
from hyperinfer.gateway.worker_client import GrpcWorkerClient
auth, session_of = ["session"], GrpcWorkerClient._session
GrpcWorkerClient._session = lambda self, node: session_of(self, node) if auth[0] == "session" else None
# alone, it runs as a default gateway (rows 1-3); shared-store reads only while others run
gw.store.shared = gw.registry.shared = False
install_extensions(gw, tuple(e for e in EXTENSIONS if "oip_servicer" not in e))
policy = SamplingPolicy(default_rate=rate)
oip = install(gw, policy=policy)
gw.start()
print("READY", gw.address, flush=True)
port, workers = int(gw.address.rpartition(":")[2]), []
listening = lambda pid: port in {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                                 if c.status == "LISTEN"}
for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "rate":
        policy.default_rate = float(cmd[1])
        print("OK", flush=True)
    elif cmd and cmd[0] == "settle":  # the background checks started so far are over
        print("OK" if oip.dataplane.verifier.wait(120) else "TIMEOUT", flush=True)
    elif cmd and cmd[0] == "auth":
        auth[0] = cmd[1]
        print("OK", flush=True)
    elif cmd and cmd[0] == "workers":
        stop_workers(workers)
        workers = []
        gw.store.shared = gw.registry.shared = int(cmd[1]) > 1
        for i in range(1, int(cmd[1])):
            c = replace(config, listen=gw.address, worker_index=i, sample_rate=policy.default_rate)
            w = multiprocessing.get_context("spawn").Process(target=_worker_main, args=(c, logging.WARNING))
            w.start()
            workers.append(w)
        deadline = time.monotonic() + 120
        while not all(listening(w.pid) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # their registries read the nodes from the store (0.5 s cache)
        print("OK", flush=True)
stop_workers(workers)
gw.stop(grace=1)
"""


# a reference point: a Python gRPC server that forwards Worker/Infer bytes to a node and does
# nothing else (same grpcio, same machine). What it adds is the price of one more Python hop.
PROXY = r"""
import sys
from concurrent import futures
import grpc
ident = lambda b: b
big = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]  # det: 4.9 MB in
node = grpc.insecure_channel(sys.argv[1], options=big)
forward = node.unary_unary("/hyperinfer.v1.Worker/Infer", request_serializer=ident, response_deserializer=ident)
server = grpc.server(futures.ThreadPoolExecutor(16), options=big)
# the gateway's call proof (session MAC or signature) travels on (nodes serve only their gateways)
signed = lambda ctx: [(k, v) for k, v in ctx.invocation_metadata() if k.startswith("x-hyperinfer-")]
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hyperinfer.v1.Worker", {
    "Infer": grpc.unary_unary_rpc_method_handler(lambda req, ctx: forward(req, timeout=30, metadata=signed(ctx)),
                                                 request_deserializer=ident, response_serializer=ident)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("READY", f"127.0.0.1:{port}", flush=True)
sys.stdin.read()
"""


class Child:
    def __init__(self, name: str, args: list[str], log_dir: Path, stdin=subprocess.DEVNULL):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE if stdin == subprocess.PIPE
                                     else self._log, stderr=self._log, stdin=stdin, env=env,
                                     text=stdin == subprocess.PIPE)
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        raise SystemExit(f"gateway did not answer within {timeout:.0f}s")
    return box[0].strip()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def fmt_ms(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50) * 1e3:7.3f} ms   p99 {pct(xs, 99) * 1e3:7.3f} ms   mean {statistics.fmean(xs) * 1e3:7.3f} ms"


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="hyperinfer-bench-"))
        self.children: list[Child] = []
        self.x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        from hyperinfer.compile import compile_model

        repo = self.tmp / "repo"
        src, shapes = zoo.build_small("mlp", self.tmp / "onnx")
        t0 = time.perf_counter()
        compile_model(src, name="mlp", out_dir=repo, targets=[TARGET], input_shapes=shapes, version=1,
                      progress=False, threads=1)
        print(f"compiled mlp for {TARGET} in {time.perf_counter() - t0:.1f}s")
        if self.args.det_requests:
            self.det_package(repo)
        self.gateway = Child("gateway", ["-c", LAUNCHER, str(repo), str(self.tmp), str(self.args.rate),
                                         str(self.args.workers)],
                             self.tmp, stdin=subprocess.PIPE)
        self.children.append(self.gateway)
        line = read_line(self.gateway.proc, 60)
        if not line.startswith("READY"):
            raise SystemExit(f"gateway failed: {line}\n{self.gateway.log_path.read_text()[-2000:]}")
        self.address = line.split()[1]
        self.nodes = []
        for i in range(self.args.nodes):
            n = Child(f"node{i}", [*HYPERINFER, "node", "--gateway", self.address,
                                   "--key", str(self.tmp / f"node{i}.key"), "--operator", f"operator{i}",
                                   "--cache", str(self.tmp / f"cache{i}"), "--allow-unsigned", str(repo), "--device", "cpu",
                                   "--threads", "1", "--max-concurrency", "8", "--grace", "1"], self.tmp)
            self.children.append(n)
            self.nodes.append(n)
        self.gw_channel = channel(self.address)
        self.oip = pb_grpc.GRPCInferenceServiceStub(self.gw_channel)
        self.pool = pool_pb2_grpc.PoolStub(self.gw_channel)
        wait_for(lambda: self.ready_nodes() == len(self.nodes)
                 and (not self.args.det_requests or self.ready_nodes("ppocr-det") == len(self.nodes)),
                 300, "every node to load its models")
        status = self.pool.Status(pool_pb2.StatusRequest(), timeout=5)
        self.node_addresses = [n.address for n in status.nodes if n.state == "healthy"]
        self.node_ids = {n.address: n.node_id for n in status.nodes if n.state == "healthy"}

    def ready_nodes(self, model: str = "mlp") -> int:
        status = self.pool.Status(pool_pb2.StatusRequest(), timeout=5)
        return next((m.ready_nodes for m in status.models if m.name == model), 0)

    def det_package(self, repo: Path) -> None:
        """PP-OCRv4 det for TARGET, compiled once into a cache folder and linked into the repository."""
        from hyperinfer.compile import compile_model
        from hyperinfer.package import ModelPackage

        cache = Path.home() / ".cache" / "hyperinfer" / "bench-gateway"
        dest = cache / "ppocr-det" / "1"
        if not (dest.is_dir() and TARGET in ModelPackage.open(dest).manifest.artifacts):
            t0 = time.perf_counter()
            src = zoo.fetch_ppocr(names=("ppocr-det",))["ppocr-det"]
            compile_model(src, name="ppocr-det", out_dir=cache, targets=[TARGET], version=1, force=True,
                          input_shapes={"x": zoo.PPOCR["ppocr-det"].input_shape}, progress=False)
            print(f"compiled ppocr-det for {TARGET} in {time.perf_counter() - t0:.1f}s")
        (repo / "ppocr-det").symlink_to(cache / "ppocr-det", target_is_directory=True)
        self.det_x = np.random.default_rng(1).random(zoo.PPOCR["ppocr-det"].input_shape, dtype=np.float32)

    def set_rate(self, p: float) -> None:
        self.gateway.proc.stdin.write(f"rate {p}\n")
        self.gateway.proc.stdin.flush()
        if read_line(self.gateway.proc, 10) != "OK":
            raise SystemExit("gateway did not take the new rate")

    def set_auth(self, mode: str) -> None:
        """How the gateway authenticates its Worker calls: ``session`` (HMAC) or ``signed`` (Ed25519)."""
        self.gateway.proc.stdin.write(f"auth {mode}\n")
        self.gateway.proc.stdin.flush()
        if read_line(self.gateway.proc, 10) != "OK":
            raise SystemExit("gateway did not take the auth mode")

    def set_workers(self, k: int) -> None:
        """k gateway processes on the gateway's port (1: the launcher's own only)."""
        self.gateway.proc.stdin.write(f"workers {k}\n")
        self.gateway.proc.stdin.flush()
        if read_line(self.gateway.proc, 150) != "OK":
            raise SystemExit(f"gateway did not start {k} worker processes")

    def close(self) -> None:
        for c in reversed(self.children):
            if c is self.gateway and c.proc.poll() is None:
                try:
                    c.proc.stdin.close()
                    c.proc.wait(15)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            c.stop()

    # ------------------------------------------------------------ calls

    def oip_request(self, mode: str, model: str = "mlp") -> pb.ModelInferRequest:
        x = self.x if model == "mlp" else self.det_x
        req = pb.ModelInferRequest(model_name=model)
        req.parameters["verify"].string_param = mode
        req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        return req

    def via_gateway(self, mode: str, n: int, stub=None, model: str = "mlp") -> list[float]:
        stub = stub or self.oip
        req = self.oip_request(mode, model)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            stub.ModelInfer(req, timeout=30)
            times.append(time.perf_counter() - t0)
        return times

    def worker_auth(self, node_id: str):
        """``fields -> metadata`` for a Worker call to ``node_id``, authenticated as the gateway does:
        an HMAC with the session the node agreed at join (read from the gateway's store), else an
        Ed25519 signature (a gateway without sessions). The node checks either way: the direct and
        proxy rows pay the node's check as the gateway's calls do."""
        cache = self.__dict__.setdefault("auth", {})
        if node_id not in cache:
            import sqlite3

            from hyperinfer.identity import load_key
            from hyperinfer.verify.operators import sign_call
            from hyperinfer.verify.signing import key_id

            key = load_key(self.tmp / "gateway.key")
            db = sqlite3.connect(f"file:{self.tmp / 'gateway.db'}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT kx_public_key, kx_gateway FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            except sqlite3.OperationalError:  # a gateway without Worker-call sessions (no such columns)
                row = None
            db.close()
            if row and row[0] and row[1] == key_id(key):
                from hyperinfer.verify.session import gateway_session, mac_call

                session = gateway_session(key, node_id, bytes(row[0]))
                cache[node_id] = ("session HMAC", lambda fields: mac_call(session, "Infer", fields))
            else:
                cache[node_id] = ("Ed25519 signature", lambda fields: sign_call(key, "Infer", node_id, fields))
        return cache[node_id]

    def worker_stub(self, address: str) -> pool_pb2_grpc.WorkerStub:
        """One channel per address for the whole run, as the gateway keeps one per node."""
        stubs = self.__dict__.setdefault("stubs", {})
        if address not in stubs:
            stubs[address] = pool_pb2_grpc.WorkerStub(channel(address))
        return stubs[address]

    def worker_request(self, model: str) -> pool_pb2.InferRequest:
        requests = self.__dict__.setdefault("requests", {})
        if model not in requests:
            x = self.x if model == "mlp" else self.det_x
            requests[model] = pool_pb2.InferRequest(model_name=model, model_version=1,
                                                    inputs=tensors.many_to_proto({"x": x}))
        return requests[model]

    def direct(self, n: int, address: str | None = None, model: str = "mlp", node: str | None = None) -> list[float]:
        """``n`` Worker/Infer calls to ``address``: node ``node`` (default: the first node) or a
        proxy in front of it."""
        from hyperinfer.verify.operators import infer_fields

        node = node or self.node_addresses[0]
        stub = self.worker_stub(address or node)
        req = self.worker_request(model)
        auth = self.worker_auth(self.node_ids[node])[1]
        times = []
        for _ in range(n):
            req.request_id = uuid.uuid4().hex  # as the gateway does
            # authenticated as the gateway's Worker calls are (nodes serve only those), before the clock starts
            metadata = auth(infer_fields(req.request_id, model, 1))
            t0 = time.perf_counter()
            stub.Infer(req, timeout=30, metadata=metadata)
            times.append(time.perf_counter() - t0)
        return times

    def start_proxy(self, node: str | None = None) -> str:
        """A zero-logic proxy in front of ``node`` (default: the first node); one per node."""
        node = node or self.node_addresses[0]
        proxies = self.__dict__.setdefault("proxies", {})
        if node not in proxies:
            proxy = Child(f"proxy{len(proxies)}", ["-c", PROXY, node], self.tmp, stdin=subprocess.PIPE)
            self.children.append(proxy)
            line = read_line(proxy.proc, 30)
            if not line.startswith("READY"):
                raise SystemExit(f"proxy failed: {line}\n{proxy.log_path.read_text()[-2000:]}")
            proxies[node] = (line.split()[1], proxy)
        return proxies[node][0]

    def proxy_child(self, node: str) -> Child:
        return self.__dict__["proxies"][node][1]

    def settle(self) -> None:
        """Wait until the gateway's background checks are over."""
        self.gateway.proc.stdin.write("settle\n")
        self.gateway.proc.stdin.flush()
        if read_line(self.gateway.proc, 130) != "OK":
            raise SystemExit("the gateway's background checks did not finish")

    def interleaved(self, calls: dict, n: int) -> dict[str, list[float]]:
        """n timed calls of each, in turn (call by call), so load from other processes hits all alike."""
        out: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(n):
            for k, fn in calls.items():
                out[k] += fn(1)
        return out

    def throughput(self, seconds: float, threads: int) -> tuple[float, int]:
        stop = time.monotonic() + seconds
        counts = [0] * threads
        errors = [0] * threads

        def work(i: int) -> None:
            # a connection per thread (not one shared subchannel): with several gateway processes
            # the kernel spreads connections, not requests, over them
            ch = channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            req = self.oip_request("auto")
            while time.monotonic() < stop:
                try:
                    stub.ModelInfer(req, timeout=30)
                    counts[i] += 1
                except grpc.RpcError:
                    errors[i] += 1

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join(seconds + 60)
        return sum(counts) / (time.perf_counter() - t0), sum(errors)

    def steps(self, n: int = 2000) -> None:
        """Per-request steps of the gateway, timed here on this machine."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from hyperinfer.gateway import converters
        from hyperinfer.gateway.dataplane import InferResponse, OutputTensor, check_inputs
        from hyperinfer.package import ModelPackage
        from hyperinfer.verify.attestation import Attestation, verify_attestation
        from hyperinfer.verify.digest import tensors_digest
        from hyperinfer.verify.receipt import Receipt, receipt_to_json, sign_receipt
        from hyperinfer.verify.operators import infer_fields, sign_call
        from hyperinfer.verify.session import Session, mac_call
        from hyperinfer.verify.signing import key_id, public_bytes

        m = ModelPackage.open(self.tmp / "repo" / "mlp" / "1").manifest
        node, gw = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        y = {"probs": np.full((1, 10), 0.1, np.float32)}
        att = Attestation(uuid.uuid4().hex, "mlp", 1, TARGET, "0" * 64, tensors_digest(["x"], {"x": self.x}),
                          tensors_digest(["probs"], y), key_id(node), int(time.time() * 1000))
        data, sig = att.sign(node)
        pub = public_bytes(node)
        gw_id = key_id(gw)  # the gateway computes its id once
        receipt = sign_receipt(gw, Receipt(att.request_id, "mlp", 1, key_id(node), pub, data, sig, "unchecked", "",
                                           int(time.time() * 1000)))
        session = Session("00" * 16, gw_id, key_id(node), os.urandom(32))
        req = self.oip_request("auto")
        resp = InferResponse("mlp", "1", "", [OutputTensor("probs", "FP32", y["probs"])],
                             {"hyperinfer.receipt": receipt_to_json(receipt)})

        def decode():
            check_inputs(m, converters.request_from_proto(req).inputs)

        rows = [
            ("decode + check the OIP request", decode),
            ("input digest (sha256)", lambda: tensors_digest(["x"], {"x": self.x})),
            ("pool request/response tensors", lambda: tensors.many_from_proto(tensors.many_to_proto(y))),
            ("sign the Worker call (Ed25519: fallback)", lambda: sign_call(gw, "Infer", key_id(node),
                                                                infer_fields(att.request_id, "mlp", 1))),
            ("MAC the Worker call (session HMAC)", lambda: mac_call(session, "Infer",
                                                                   infer_fields(att.request_id, "mlp", 1))),
            ("verify the attestation (Ed25519)", lambda: verify_attestation(pub, data, sig)),
            ("sign the receipt (Ed25519 + JSON)", lambda: sign_receipt(gw, receipt, gw_id)),
            ("receipt to JSON", lambda: receipt_to_json(receipt)),
            ("encode the OIP response", lambda: converters.response_to_proto(resp).SerializeToString()),
        ]
        total = 0.0
        for label, fn in rows:
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            us = (time.perf_counter() - t0) / n * 1e6
            total += 0.0 if "fallback" in label else us
            print(f"   {label:41s} {us:8.1f} us")
        print(f"   {'sum (without the fallback)':41s} {total:8.1f} us  (plus a Python gRPC server hop and a client "
              "call to the node)")

    def jobs(self) -> int:
        status = self.pool.Status(pool_pb2.StatusRequest(), timeout=5)
        return sum(n.jobs for n in status.nodes)

    # ------------------------------------------------------------ phases

    def det_statistics(self) -> dict[str, int]:
        """The gateway's cumulative ModelStatistics of ppocr-det (Triton's shape), in ns."""
        st = self.oip.ModelStatistics(pb.ModelStatisticsRequest(name="ppocr-det"), timeout=10).model_stats[0]
        i = st.inference_stats
        return {"count": i.success.count, "queue": i.queue.ns, "input": i.compute_input.ns,
                "call": i.compute_infer.ns, "output": i.compute_output.ns}

    def det_gateway_call(self) -> tuple[float, str, str]:
        """One PP-OCR det request through the gateway: (seconds, the node that ran it, receipt status)."""
        req = self.__dict__.get("det_oip")
        if req is None:
            req = self.det_oip = self.oip_request("auto", "ppocr-det")
        t0 = time.perf_counter()
        resp = self.oip.ModelInfer(req, timeout=30)
        seconds = time.perf_counter() - t0
        receipt = json.loads(resp.parameters["hyperinfer.receipt"].string_param)
        return seconds, self.node_addresses_by_id[receipt["node_id"]], receipt["status"]

    def det_rows(self, k: int) -> None:
        """Row 2: PP-OCR det direct / through a zero-logic proxy / through the gateway, on the same node,
        at the sample rate and at rate 0.

        Each round calls the gateway first; its receipt names the node that ran the request, and
        that round's direct and proxy calls (in alternating order) go to the same node: the rows
        compare like with like, not the gateway's pick of four nodes against one fixed node (on a
        shared host the nodes' speeds differ by several percent). A request the gateway sampled
        starts a validator run in the background; the round waits for it to end before its next
        timed call (in a real pool the validator is another operator's machine; here it would
        share the two cores with whichever call came next)."""
        self.node_addresses_by_id = {v: a for a, v in self.node_ids.items()}
        for node in self.node_addresses:  # warm: a proxy and a channel per node, every node's det
            self.start_proxy(node)
            self.direct(1, model="ppocr-det", node=node)
            self.direct(1, self.start_proxy(node), model="ppocr-det", node=node)
        for _ in range(3):
            self.det_gateway_call()
        self.settle()
        names = ("direct to node", "zero-logic proxy", "gateway verify=auto")
        for rate, label in ((self.args.rate, f"sample rate {self.args.rate}"),
                            (0.0, "sample rate 0 (no validator runs)")):
            self.set_rate(rate)
            time.sleep(0.5)
            print(f"\n2. PP-OCRv4 det (1x3x640x640 in, 1x1x640x640 out), {label}, sequential, {k} rounds; "
                  "each round: the gateway, then direct and proxy calls to the node that ran it")
            lat: dict[str, list[float]] = {n: [] for n in names}
            cpu = {"zero-logic proxy": 0.0, "gateway verify=auto": 0.0}
            per_node: dict[str, int] = {}
            sampled = 0
            stats0 = self.det_statistics()
            for r in range(k):
                c0 = self.gateway.cpu()
                seconds, node, status = self.det_gateway_call()
                cpu["gateway verify=auto"] += self.gateway.cpu() - c0
                lat["gateway verify=auto"].append(seconds)
                per_node[node] = per_node.get(node, 0) + 1
                if status == "pending":
                    sampled += 1
                    self.settle()
                proxy = self.proxy_child(node)
                for name in (names[:2] if r % 2 == 0 else names[1::-1]):
                    if name == "direct to node":
                        lat[name] += self.direct(1, model="ppocr-det", node=node)
                    else:
                        c0 = proxy.cpu()
                        lat[name] += self.direct(1, self.start_proxy(node), model="ppocr-det", node=node)
                        cpu[name] += proxy.cpu() - c0
            stats1 = self.det_statistics()
            direct = pct(lat["direct to node"], 50)
            for name, xs in lat.items():
                extra = "" if name == "direct to node" else (
                    f"   x{pct(xs, 50) / direct:.3f} at p50, x{statistics.fmean(xs) / statistics.fmean(lat['direct to node']):.3f} "
                    f"mean; its process's CPU {cpu[name] / k * 1e3:.1f} ms/request")
                print(f"   {name:22s}  {fmt_ms(xs)}{extra}")
            n = stats1["count"] - stats0["count"]
            if n:
                parts = {key: (stats1[key] - stats0[key]) / n / 1e6 for key in ("queue", "input", "call", "output")}
                print(f"   the gateway's ModelStatistics per request: node call (with encoding, the Worker call, its "
                      f"check) {parts['call']:.1f} ms; around it: request checks {parts['input']:.2f} ms, scheduling "
                      f"{parts['queue']:.2f} ms, verification and response {parts['output']:.2f} ms")
            paired = {name: statistics.median(g / d for g, d in zip(lat[name], lat["direct to node"]))
                      for name in names[1:]}
            ratio = pct(lat["gateway verify=auto"], 50) / direct
            print(f"   gateway / direct at p50: x{ratio:.3f} ({'within' if ratio <= 1.03 else 'ABOVE'} the 3% target); "
                  f"the zero-logic proxy x{pct(lat['zero-logic proxy'], 50) / direct:.3f}. Median of the rounds' "
                  f"ratios (same node, same minute): gateway x{paired['gateway verify=auto']:.3f}, proxy "
                  f"x{paired['zero-logic proxy']:.3f}. {sampled} of {k} requests sampled; rounds per node: "
                  + ", ".join(str(c) for _, c in sorted(per_node.items())))
        self.set_rate(self.args.rate)

    def run(self) -> None:
        a = self.args
        n = a.requests
        rows = a.rows.replace(" ", "").split(",")
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        self.setup()
        # past every node's probation (checked on each of its first jobs), then steady state
        self.via_gateway("auto", 100)
        self.direct(50)
        time.sleep(1.0)

        print(f"\n1. latency, sequential, {n} requests each, called in turn "
              f"(MLP 1x64 -> 1x10, sample rate {a.rate})")
        proxy = self.start_proxy()
        self.direct(50, proxy)
        print(f"   Worker calls (gateway, and direct/proxy rows alike): {self.worker_auth(self.node_ids[self.node_addresses[0]])[0]}")
        calls = {"direct to node": self.direct, "zero-logic proxy": lambda k: self.direct(k, proxy),
                 **{f"gateway verify={m}": (lambda k, m=m: self.via_gateway(m, k)) for m in ("auto", "sync", "always")}}
        lat = self.interleaved(calls, n)
        direct = lat["direct to node"]
        for name, xs in lat.items():
            extra = (pct(xs, 50) - pct(direct, 50)) * 1e3
            print(f"   {name:22s}  {fmt_ms(xs)}" + (f"   (+{extra:.3f} ms p50 vs direct)" if xs is not direct else ""))
        cpu0 = self.gateway.cpu()
        self.via_gateway("auto", n)
        print(f"   gateway CPU in auto mode: {(self.gateway.cpu() - cpu0) / n * 1e3:.2f} ms per request "
              f"(all its threads: gRPC, verification, ledger writes)")
        overhead = (pct(lat["gateway verify=auto"], 50) - pct(direct, 50)) * 1e3
        hop = (pct(lat["zero-logic proxy"], 50) - pct(direct, 50)) * 1e3
        own = overhead - hop
        print(f"   gateway overhead at p50 in auto mode: {overhead:.3f} ms over direct; a Python gRPC hop that "
              f"does nothing adds {hop:.3f} ms here, the gateway's own work {own:.3f} ms "
              f"({'within' if own <= 0.5 else 'ABOVE'} the 0.5 ms target over the proxy)")

        if a.ab_blocks and "1" in rows:
            blocks, size = a.ab_blocks, 50
            print(f"\n1b. Worker-call authentication, A/B: gateway verify=auto with session HMACs vs with "
                  f"Ed25519 signatures (the fallback), alternating blocks of {size}, {blocks} blocks each")
            ab: dict[str, list[float]] = {"session HMAC": [], "Ed25519 signature": []}
            for _ in range(blocks):
                for mode, name in (("session", "session HMAC"), ("signed", "Ed25519 signature")):
                    self.set_auth(mode)
                    ab[name] += self.via_gateway("auto", size)
            self.set_auth("session")
            for name, xs in ab.items():
                print(f"   {name:22s}  {fmt_ms(xs)}")
            print(f"   signed - HMAC at p50: {(pct(ab['Ed25519 signature'], 50) - pct(ab['session HMAC'], 50)) * 1e3:.3f} ms, "
                  f"in the mean: {(statistics.fmean(ab['Ed25519 signature']) - statistics.fmean(ab['session HMAC'])) * 1e3:.3f} ms "
                  "(the gateway's signature and the node's check of it, against the two HMACs)")

        if a.det_requests and "2" in rows:
            self.det_rows(a.det_requests)

        if "3" in rows:
            self.rate_rows()
        if "4" in rows:
            self.throughput_rows()
        if "5" in rows:
            print("\n5. the gateway's own steps per request, timed in this process")
            self.steps()

    def rate_rows(self) -> None:
        a = self.args
        print(f"\n3. verification compute vs sample rate (mode auto, {a.rate_requests} requests per rate)")
        print("   rate   validator runs/req   node CPU/req   gateway CPU/req   p50 latency")
        base = None
        for p in (0.0, 0.1, 0.25, 0.5, 1.0):
            self.set_rate(p)
            time.sleep(0.3)
            jobs0, cpu_n0, cpu_g0 = self.jobs(), sum(c.cpu() for c in self.nodes), self.gateway.cpu()
            lat = self.via_gateway("auto", a.rate_requests)
            time.sleep(0.5)  # let background checks finish
            wait_for(lambda: self.jobs() >= jobs0 + a.rate_requests, 30, "ledger to record the jobs")
            time.sleep(0.2)
            jobs = self.jobs() - jobs0
            node_cpu = (sum(c.cpu() for c in self.nodes) - cpu_n0) / a.rate_requests
            gw_cpu = (self.gateway.cpu() - cpu_g0) / a.rate_requests
            base = base or node_cpu
            print(f"   {p:4.2f}   {jobs / a.rate_requests - 1:18.2f}   {node_cpu * 1e3:9.3f} ms   "
                  f"{gw_cpu * 1e3:12.3f} ms   {pct(lat, 50) * 1e3:8.3f} ms   "
                  f"(node CPU x{node_cpu / base:.2f} vs rate 0)")
        self.set_rate(a.rate)

    def throughput_rows(self) -> None:
        a = self.args
        print(f"\n4. throughput, mode auto, {a.threads} client threads (a connection each), {a.seconds:.0f}s each"
              + (f"; 1 gateway process, then {a.workers} (`--workers {a.workers}`)" if a.workers > 1 else ""))
        rps: dict[int, float] = {}
        multi: dict[int, float] = {}
        counts = sorted({len(self.nodes), *(c for c in (4, 2, 1) if c < len(self.nodes))}, reverse=True)
        for count in counts:
            while len([n for n in self.nodes if n.proc.poll() is None]) > count:
                alive = [n for n in self.nodes if n.proc.poll() is None]
                alive[-1].stop()  # SIGTERM: the node leaves the pool
            wait_for(lambda: self.ready_nodes() == count, 30, f"the pool to shrink to {count} nodes")
            rps[count], err = self.throughput(a.seconds, a.threads)
            line = f"   {count} node{'s' if count > 1 else ' '}: {rps[count]:8.1f} requests/s ({err} errors)"
            if a.workers > 1:
                self.set_workers(a.workers)
                multi[count], err = self.throughput(a.seconds, a.threads)
                self.set_workers(1)
                line += (f";  {a.workers} gateway processes: {multi[count]:8.1f} requests/s ({err} errors), "
                         f"x{multi[count] / rps[count]:.2f}")
            print(line, flush=True)
        one = rps[min(rps)]
        print("   vs 1 node: " + ", ".join(f"{c} nodes x{r / one:.2f}" for c, r in rps.items() if c > 1)
              + (" (1 gateway process); " + ", ".join(f"{c} nodes x{r / multi[min(multi)]:.2f}"
                                                       for c, r in multi.items() if c > 1)
                 + f" ({a.workers} processes)" if multi else "")
              + f"  (client, gateway and nodes share {os.cpu_count()} CPUs, load average "
              + f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=500, help="sequential requests per latency row")
    p.add_argument("--rate-requests", type=int, default=200, help="requests per sample-rate row")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput row")
    p.add_argument("--threads", type=int, default=4, help="client threads for throughput")
    p.add_argument("--rate", type=float, default=0.1, help="the gateway's sample rate for rows 1 and 4")
    p.add_argument("--nodes", type=int, default=4, help="nodes at the start (throughput is measured at 4, 2, 1)")
    p.add_argument("--workers", type=int, default=2,
                   help="throughput also with this many gateway processes (`hyperinfer gateway --workers N`); 1: not")
    p.add_argument("--ab-blocks", type=int, default=10,
                   help="blocks of 50 requests per side in the Worker-call authentication A/B row (0: skip)")
    p.add_argument("--det-requests", type=int, default=40, help="rounds of sequential PP-OCR det requests per row (0: skip)")
    p.add_argument("--rows", default="1,2,3,4,5",
                   help="which rows to run (1: MLP latency and its A/B, 2: PP-OCR det, 3: sample rates, "
                        "4: throughput, 5: the gateway's steps)")
    p.add_argument("--batching", action="store_true",
                   help="also run scripts/bench_batching.py (PP-OCR rec and cls, 1/4/16 clients)")
    p.add_argument("--batching-seconds", type=float, default=6.0, help="seconds per batching row")
    args = p.parse_args()
    b = Bench(args)
    t0 = time.perf_counter()
    try:
        b.run()
    finally:
        b.close()
    if args.batching:
        print("\n6. dynamic batching (scripts/bench_batching.py)", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_batching.py")),
                        "--seconds", str(args.batching_seconds)], check=False)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; logs in {b.tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reliability report: a gateway, honest nodes and cheating nodes as real processes, under load.

    python scripts/reliability_report.py [--duration 120] [--clients 8] [--honest 3] [--sample-rate 0.1]
        [--runner tvm|ort] [--repository DIR --model NAME] [--tls] [--workdir DIR] [--json FILE]

Starts ``hyperinfer gateway`` and one ``scripts/pool_node.py`` process per node, all on 127.0.0.1:
``--honest`` honest nodes of distinct operators, and the cheaters (``--cheaters``, default all):
``noise`` (adds noise), ``zeros`` (returns zeros), ``pair`` (two nodes of ONE operator returning
the same constant outputs: a colluding/Sybil pair), ``stall`` (sleeps 40 s per request), ``late``
(honest for its first 30 runs, past probation, then noisy: only sampling catches it). Then
``--clients`` threads send ModelInfer requests (verification mode ``--verify``, default auto) for
``--duration`` seconds; every answer is compared with ONNX Runtime on the package's model within
the manifest's tolerance. Prints one table:

- requests sent / answered / errored (by status) / wrong, lost (sent and never answered nor given
  a status: must be 0);
- latency p50/p99 of answered requests under this load;
- wrong answers served, against the number the settings allow: a cheater is quarantined after
  ``--quarantine-after`` faults and each answer is checked with probability p (all of them while
  on probation), so it serves at most about Q/p wrong answers (Q while on probation);
- each cheater's fate (state, faults, timeouts, stake slashed, jobs, wrong answers it served);
- faults recorded against honest nodes (must be 0).

Exit status 1 if anything lost, any honest fault, or more wrong answers than allowed.
Without ``--repository`` the zoo MLP is compiled with TVM first (``--runner ort`` skips TVM on
the nodes: they run ONNX Runtime, honest ones are then bit-identical to the referee).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHEATERS = ("noise", "zeros", "pair", "stall", "late")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeProc:
    name: str
    operator: str
    variant: str
    proc: subprocess.Popen
    node_id: str = ""
    address: str = ""
    log: Path | None = None


@dataclass
class Result:
    ok: bool
    code: str
    seconds: float
    node_id: str = ""
    wrong: bool = False
    receipt_status: str = ""


@dataclass
class Stats:
    results: list[Result] = field(default_factory=list)
    lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_repository(args, work: Path) -> tuple[Path, str]:
    if args.repository:
        return Path(args.repository), args.model
    from hyperinfer import zoo
    from hyperinfer.compile import compile_model

    repo = work / "repo"
    say("compiling the zoo MLP with TVM for cpu-x86_64 ...")
    t0 = time.monotonic()
    path, shapes = zoo.build_small("mlp", work / "onnx")
    compile_model(path, "mlp", out_dir=repo, targets=["cpu-x86_64"], input_shapes=shapes, progress=False, force=True)
    say(f"compiled in {time.monotonic() - t0:.0f} s")
    return repo, "mlp"


def tls_flags(args, work: Path, name: str) -> list[str]:
    if not args.tls:
        return []
    d = work / "tls"
    return ["--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}.key"), "--tls-ca", str(d / "ca.pem")]


ADMIN_KEY: Path | None = None  # set by admit(): reads the closed pool's status


def admit(work: Path, operators: list[str]) -> None:
    """A closed pool: each operator name gets a key, admitted with a bond in the gateway database
    (`hyperinfer operators add`); its nodes certify themselves with it (pool_node.py --operator-key),
    so the two nodes of the colluding pair are one operator."""
    global ADMIN_KEY
    from hyperinfer.gateway.operators import OperatorBook
    from hyperinfer.gateway.store import open_store
    from hyperinfer.identity import load_or_create_key
    from hyperinfer.verify.signing import public_bytes

    store = open_store(work / "gateway.db")
    try:
        book = OperatorBook(store)
        for name in sorted(set(operators)):
            key, _ = load_or_create_key(work / f"op-{name}.key")
            if book.get(fingerprint_of(key), fresh=True) is None:
                book.add(public_bytes(key), name, 100.0)
    finally:
        store.close()
    ADMIN_KEY = work / "admin.key"
    load_or_create_key(ADMIN_KEY)


def fingerprint_of(key) -> str:
    from hyperinfer.verify.signing import key_id

    return key_id(key)


def start_gateway(args, work: Path, repo: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hyperinfer", "gateway", "--repository", str(repo), "--listen", f"127.0.0.1:{port}",
           *(["--admin-key", str(ADMIN_KEY)] if ADMIN_KEY else []),
           "--db", str(work / "gateway.db"), "--key", str(work / "gateway.key"), "--heartbeat-interval", "0.5",
           "--sample-rate", str(args.sample_rate), "--node-timeout", str(args.node_timeout),
           "--quarantine-after", str(args.quarantine_after),
           "--quarantine-after-timeouts", str(args.quarantine_after_timeouts), "--max-attempts", "4",
           *(["--probation-jobs", str(args.probation_jobs)] if args.probation_jobs is not None else []),
           *tls_flags(args, work, "gateway")]
    log = open(work / "gateway.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "listening on" in (work / "gateway.log").read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited: {(work / 'gateway.log').read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("gateway did not start listening")


def start_node(args, work: Path, repo: Path, gateway: str, i: int, operator: str, variant: str) -> NodeProc:
    name = f"node{i}"
    cmd = [sys.executable, str(HERE / "pool_node.py"), "--gateway", gateway, "--key", str(work / f"{name}.key"),
           "--operator", operator, "--cache", str(work / f"cache{i}"), "--variant", variant,
           "--runner", args.runner, "--repo", str(repo), "--max-concurrency", str(args.node_concurrency),
           *(["--operator-key", str(work / f"op-{operator}.key")] if (work / f"op-{operator}.key").exists() else []),
           "--watch-stdin", *tls_flags(args, work, name)]
    log = work / f"{name}.log"
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            start_new_session=True)
    return NodeProc(name, operator, variant, proc, log=log)


def wait_nodes(nodes: list[NodeProc], timeout: float) -> None:
    def read(n: NodeProc) -> None:
        line = n.proc.stdout.readline()
        if line.startswith("READY"):
            _, n.node_id, n.address = line.split()

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    missing = [n.name for n in nodes if not n.node_id]
    if missing:
        raise SystemExit(f"nodes did not load the model in {timeout:.0f} s: {missing} (logs in {nodes[0].log.parent})")


def status(address: str, tls) -> dict:
    from hyperinfer.pool_status import fetch_status

    return fetch_status(address, tls=tls, key=ADMIN_KEY)


def wait_schedulable(address: str, tls, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(address, tls)
        if st["models"] and st["models"][0]["ready_nodes"] >= n:
            return
        time.sleep(0.2)
    raise SystemExit(f"fewer than {n} nodes became schedulable")


def client_loop(address: str, tls, model: str, manifest, reference, verify: str, until: float, stats: Stats,
                seed: int) -> None:
    import grpc
    import numpy as np

    from hyperinfer.proto.inference import grpc_service_pb2 as pb
    from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
    from hyperinfer.transport.server import channel

    rng = np.random.default_rng(seed)
    spec = manifest.inputs
    with channel(address, tls=tls) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        while time.monotonic() < until:
            inputs = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in spec}
            req = pb.ModelInferRequest(model_name=model)
            req.parameters["verify"].string_param = verify
            for s in spec:
                from hyperinfer import dtypes

                req.inputs.add(name=s.name, datatype=dtypes.from_name(s.dtype).oip, shape=s.shape)
                req.raw_input_contents.append(inputs[s.name].tobytes())
            t0 = time.perf_counter()
            try:
                resp = stub.ModelInfer(req, timeout=120)
            except grpc.RpcError as e:
                with stats.lock:
                    stats.results.append(Result(False, e.code().name, time.perf_counter() - t0))
                continue
            except Exception:  # noqa: BLE001 - neither an answer nor a status: lost
                with stats.lock:
                    stats.lost += 1
                continue
            dt = time.perf_counter() - t0
            want = reference.run(inputs)
            wrong = False
            for i, o in enumerate(manifest.outputs):
                got = np.frombuffer(resp.raw_output_contents[i], dtype=o.dtype).reshape(o.shape)
                tol = o.tolerance
                if np.dtype(o.dtype).kind == "f":
                    ok = np.allclose(got, want[o.name], atol=max(tol.atol, 1e-5) * 10, rtol=max(tol.rtol, 1e-5) * 10)
                else:
                    ok = np.array_equal(got, want[o.name])
                wrong = wrong or not ok
            receipt = json.loads(resp.parameters["hyperinfer.receipt"].string_param)
            with stats.lock:
                stats.results.append(Result(True, "OK", dt, receipt.get("node_id", ""), wrong,
                                            receipt.get("status", "")))


def faults_by_kind(db: Path) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        for node_id, kind, n in conn.execute("SELECT node_id, kind, COUNT(*) FROM faults GROUP BY node_id, kind"):
            out[node_id][kind] = n
    finally:
        conn.close()
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--honest", type=int, default=3)
    p.add_argument("--cheaters", default=",".join(CHEATERS), help=f"comma list of {', '.join(CHEATERS)} (or none)")
    p.add_argument("--sample-rate", type=float, default=0.1)
    p.add_argument("--verify", default="auto", choices=("auto", "sync", "always"))
    p.add_argument("--quarantine-after", type=int, default=3)
    p.add_argument("--quarantine-after-timeouts", type=int, default=3)
    p.add_argument("--probation-jobs", type=int, default=None, help="gateway --probation-jobs (default: its own)")
    p.add_argument("--node-timeout", type=float, default=2.0)
    p.add_argument("--node-concurrency", type=int, default=4)
    p.add_argument("--runner", choices=("tvm", "ort"), default="tvm")
    p.add_argument("--repository", type=Path, help="use this repository instead of compiling the zoo MLP")
    p.add_argument("--model", default="mlp")
    p.add_argument("--tls", action="store_true", help="TLS everywhere (mutual between gateway and nodes)")
    p.add_argument("--workdir", type=Path, help="keep state and logs here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    cheaters = [c for c in args.cheaters.split(",") if c and c != "none"]
    bad = set(cheaters) - set(CHEATERS)
    if bad:
        p.error(f"unknown cheaters {sorted(bad)}")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hyperinfer-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    repo, model = prepare_repository(args, work)

    from hyperinfer.package import ModelPackage
    from hyperinfer.runtime import ORTRunner

    package = ModelPackage.open(repo / model / str(max(int(v.name) for v in (repo / model).iterdir()
                                                         if v.name.isdigit())))
    reference = ORTRunner.for_package(package, threads=1)
    tls = None
    specs: list[tuple[str, str]] = [(f"honest-{i + 1}", "honest") for i in range(args.honest)]
    for c in cheaters:
        if c == "pair":
            specs += [("colluders", "constant"), ("colluders", "constant")]
        elif c == "noise":
            specs.append(("noisy", "noise"))
        elif c == "zeros":
            specs.append(("lazy", "zeros"))
        elif c == "stall":
            specs.append(("staller", "stall"))
        elif c == "late":
            specs.append(("patient", "late"))
    if args.tls:
        from hyperinfer import pki
        from hyperinfer.transport.tls import TLSFiles

        pki.pool_pki(work / "tls", ["gateway", *[f"node{i}" for i in range(len(specs))]])
        tls = TLSFiles.load(ca=work / "tls" / "ca.pem")

    port = free_port()
    address = f"127.0.0.1:{port}"
    admit(work, [op for op, _ in specs])
    gateway = start_gateway(args, work, repo, port)
    nodes: list[NodeProc] = []
    stats = Stats()
    try:
        for i, (operator, variant) in enumerate(specs):
            nodes.append(start_node(args, work, repo, address, i, operator, variant))
        wait_nodes(nodes, 300)
        wait_schedulable(address, tls, len(nodes), 60)
        say(f"pool ready: {len(nodes)} nodes ({args.honest} honest, cheaters: {', '.join(cheaters) or 'none'}); "
            f"{args.clients} clients for {args.duration:.0f} s, verify={args.verify}, p={args.sample_rate}")
        until = time.monotonic() + args.duration
        threads = [threading.Thread(target=client_loop, args=(address, tls, model, package.manifest, reference,
                                                              args.verify, until, stats, 1000 + k), daemon=True)
                   for k in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        last = 0
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            n = len(stats.results)
            if time.monotonic() - t0 >= last + 10:
                last += 10
                say(f"  {time.monotonic() - t0:5.0f} s: {n} requests done")
        for t in threads:
            t.join(180)
        stuck = sum(t.is_alive() for t in threads)
        stats.lost += stuck  # a client still waiting past every timeout
        if args.verify == "auto":
            time.sleep(args.node_timeout * 2 + 2)  # background checks finish
        st = status(address, tls)
    finally:
        for n in nodes:
            try:
                n.proc.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            # a stalling node sleeps through a graceful stop: kill it
            n.proc.kill() if n.variant == "stall" else n.proc.terminate()
        gateway.send_signal(signal.SIGTERM)
        for n in nodes:
            try:
                n.proc.wait(15)
            except subprocess.TimeoutExpired:
                n.proc.kill()
        try:
            gateway.wait(20)
        except subprocess.TimeoutExpired:
            gateway.kill()

    kinds = faults_by_kind(work / "gateway.db")
    by_id = {n["node_id"]: n for n in st["nodes"]}
    res = stats.results
    answered = [r for r in res if r.ok]
    errors = Counter(r.code for r in res if not r.ok)
    wrong = [r for r in answered if r.wrong]
    wrong_by_node = Counter(r.node_id for r in wrong)
    lat = [r.seconds * 1000 for r in answered]
    sent = len(res) + stats.lost
    answer_cheaters = [n for n in nodes if n.variant in ("noise", "zeros", "constant", "late")]
    q, prate = args.quarantine_after, args.sample_rate
    allowed = len(answer_cheaters) * (q / prate if prate > 0 else float("inf"))
    honest_faults = sum(sum(kinds.get(n.node_id, {}).values()) for n in nodes if n.variant == "honest")

    lines = [
        "| measure | value |", "| --- | --- |",
        f"| nodes | {len(nodes)}: {args.honest} honest, {len(nodes) - args.honest} cheating "
        f"({', '.join(cheaters) or 'none'}) |",
        f"| load | {args.clients} clients, {args.duration:.0f} s, verify={args.verify}, p={prate:g}, "
        f"quarantine after {q} faults / {args.quarantine_after_timeouts} timeouts, node timeout {args.node_timeout:g} s"
        f"{', TLS' if args.tls else ''}, runner {args.runner} |",
        f"| requests sent | {sent} |",
        f"| answered | {len(answered)} |",
        f"| errored | {sum(errors.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in errors.most_common())})"
                                                   if errors else "") + " |",
        f"| wrong answers served (vs ONNX Runtime) | {len(wrong)} ({100 * len(wrong) / max(len(answered), 1):.2f} % "
        f"of answered) |",
        f"| allowed by the settings (cheaters x Q/p) | <= {allowed:.0f} "
        f"({100 * allowed / max(len(answered), 1):.2f} % of answered) |",
        f"| latency p50 / p99 | {percentile(lat, 0.5):.1f} ms / {percentile(lat, 0.99):.1f} ms |",
        f"| honest faults | {honest_faults} |",
        f"| lost | {stats.lost} |",
    ]
    fate = ["", "| node | operator | behaviour | state | faults | timeouts | slashed | jobs | wrong served |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    report_nodes = []
    for n in nodes:
        s = by_id.get(n.node_id, {})
        k = kinds.get(n.node_id, Counter())
        timeouts = k.get("timeout", 0)
        row = dict(node=n.name, node_id=n.node_id, operator=n.operator, behaviour=n.variant,
                   state=s.get("state", "?"), faults=sum(k.values()) - timeouts, timeouts=timeouts,
                   slashed=s.get("slashed", 0.0), jobs=s.get("jobs", 0), wrong_served=wrong_by_node.get(n.node_id, 0))
        report_nodes.append(row)
        fate.append(f"| {n.name} | {n.operator} | {n.variant} | {row['state']} | {row['faults']} | {timeouts} | "
                    f"{row['slashed']:g} | {row['jobs']} | {row['wrong_served']} |")
    print("\n".join(lines + fate))
    ok = stats.lost == 0 and honest_faults == 0 and len(wrong) <= allowed
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (lost 0, honest faults 0, wrong served within the bound)")
    if args.json:
        args.json.write_text(json.dumps(dict(
            sent=sent, answered=len(answered), errored=dict(errors), wrong=len(wrong), allowed=allowed,
            p50_ms=percentile(lat, 0.5), p99_ms=percentile(lat, 0.99), honest_faults=honest_faults,
            lost=stats.lost, nodes=report_nodes, ok=ok), indent=2))
    say(f"logs and database in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

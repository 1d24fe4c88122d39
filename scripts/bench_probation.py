#!/usr/bin/env python
"""Probation benchmark (issue 15): what holding a probation node's answers costs, and what it buys.

A real gateway (default verification settings unless said otherwise) and nodes that
run ONNX Runtime on the MLP package (no compile step), all on 127.0.0.1 over real
gRPC, in this process. Prints, in one run:

1. latency of held answers: the same sequential requests (verify=auto), called in
   turn, through a gateway whose nodes are on probation for good (``--probation-jobs``
   huge: every answer held until the other operator's node agreed) and through a
   gateway whose nodes are trusted (default settings, past probation: steady state,
   sample rate 0.1, checks in the background). p50/p90 and the ratio;
2. a cheating node (valid key and signatures, float outputs off by ``--off-by``)
   joining two honest, trusted nodes, ``--requests`` requests in verify=auto from 4
   client threads, with probation as before this change (job-count probation: the
   first K jobs sampled at rate 1, checked in the background after the answer went
   out) and with probation rules (held answers, one job at a time). Counted: wrong
   answers served to clients (max |error| > 1e-4 vs ONNX Runtime), answers the
   cheater served, its faults once every check has finished (quarantine threshold:
   3), whether it was quarantined, and honest nodes' faults.

Numbers depend on the machine and what else runs on it; ratios within one run are
what matter.

    python scripts/bench_probation.py [--requests 300] [--latency-requests 300] [--runs 1] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests" / "grpc"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

# the MLP package with a placeholder artifact and ONNX Runtime nodes, as the gRPC tests use
from oip_harness import TARGET, make_package, ort_factory  # noqa: E402

from hyperinfer.gateway import assembly  # noqa: E402
from hyperinfer.gateway.app import Gateway, install_extensions  # noqa: E402
from hyperinfer.gateway.config import GatewayConfig  # noqa: E402
from hyperinfer.gateway.converters import array_to_typed_tensor, outputs_from_proto  # noqa: E402
from hyperinfer.node.app import Node, NodeConfig  # noqa: E402
from hyperinfer.node.devices import Device, Hardware  # noqa: E402
from hyperinfer.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from hyperinfer.runtime import ORTRunner  # noqa: E402
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json  # noqa: E402

MODEL = "mlp"


class Cheating:
    def __init__(self, runner, off_by: float):
        self._runner, self._off = runner, off_by

    def run(self, inputs):
        out = self._runner.run(inputs)
        return {k: (v + np.asarray(self._off, v.dtype)) if v.dtype.kind == "f" else v for k, v in out.items()}

    def __getattr__(self, name):
        return getattr(self._runner, name)


class Pool:
    """A gateway in this process and the nodes added to it."""

    def __init__(self, repo: Path, tmp: Path, legacy: bool = False, **config):
        self.tmp = tmp
        self.repo = repo
        real = assembly.make_probation
        if legacy:  # probation as it was: no held answers, no one-job limit
            assembly.make_probation = lambda *a, **k: None
        try:
            self.gw = Gateway(GatewayConfig(repository=repo, listen="127.0.0.1:0", db=tmp / "gw.db",
                                            key=tmp / "gw.key", heartbeat_interval=0.2, grace_seconds=1,
                                            max_workers=16, open_pool=True, **config))
            install_extensions(self.gw)
        finally:
            assembly.make_probation = real
        self.gw.start()
        self.nodes: list[Node] = []
        self.channel = grpc.insecure_channel(self.gw.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def add(self, operator: str, off_by: float = 0.0) -> str:
        honest = ort_factory(self.repo)
        factory = (lambda *a: Cheating(honest(*a), off_by)) if off_by else honest
        nc = NodeConfig(gateway=self.gw.address, key_path=self.tmp / f"{operator}.key", operator=operator,
                        cache_dir=self.tmp / f"cache-{operator}", allow_unsigned=self.repo, max_concurrency=4,
                        grace_s=1)
        node = Node(nc, runner_factory=factory, hardware=Hardware([Device("cpu", "cpu", "x86_64", 1)],
                                                                   [TARGET])).start()
        self.nodes.append(node)
        deadline = time.monotonic() + 60
        while node.node_id not in {n.node_id for n in self.gw.registry.schedulable_nodes(MODEL, 1)}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {operator} did not become schedulable")
            time.sleep(0.05)
        return node.node_id

    def ask(self, x: np.ndarray):
        req = pb.ModelInferRequest(model_name=MODEL, inputs=[array_to_typed_tensor("x", x)])
        req.parameters["verify"].string_param = "auto"
        resp = self.stub.ModelInfer(req, timeout=60)
        return outputs_from_proto(resp), receipt_from_json(resp.parameters[RECEIPT_PARAMETER].string_param)

    def warm(self, node_ids, rng, limit=200) -> None:
        """Requests until none of ``node_ids`` is on probation."""
        for _ in range(limit):
            if not any(self.gw.ledger.details(n)["probation"] for n in node_ids):
                return
            self.ask(rng.standard_normal((1, 64)).astype(np.float32))

    def close(self) -> None:
        self.channel.close()
        for n in self.nodes:
            n.stop()
        self.gw.stop(grace=0)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(repo: Path, tmp: Path, n: int, out) -> dict:
    held = Pool(repo, tmp / "held", probation_jobs=10**9)  # on probation for good: every answer held
    trusted = Pool(repo, tmp / "trusted")  # default settings
    try:
        rng = np.random.default_rng(0)
        for p in (held, trusted):
            ids = [p.add("operator-a"), p.add("operator-b")]
            p.warm(ids, rng) if p is trusted else None
            for _ in range(20):
                p.ask(rng.standard_normal((1, 64)).astype(np.float32))
        times = {"held (probation)": [], "trusted (steady state)": []}
        statuses = {k: {} for k in times}
        for _ in range(n):  # called in turn: load from elsewhere hits both alike
            x = rng.standard_normal((1, 64)).astype(np.float32)
            for label, p in (("held (probation)", held), ("trusted (steady state)", trusted)):
                t0 = time.perf_counter()
                _, r = p.ask(x)
                times[label].append((time.perf_counter() - t0) * 1e3)
                statuses[label][r.status] = statuses[label].get(r.status, 0) + 1
    finally:
        held.close()
        trusted.close()
    rows = {k: (pct(v, 0.5), pct(v, 0.9), statistics.mean(v)) for k, v in times.items()}
    base = rows["trusted (steady state)"]
    out(f"\n1. latency, sequential, {n} requests each, verify=auto, called in turn (MLP 1x64 -> 1x10)\n")
    out("| gateway | p50 ms | p90 ms | mean ms | p50 vs trusted | receipts |")
    out("| --- | --- | --- | --- | --- | --- |")
    for k, (p50, p90, mean) in rows.items():
        st = ", ".join(f"{s} {c}" for s, c in sorted(statuses[k].items()))
        out(f"| {k} | {p50:.2f} | {p90:.2f} | {mean:.2f} | x{p50 / base[0]:.2f} | {st} |")
    return {"ratio_p50": rows["held (probation)"][0] / base[0]}


def cheater(repo: Path, tmp: Path, legacy: bool, requests: int, off_by: float) -> dict:
    pool = Pool(repo, tmp, legacy=legacy)
    try:
        rng = np.random.default_rng(1)
        honest = [pool.add("operator-a"), pool.add("operator-b")]
        pool.warm(honest, rng)
        ref = ORTRunner(repo / MODEL / "1" / "model.onnx", pool.gw.catalog.get(MODEL, 1).manifest.inputs, threads=1)
        evil = pool.add("operator-evil", off_by)
        counts = {"served": 0, "wrong": 0, "by_cheater": 0, "wrong_by_cheater": 0, "errors": 0}
        lock = threading.Lock()
        left = [requests]

        def client(seed):
            r = np.random.default_rng(seed)
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                x = r.standard_normal((1, 64)).astype(np.float32)
                try:
                    out, rec = pool.ask(x)
                except grpc.RpcError:
                    with lock:
                        counts["errors"] += 1
                    continue
                want = ref.run({"x": x})
                bad = any(np.max(np.abs(out[k].astype(np.float64) - want[k])) > 1e-4 for k in want)
                with lock:
                    counts["served"] += 1
                    counts["wrong"] += bad
                    counts["by_cheater"] += rec.node_id == evil
                    counts["wrong_by_cheater"] += bad and rec.node_id == evil

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        pool.gw.dataplane.verifier.wait(60)  # every background check has ended
        pool.gw.dataplane.verifier.ledger.flush()
        d = pool.gw.ledger.details(evil)
        honest_faults = sum(pool.gw.ledger.details(n)["faults"] for n in honest)
        honest_slashed = sum(pool.gw.ledger.details(n)["slashed"] for n in honest)
        return {**counts, "jobs": d["jobs"], "faults": d["faults"], "quarantined": d["quarantined"],
                "threshold": pool.gw.ledger.config.quarantine_after, "honest_faults": honest_faults,
                "honest_slashed": honest_slashed, "seconds": seconds}
    finally:
        pool.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per cheater run")
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--runs", type=int, default=1, help="cheater runs per mode")
    ap.add_argument("--off-by", type=float, default=0.01, help="the cheater's error on every float output")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    lines: list[str] = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    out(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-probation-") as d:
        tmp = Path(d)
        repo = tmp / "repo"
        make_package(repo, MODEL)
        latency(repo, tmp, a.latency_requests, out)
        out(f"\n2. a cheater (outputs off by {a.off_by:g}) joins 2 trusted honest nodes; {a.requests} requests, "
            "verify=auto, 4 client threads, default settings\n")
        out("| probation | run | wrong answers served | served by cheater | cheater jobs | cheater faults "
            "(threshold) | quarantined | honest faults / slashed | seconds |")
        out("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for legacy in (True, False):
            for i in range(a.runs):
                r = cheater(repo, tmp / f"cheat-{legacy}-{i}", legacy, a.requests, a.off_by)
                label = "before (job count, background checks)" if legacy else "rules (held, one job at a time)"
                out(f"| {label} | {i + 1} | {r['wrong']}/{r['served']} | {r['by_cheater']} | {r['jobs']} | "
                    f"{r['faults']} ({r['threshold']}) | {'yes' if r['quarantined'] else 'no'} | "
                    f"{r['honest_faults']} / {r['honest_slashed']:g} | {r['seconds']:.1f} |")
    out(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.markdown:
        a.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

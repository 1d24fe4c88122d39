#!/usr/bin/env python3
"""One worker node as its own process, honest or cheating (reliability report, fault tests).

    python scripts/pool_node.py --gateway HOST:PORT --key K --operator OP --cache DIR \\
        [--variant honest|noise|zeros|constant|stall|slow] [--delay S] [--runner tvm|ort --repo DIR] [--tls-* ...]

Variants (every answer is signed with the node's key, as a cheater's would be):

- ``honest``: runs the model.
- ``noise``: runs it and adds Gaussian noise (sigma 0.05) to float outputs: saves nothing, just wrong.
- ``zeros``: never runs the model; returns zeros of the right shapes (the cheapest cheat).
- ``constant``: never runs it; returns the same fixed outputs for every input (a Sybil/colluding
  pair of one operator runs this on two nodes: the pair agree with each other).
- ``stall``: runs it, but first sleeps ``--delay`` seconds (default 40): a node that ties up the
  gateway's calls.
- ``slow``: honest, answers after ``--delay`` seconds (default 0.5), inside any sane node timeout.
- ``late``: honest for its first ``--honest-jobs`` runs (default 30: past probation), then like
  ``noise`` (a patient cheater: only the sample rate can catch it).

``--runner tvm`` (default) runs the package's TVM artifact; ``--runner ort`` runs ONNX Runtime on
``REPO/NAME/VERSION/model.onnx`` (no compile step, for quick runs). Prints ``READY <node id>
<worker address>`` once a model is loaded, then serves until SIGTERM/SIGINT or stdin closes
(``--watch-stdin``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

VARIANTS = ("honest", "noise", "zeros", "constant", "stall", "slow", "late")


class Cheat:
    """Wraps a runner; what it returns depends on the variant."""

    def __init__(self, runner, manifest, variant: str, delay: float, seed: int, honest_jobs: int = 30):
        import numpy as np

        self._runner, self.variant, self.delay = runner, variant, delay
        self.honest_jobs, self._runs = honest_jobs, 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._outputs = manifest.outputs
        # constant outputs: the same for every input and every node of this variant
        fixed = np.random.default_rng(12345)
        self._constant = {o.name: (fixed.standard_normal(o.shape) if np.dtype(o.dtype).kind == "f"
                                   else np.zeros(o.shape)).astype(o.dtype) for o in manifest.outputs}

    def run(self, inputs):
        import numpy as np

        v = self.variant
        if v in ("stall", "slow"):
            time.sleep(self.delay)
        if v == "zeros":
            return {o.name: np.zeros(o.shape, o.dtype) for o in self._outputs}
        if v == "constant":
            return {k: a.copy() for k, a in self._constant.items()}
        out = self._runner.run(inputs)
        if v == "late":
            with self._lock:
                self._runs += 1
                v = "noise" if self._runs > self.honest_jobs else "honest"
        if v == "noise":
            out = {k: (a + self._rng.normal(0, 0.05, a.shape).astype(a.dtype)) if a.dtype.kind == "f" else a
                   for k, a in out.items()}
        return out

    def __getattr__(self, name):
        return getattr(self._runner, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", required=True)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--operator", required=True)
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--variant", choices=VARIANTS, default="honest")
    p.add_argument("--delay", type=float, default=None, help="seconds (stall: 40, slow: 0.5)")
    p.add_argument("--honest-jobs", type=int, default=30, help="late: honest runs before it cheats")
    p.add_argument("--runner", choices=("tvm", "ort"), default="tvm")
    p.add_argument("--repo", type=Path, help="model repository (for --runner ort; unsigned packages load only "
                                             "from it)")
    p.add_argument("--operator-key", type=Path, help="operator key: certify this node under it (closed pools)")
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-ca", type=Path)
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    args = p.parse_args(argv)
    if args.runner == "ort" and args.repo is None:
        p.error("--runner ort needs --repo")
    delay = args.delay if args.delay is not None else {"stall": 40.0, "slow": 0.5}.get(args.variant, 0.0)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.operator}/{args.variant} %(levelname)s %(name)s: %(message)s")
    from hyperinfer.node.app import Node, NodeConfig
    from hyperinfer.node.devices import Device, Hardware
    from hyperinfer.node.models import tvm_runner_factory

    if args.runner == "ort":
        from hyperinfer.package import ModelPackage
        from hyperinfer.runtime import ORTRunner

        def base(path, manifest, target_id):
            package = ModelPackage.open(args.repo / manifest.name / str(manifest.version))
            return ORTRunner.for_package(package, threads=1)
    else:
        base = tvm_runner_factory(args.threads)

    seed = abs(hash((args.operator, str(args.key)))) % 2**32

    def factory(path, manifest, target_id):
        runner = base(path, manifest, target_id)
        if args.variant == "honest":
            return runner
        return Cheat(runner, manifest, args.variant, delay, seed, args.honest_jobs)

    ready = threading.Event()
    cert = None
    if args.operator_key is not None:  # the operator certifies this node key (hyperinfer operators certify)
        from hyperinfer.identity import load_key, load_or_create_key
        from hyperinfer.verify.operators import certify
        from hyperinfer.verify.signing import public_bytes

        node_key, _ = load_or_create_key(args.key)
        cert = args.key.with_suffix(".cert")
        cert.write_bytes(certify(load_key(args.operator_key), public_bytes(node_key), args.operator).to_bytes())
    config = NodeConfig(gateway=args.gateway, key_path=args.key, operator=args.operator, cache_dir=args.cache,
                        allow_unsigned=args.repo, operator_cert=cert, max_concurrency=args.max_concurrency,
                        threads=args.threads, grace_s=2,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca, batching=False)
    hardware = Hardware([Device("cpu", "cpu", "x86_64", 1)], ["cpu-x86_64"])
    node = Node(config, runner_factory=factory, hardware=hardware, on_loaded=lambda m: ready.set())
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    node.start()
    if args.watch_stdin:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    try:
        while not ready.wait(0.1):
            if stop.is_set():
                return 1
        print(f"READY {node.node_id} {node.address}", flush=True)
        stop.wait()
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

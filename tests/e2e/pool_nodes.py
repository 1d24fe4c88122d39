"""Worker nodes in one child process, each joining the gateway it is told to (tests/e2e/test_two_gateways.py).

Usage: ``python pool_nodes.py --repo R --tmp T --node GATEWAY,OPERATOR[,tamper] ...``. Nodes run
ONNX Runtime on the package's model.onnx (tests/grpc/oip_harness.py makes such packages); a
``tamper`` node adds 0.05 to every float output and signs it, as a cheating operator would.
Prints ``READY`` once every node has joined, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
from oip_harness import TARGET, ort_factory  # noqa: E402


class Tampering:
    """An ORT runner whose float outputs are off by 0.05 (well outside any tolerance)."""

    def __init__(self, runner):
        self._runner = runner

    def run(self, inputs):
        import numpy as np

        out = self._runner.run(inputs)
        return {k: (v + np.asarray(0.05, v.dtype)) if v.dtype.kind == "f" else v for k, v in out.items()}

    def __getattr__(self, name):
        return getattr(self._runner, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", required=True, type=Path)
    p.add_argument("--tmp", required=True, type=Path)
    p.add_argument("--node", action="append", required=True, help="GATEWAY,OPERATOR[,tamper]")
    args = p.parse_args(argv)

    import logging
    import signal
    import threading

    from hyperinfer.node.app import Node, NodeConfig
    from hyperinfer.node.devices import Device, Hardware

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    honest = ort_factory(args.repo)

    def tampering(path, manifest, target_id):
        return Tampering(honest(path, manifest, target_id))

    nodes = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for i, spec in enumerate(args.node):
            gateway, operator, *flags = spec.split(",")
            nc = NodeConfig(gateway=gateway, key_path=args.tmp / f"node{i}.key", operator=operator,
                            cache_dir=args.tmp / f"cache{i}", allow_unsigned=args.repo, max_concurrency=2, grace_s=1)
            hw = Hardware([Device("cpu", "test cpu", "x86_64", 1)], [TARGET])
            factory = tampering if "tamper" in flags else honest
            nodes.append(Node(nc, runner_factory=factory, hardware=hw).start())
        print("READY " + " ".join(n.node_id for n in nodes), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    finally:
        for n in nodes:
            n.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

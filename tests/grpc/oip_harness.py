"""A gateway with two in-process nodes, run as a child process by tests/grpc/test_oip*.py.

Why a child process: the server's threads (gRPC, nodes, ledger writer) do not
share a GIL with the client under test, as in production. Only stdlib imports
at module level: test modules import :func:`make_package` and
:func:`import_tritonclient_grpc` from here.

The nodes run ONNX Runtime through a runner factory instead of a TVM artifact,
so no compile step is needed; tests/e2e runs compiled artifacts.

Protocol: prints ``READY <address> <gateway public key hex>`` once serving,
then serves until stdin closes or SIGTERM.

:func:`import_tritonclient_grpc` imports tritonclient or raises ImportError
(test modules skip then).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

TARGET = "cpu-x86_64"


def import_tritonclient_grpc():
    """``tritonclient.grpc`` (ImportError if it is missing). A plain import: hyperinfer's OIP
    messages live in a private descriptor pool, so both coexist in one process
    (tests/unit/test_proto_pool.py checks that in a fresh interpreter)."""
    import tritonclient.grpc

    return tritonclient.grpc


def make_package(repo: Path, name: str, version: int = 1, atol: float = 1e-5, target: str = TARGET) -> Path:
    """A package of a zoo model whose artifact is a placeholder file (the nodes here run ORT)."""
    import numpy as np
    import onnx

    from hyperinfer import dtypes, zoo
    from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec, Tolerance
    from hyperinfer.runtime import ORTRunner

    src, shapes = zoo.build_small(name, Path(repo).parent / "onnx")
    model = onnx.load(str(src))
    inputs = []
    for vi in model.graph.input:
        dims = tuple(shapes.get(vi.name) or (d.dim_value for d in vi.type.tensor_type.shape.dim))
        inputs.append(TensorSpec(vi.name, dtypes.from_onnx(vi.type.tensor_type.elem_type).name, dims))
    runner = ORTRunner(src, inputs)
    rng = np.random.default_rng(0)
    sample = runner.run({t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in inputs})
    outputs = [OutputSpec(n, a.dtype.name, a.shape, tolerance=Tolerance(atol, atol)) for n, a in sample.items()]
    pdir = Path(repo) / name / str(version)
    (pdir / "artifacts").mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    (pdir / "model.onnx").write_bytes(data)
    art = f"placeholder artifact for {name}/{version}".encode()
    (pdir / "artifacts" / f"{target}.so").write_bytes(art)
    m = Manifest(
        name=name, version=version, source_sha256=hashlib.sha256(data).hexdigest(),
        model_sha256=hashlib.sha256(data).hexdigest(), inputs=inputs, outputs=outputs, tvm_version="none",
        artifacts={target: ArtifactInfo(target, {"kind": "llvm"}, f"artifacts/{target}.so",
                                        hashlib.sha256(art).hexdigest(), len(art))},
    )
    (pdir / "manifest.json").write_bytes(m.dumps())
    return pdir


def ort_factory(repo: Path, tamper: bool = False):
    from hyperinfer.runtime import ORTRunner

    def make(path, manifest, target_id):
        pdir = Path(repo) / manifest.name / str(manifest.version)
        runner = ORTRunner(pdir / "model.onnx", manifest.inputs, [o.name for o in manifest.outputs], threads=1)
        return _Tampering(runner) if tamper else runner

    return make


class _Tampering:
    """A runner whose float outputs are off by 0.05 (well outside any tolerance), signed as if right."""

    def __init__(self, runner):
        self._runner = runner

    def run(self, inputs):
        import numpy as np

        out = self._runner.run(inputs)
        return {k: (v + np.asarray(0.05, v.dtype)) if v.dtype.kind == "f" else v for k, v in out.items()}

    def __getattr__(self, name):
        return getattr(self._runner, name)


class Harness:
    """This module run as a child process: ``with Harness(repo, tmp) as h: h.address``."""

    def __init__(self, repo: Path, tmp: Path, *, sample_rate: float = 0.0, max_message: int | None = None,
                 timeout: float = 60.0, tls: Path | None = None, http: bool = False, nodes: int = 2,
                 tamper: int = 0):
        import subprocess
        import threading

        args = [sys.executable, __file__, "--repo", str(repo), "--tmp", str(tmp), "--sample-rate", str(sample_rate)]
        if max_message is not None:
            args += ["--max-message", str(max_message)]
        if tls is not None:  # a directory with ca.pem, gateway.pem/.key, node.pem/.key (hyperinfer.pki)
            args += ["--tls", str(tls)]
        if http:
            args += ["--http"]
        args += ["--nodes", str(nodes), "--tamper", str(tamper)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0].startswith("READY"):
            self.close()
            raise RuntimeError(f"harness did not report READY within {timeout}s (exit code {self.proc.poll()})")
        _, self.address, key, *extra = box[0].split()
        self.gateway_key = bytes.fromhex(key)
        # with --http: "http=HOST:PORT metrics=HOST:PORT"
        self.extra = dict(e.split("=", 1) for e in extra)
        self.http_address = self.extra.get("http", "")
        self.metrics_address = self.extra.get("metrics", "")

    def close(self) -> None:
        import subprocess

        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the child stops when its stdin closes
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", required=True, type=Path)
    p.add_argument("--tmp", required=True, type=Path)
    p.add_argument("--max-message", type=int, default=4 * 1024 * 1024)
    p.add_argument("--sample-rate", type=float, default=0.0)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--tls", type=Path, default=None)
    p.add_argument("--http", action="store_true", help="also serve KServe v2 REST and /metrics (free ports)")
    p.add_argument("--tamper", type=int, default=0, help="the last N nodes add 0.05 to float outputs (cheaters)")
    args = p.parse_args(argv)

    import logging
    import signal
    import threading

    from hyperinfer.gateway.app import Gateway
    from hyperinfer.gateway.config import GatewayConfig
    from hyperinfer.gateway.oip_servicer import install
    from hyperinfer.node.app import Node, NodeConfig
    from hyperinfer.node.devices import Device, Hardware
    from hyperinfer.verify.sampling import SamplingPolicy

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = GatewayConfig(repository=args.repo, listen="127.0.0.1:0", db=":memory:", key=args.tmp / "gateway.key",
                        heartbeat_interval=0.2, max_message_bytes=args.max_message, max_workers=8,
                        open_pool=True, audit_rate=0.0)  # statuses are asserted: no random audits
    tls: dict = {}
    if args.tls is not None:
        cfg.tls_cert, cfg.tls_key, cfg.tls_ca = args.tls / "gateway.pem", args.tls / "gateway.key", args.tls / "ca.pem"
        tls = dict(tls_cert=args.tls / "node.pem", tls_key=args.tls / "node.key", tls_ca=args.tls / "ca.pem")
    gw = Gateway(cfg)
    if args.http:  # as `hyperinfer gateway` does: a ledger that quarantines through the registry
        from hyperinfer.gateway.ledger import install as install_ledger

        install_ledger(gw)
    # probation off: the sample rate alone decides, so tests know which requests are checked
    install(gw, policy=SamplingPolicy(default_rate=args.sample_rate, probation_rate=args.sample_rate))
    extra = ""
    if args.http:
        from hyperinfer.gateway import metrics, rest

        rest.install(gw)
        metrics.install(gw)
    gw.start()
    if args.http:
        extra = f" http={gw.rest.address} metrics={gw.metrics_server.address}"
    nodes = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for i in range(args.nodes):
            nc = NodeConfig(gateway=gw.address, key_path=args.tmp / f"node{i}.key", operator=f"operator{i}",
                            cache_dir=args.tmp / f"cache{i}", allow_unsigned=args.repo, max_concurrency=4, grace_s=1,
                            **tls)
            hw = Hardware([Device("cpu", "test cpu", "x86_64", 1)], [TARGET])
            factory = ort_factory(args.repo, tamper=i >= args.nodes - args.tamper)
            nodes.append(Node(nc, runner_factory=factory, hardware=hw).start())
        print(f"READY {gw.address} {gw.public_key.hex()}{extra}", flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    finally:
        for n in nodes:
            n.stop()
        gw.stop(grace=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

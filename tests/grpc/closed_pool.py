"""An in-process closed pool for attack tests: a real gateway (closed, admin key, audit rate)
and real nodes of admitted operators that joined it over gRPC and run ONNX Runtime (or a
cheating runner) instead of a TVM artifact. tests/grpc/test_admission.py, test_collusion.py."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import TARGET, import_tritonclient_grpc, make_package, ort_factory  # noqa: E402

from hyperinfer import dtypes  # noqa: E402
from hyperinfer.identity import load_or_create_key  # noqa: E402
from hyperinfer.verify.operators import certify  # noqa: E402
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json  # noqa: E402
from hyperinfer.verify.signing import public_bytes  # noqa: E402

MODEL = "mlp"


class Constant:
    """A colluder's runner: never computes, answers zeros of the right shape (and signs them)."""

    def __init__(self, runner):
        self._runner = runner
        self._out = None

    def run(self, inputs):
        if self._out is None:
            self._out = {k: np.zeros_like(v) for k, v in self._runner.run(inputs).items()}
        return dict(self._out)


@dataclass
class Pool:
    gateway: Any
    repo: Path
    tmp: Path
    admin: Ed25519PrivateKey
    nodes: list = field(default_factory=list)
    operators: dict = field(default_factory=dict)

    def operator(self, name: str, bond: float = 100.0, admit: bool = True) -> Ed25519PrivateKey:
        key = Ed25519PrivateKey.generate()
        if admit:
            self.gateway.operators.add(public_bytes(key), name, bond)
        self.operators[name] = key
        return key

    def node(self, name: str, operator: Ed25519PrivateKey | None, cheat: bool = False, **cfg) -> Any:
        from hyperinfer.node.app import Node, NodeConfig
        from hyperinfer.node.devices import Device, Hardware

        key_path = self.tmp / f"{name}.key"
        node_key, _ = load_or_create_key(key_path)
        cert = None
        if operator is not None:
            cert = self.tmp / f"{name}.cert"
            cert.write_bytes(certify(operator, public_bytes(node_key)).to_bytes())
        honest = ort_factory(self.repo)
        factory = (lambda p, m, t: Constant(honest(p, m, t))) if cheat else honest
        n = Node(NodeConfig(gateway=self.gateway.address, key_path=key_path, operator=name, operator_cert=cert,
                            cache_dir=self.tmp / f"cache-{name}", allow_unsigned=self.repo, max_concurrency=4,
                            grace_s=0.5, **cfg),
                 runner_factory=factory, hardware=Hardware([Device("cpu", "test cpu", "x86_64", 1)], [TARGET]))
        n.start()
        self.nodes.append(n)
        return n

    def close(self) -> None:
        for n in self.nodes:
            n.pool.stop(leave=False)
            n.server.stop(0)
            n.loader.stop()
        self.gateway.stop(grace=0)


def start_pool(tmp: Path, **config) -> Pool:
    """A closed gateway on 127.0.0.1:0 offering the unsigned ``mlp`` package (nodes load it from
    their local repository, --allow-unsigned DIR)."""
    from hyperinfer.gateway.app import Gateway, install_extensions
    from hyperinfer.gateway.config import GatewayConfig

    repo = tmp / "repo"
    if not (repo / MODEL).exists():
        make_package(repo, MODEL)
    admin = Ed25519PrivateKey.generate()
    cfg = dict(repository=repo, listen="127.0.0.1:0", db=tmp / "gateway.db", key=tmp / "gateway.key",
               heartbeat_interval=0.2, grace_seconds=0, admin_keys=[public_bytes(admin).hex()], probation_jobs=0)
    cfg.update(config)
    gw = Gateway(GatewayConfig(**cfg))
    install_extensions(gw)
    gw.start()
    return Pool(gw, repo, tmp, admin)


def client(address: str):
    return import_tritonclient_grpc().InferenceServerClient(address)


def infer(cli, x: np.ndarray, mode: str = "auto"):
    """(outputs, receipt) of one ModelInfer on ``mlp``."""
    tc = import_tritonclient_grpc()
    i = tc.InferInput("x", list(x.shape), dtypes.from_name(x.dtype.name).oip)
    i.set_data_from_numpy(x)
    res = cli.infer(MODEL, [i], parameters={"verify": mode})
    r = res.get_response()
    outputs = {o.name: res.as_numpy(o.name) for o in r.outputs}
    return outputs, receipt_from_json(r.parameters[RECEIPT_PARAMETER].string_param)

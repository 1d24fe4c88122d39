"""Wire a node together: key, devices, data plane, Worker server, pool client, model loader.

Shutdown order (SIGTERM/SIGINT): health NOT_SERVING (load balancers stop
sending), Leave (the gateway stops scheduling here), stop accepting calls and
let running ones finish (``server.stop(grace)``), exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hyperinfer.errors import InvalidArgument
from hyperinfer.identity import load_or_create_key, load_public_key
from hyperinfer.node.cache import ArtifactCache, default_cache_dir
from hyperinfer.node.dataplane import DataPlane, LoadedModel, TrustPolicy
from hyperinfer.node.devices import Hardware, detect
from hyperinfer.node.gatekeeper import Gatekeeper
from hyperinfer.node.models import BackgroundLoader, ModelManager, RunnerFactory, VersionLog, tvm_runner_factory
from hyperinfer.node.pool_client import JoinSpec, PoolClient
from hyperinfer.node.server import WorkerServer
from hyperinfer.node.servicer import NodeInfo
from hyperinfer.transport.tls import TLSFiles

log = logging.getLogger("hyperinfer.node")


def default_key_path() -> Path:
    return Path.home() / ".config" / "hyperinfer" / "node.key"


@dataclass
class NodeConfig:
    gateway: str
    """host:port of the gateway's Pool service."""
    listen: str = "127.0.0.1:0"
    """host:port for the Worker service; port 0 picks a free port."""
    advertise: str = ""
    """host:port the gateway should call; default: the listen address with the bound port."""
    key_path: Path = field(default_factory=default_key_path)
    """Ed25519 node key, created (mode 0600) if missing. Node id = its fingerprint."""
    operator: str = ""
    """Operator name; default: the user name."""
    device: str = "auto"
    """auto | cpu | cuda | rocm | vulkan."""
    targets: list[str] = field(default_factory=list)
    """Only these target ids (each must run here); default: every target the hardware runs."""
    max_concurrency: int = 4
    """Requests run at once; more get RESOURCE_EXHAUSTED at once."""
    threads: int | None = None
    """CPU threads for TVM; default: all cores."""
    cache_dir: Path | None = None
    """Artifact cache; default ~/.cache/hyperinfer/node/<node-id>/artifacts."""
    trust_publishers: list[str] = field(default_factory=list)
    """Publisher public keys (hex or key files) whose packages this node loads."""
    allow_unsigned: Path | None = None
    """A local model repository: unsigned packages are loaded only if this directory holds
    the very same package (native code only from where the node's operator put it)."""
    operator_cert: Path | None = None
    """Certificate by an admitted operator over this node's key (`hyperinfer operators certify`);
    a closed pool refuses nodes without one."""
    gateway_key: str | None = None
    """Pin the gateway's public key (hex or key file) instead of trusting the first one seen."""
    grace_s: float = 10.0
    """How long running requests may take to finish on shutdown."""
    batch_window_us: int = 0
    """Packages compiled with --max-batch: how long (microseconds) a batch waits for more
    requests after its first; 0 batches only what queued while the previous batch ran."""
    batching: bool = True
    """Run requests that arrive together as one batch (packages compiled with --max-batch)."""
    tls_cert: Path | None = None
    """PEM certificate the node presents (Worker port, and to the gateway as a client)."""
    tls_key: Path | None = None
    """Its PEM private key."""
    tls_ca: Path | None = None
    """PEM CA of the pool: checks the gateway, and only clients with a certificate it signed may
    call Worker (mutual TLS)."""
    metrics_listen: str = "off"
    """host:port of the node's Prometheus endpoint (GET /metrics), or "off"."""


def restrict_targets(hardware: Hardware, wanted: list[str]) -> Hardware:
    """``hardware`` with only the ``wanted`` targets (in its best-first order); an operator pins
    an artifact this way, e.g. to serve the portable x86-64 build on an AVX-512 machine."""
    if not wanted:
        return hardware
    unknown = [t for t in wanted if t not in hardware.targets]
    if unknown:
        raise InvalidArgument(f"--target {unknown[0]}: not runnable on this machine "
                              f"(runnable: {', '.join(hardware.targets) or 'none'})")
    return Hardware(hardware.devices, [t for t in hardware.targets if t in wanted])


class Node:
    def __init__(self, config: NodeConfig, runner_factory: RunnerFactory | None = None,
                 hardware: Hardware | None = None,
                 on_loaded: Callable[[LoadedModel], None] | None = None):
        self.config = c = config
        if c.max_concurrency < 1:
            raise InvalidArgument(f"--max-concurrency must be >= 1, got {c.max_concurrency}")
        if c.threads is not None and c.threads < 1:
            raise InvalidArgument(f"--threads must be >= 1, got {c.threads}")
        if c.batch_window_us < 0 or c.batch_window_us > 1_000_000:
            raise InvalidArgument(f"--batch-window-us must be between 0 and 1000000, got {c.batch_window_us}")
        if c.listen.rsplit(":", 1)[0] in ("0.0.0.0", "[::]", "::", "") and not c.advertise:
            raise InvalidArgument(f"--listen {c.listen} is a wildcard address the gateway cannot dial; "
                                  "also give --advertise HOST:PORT")
        self.key, self.key_created = load_or_create_key(c.key_path)
        if c.allow_unsigned is True:  # the flag used to be a switch; it now names a directory
            raise InvalidArgument("--allow-unsigned needs DIR: the local repository unsigned packages must come from")
        unsigned_dir = Path(c.allow_unsigned).expanduser() if c.allow_unsigned else None
        if unsigned_dir is not None and not unsigned_dir.is_dir():
            raise InvalidArgument(f"--allow-unsigned {unsigned_dir}: not a directory")
        self.trust = TrustPolicy([load_public_key(k) for k in c.trust_publishers], unsigned_dir)
        if not self.trust.trusted_publishers and not c.allow_unsigned:
            log.warning("no --trust-publisher given: this node will refuse every package "
                        "(use --allow-unsigned only for packages you built yourself)")
        self.hardware = restrict_targets(hardware or detect(c.device), c.targets)
        self.dataplane = DataPlane(self.key, c.max_concurrency,
                                   batch_window_s=c.batch_window_us / 1e6 if c.batching else None)
        self.cache = ArtifactCache(c.cache_dir or default_cache_dir(self.dataplane.node_id))
        self.info = NodeInfo(c.operator or _user(), self.hardware.targets, self.hardware.devices)
        cert = b""
        if c.operator_cert is not None:
            from hyperinfer.verify.operators import verify_cert

            p = Path(c.operator_cert).expanduser()
            if not p.is_file():
                raise InvalidArgument(f"--operator-cert {p}: no such file")
            cert = p.read_bytes()
            verify_cert(cert, self.dataplane.public_key)  # a wrong certificate is this operator's error: say so now
        self.tls = TLSFiles.load(c.tls_cert, c.tls_key, c.tls_ca)
        if self.tls is not None and (not self.tls.can_serve or self.tls.ca is None):
            raise InvalidArgument("a node's TLS is mutual: give --tls-cert, --tls-key and --tls-ca together")
        # a node works only for its gateway(s): Worker calls must be signed by a pinned key
        self.gatekeeper = Gatekeeper(self.dataplane.node_id, load_public_key(c.gateway_key) if c.gateway_key else None,
                                     pin_file=self.cache.root / "gateway-key.pin")
        self.server = WorkerServer(self.dataplane, self.info, c.listen,
                                   credentials=self.tls.server_credentials(require_client_cert=True)
                                   if self.tls else None, authorize=self.gatekeeper.check)
        advertise = c.advertise or self.server.address
        self.pool = PoolClient(c.gateway, self.key, self.dataplane,
                               JoinSpec(self.info.operator, advertise, self.hardware.targets, self.hardware.devices),
                               tls=self.tls, gatekeeper=self.gatekeeper, operator_cert=cert)
        self.manager = ModelManager(self.dataplane, self.cache, self.hardware.targets, self.trust,
                                    fetch=self.pool.fetch,
                                    versions=VersionLog(self.cache.root / "loaded-versions.json"),
                                    runner_factory=runner_factory or tvm_runner_factory(c.threads),
                                    on_loaded=lambda m: self._loaded(m, on_loaded))
        self.loader = BackgroundLoader(self.manager)
        self.metrics = None
        if c.metrics_listen and c.metrics_listen.lower() != "off":
            from hyperinfer.node.metrics import NodeMetrics

            self.metrics = NodeMetrics(self, c.metrics_listen)
        self.pool.on_offers = self.loader.submit
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def _loaded(self, model: LoadedModel, callback: Callable[[LoadedModel], None] | None) -> None:
        self.pool.heartbeat_soon()  # the gateway schedules a model once a heartbeat reports it loaded
        if callback is not None:
            callback(model)

    @property
    def node_id(self) -> str:
        return self.dataplane.node_id

    @property
    def address(self) -> str:
        return self.server.address

    def start(self) -> "Node":
        self.server.start()
        if self.metrics is not None:
            self.metrics.server.start()
        self.loader.start()
        self.pool.start()
        return self

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.server.not_serving()
            self.pool.stop(leave=True)
            self.loader.stop()
            self.server.stop(self.config.grace_s)
            if self.metrics is not None:
                self.metrics.server.stop()
            self.dataplane.close()
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def run_until_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then shut down gracefully (main thread only)."""
        stop = threading.Event()

        def handler(signum, frame):
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.stop()


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "") or "anonymous"

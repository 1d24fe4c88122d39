"""A whole pool on this machine: one gateway and N nodes as real child processes on 127.0.0.1.

What `hyperinfer up` runs. :class:`LocalPool` prepares a state directory
(keys, database, caches, logs), compiles the bundled PP-OCR detector if the
repository has no package, starts ``python -m hyperinfer gateway`` and
``python -m hyperinfer node`` children (each node with its own key and
operator), waits until every node has joined and loaded every model, reports
children that exit, and stops them all::

    pool = LocalPool(UpOptions(state=Path(".hyperinfer/up"), nodes=2))
    pool.prepare()                  # keys, repository (may compile), port check
    try:
        pool.start()
        nodes = pool.wait_ready()   # [NodeView], raises with the log file named if a child dies
        ...
        for gone in pool.reap():    # children that exited since the last call
            ...
    finally:
        pool.stop()                 # SIGTERM, bounded wait, then SIGKILL: nothing left behind

Children run in their own process groups (a terminal's Ctrl-C reaches only
``up``, which stops them in order) and, on Linux, get SIGTERM if ``up`` dies
without cleaning up. Output goes to one log file per child in the state dir.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hyperinfer.errors import FailedPrecondition, HyperinferError, InvalidArgument, PermissionDenied, Unavailable

HOST = "127.0.0.1"
DEFAULT_STATE = Path(".hyperinfer") / "up"
BUNDLED_MODEL = "ppocr-det"
BUNDLED_SHAPE = {"x": (1, 3, 640, 640)}
BUNDLED_TARGETS = ["native", "cpu-x86_64"]
MAX_NODES = 32

Say = Callable[[str], None]


@dataclass
class UpOptions:
    state: Path = DEFAULT_STATE
    """Keys, gateway database, artifact caches and logs."""
    repository: Path | None = None
    """Model repository; default ``<state>/repo``. Without any package the bundled PP-OCR detector is compiled into it."""
    nodes: int = 2
    port: int = 8001
    """Gateway port on 127.0.0.1; 0 picks a free one."""
    http_port: int | None = None
    """KServe v2 REST port on 127.0.0.1; None: 8000, or a free one when ``port`` is 0; 0 picks a free one."""
    metrics_port: int | None = None
    """Prometheus /metrics port on 127.0.0.1; None: 8002, or a free one when ``port`` is 0; 0 picks a free one."""
    sample_rate: float | None = None
    """Passed to ``hyperinfer gateway --sample-rate``; None keeps the gateway's default."""
    threads: int = 1
    """TVM CPU threads per node."""
    model_timeout: float = 300.0
    """Seconds to wait for every node to join and load every model."""
    heartbeat_interval: float = 1.0
    max_concurrency: int = 4
    trust_publishers: list[str] = field(default_factory=list)
    allow_unsigned: bool = False
    stop_timeout: float = 15.0
    """Seconds children get to exit after SIGTERM before SIGKILL."""
    node_targets: list[str] = field(default_factory=list)
    """Pin node i to artifact ``node_targets[i % len]`` (``hyperinfer node --target``); empty: each runs its best."""
    gateway_args: list[str] = field(default_factory=list)
    """More ``hyperinfer gateway`` flags (e.g. ``--probation-jobs 0``)."""
    bond: float = 100.0
    """Bond each node's operator is admitted with (every node runs for its own operator)."""
    open_model_control: bool = False
    """``gateway --open-model-control``: anyone may load/unload models (else only with admin.key)."""
    tls: bool = False
    """TLS everywhere: a pool CA and certificates in ``<state>/tls`` (made once by
    :mod:`hyperinfer.pki`), mutual TLS between the gateway and the nodes."""

    def validate(self) -> "UpOptions":
        if not 1 <= self.nodes <= MAX_NODES:
            raise InvalidArgument(f"--nodes {self.nodes}: must be between 1 and {MAX_NODES}")
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"--port {self.port}: must be in 0..65535 (0 picks a free port)")
        for flag, value in (("--http-port", self.http_port), ("--metrics-port", self.metrics_port)):
            if value is not None and not 0 <= value <= 65535:
                raise InvalidArgument(f"{flag} {value}: must be in 0..65535 (0 picks a free port)")
        if self.sample_rate is not None and not 0.0 <= self.sample_rate <= 1.0:
            raise InvalidArgument(f"--sample-rate {self.sample_rate}: must be in [0, 1]")
        if self.threads < 1:
            raise InvalidArgument(f"--threads {self.threads}: must be >= 1")
        if not 0 < self.model_timeout <= 24 * 3600:
            raise InvalidArgument(f"--model-timeout {self.model_timeout}: must be in (0, 86400] seconds")
        if not 0 < self.heartbeat_interval <= 3600:
            raise InvalidArgument(f"--heartbeat-interval {self.heartbeat_interval}: must be in (0, 3600] seconds")
        if self.max_concurrency < 1:
            raise InvalidArgument(f"--max-concurrency {self.max_concurrency}: must be >= 1")
        self.state = Path(self.state).expanduser()
        if self.state.exists() and not self.state.is_dir():
            raise InvalidArgument(f"--state {self.state}: not a directory")
        if self.repository is None:
            self.repository = self.state / "repo"
        self.repository = Path(self.repository).expanduser()
        if self.repository.exists() and not self.repository.is_dir():
            raise InvalidArgument(f"--repository {self.repository}: not a directory")
        return self


@dataclass
class Child:
    """One child process: its role, command line, log file and Popen."""

    name: str  # "gateway", "node1", ...
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    node_id: str = ""
    operator: str = ""
    exit_reported: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_text(self) -> str:
        rc = self.proc.returncode if self.proc else None
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with code {rc}"

    def last_error(self) -> str:
        """The child's last ``Error:`` line (or last line) from its log, for messages."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        for ln in reversed(lines[-50:]):
            if ln.startswith("Error:") or " ERROR " in ln:
                return ln
        return lines[-1] if lines else ""


@dataclass
class NodeView:
    """A node as the gateway sees it, joined with what ``up`` knows (pid, log)."""

    name: str
    node_id: str
    operator: str
    pid: int
    log_path: Path
    alive: bool
    state: str = "starting"
    address: str = ""
    targets: list[str] = field(default_factory=list)  # targets of the artifacts it loaded
    node_targets: list[str] = field(default_factory=list)  # targets its hardware runs, best first
    loaded: list[str] = field(default_factory=list)  # NAME/VERSION
    jobs: int = 0
    checks: int = 0
    faults: int = 0
    credits: float = 0.0
    stake: float = 0.0


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = HOST, flag: str = "--port") -> None:
    # a plain bind without SO_REUSEPORT: gRPC servers set SO_REUSEPORT, so a second
    # gateway on a busy port would otherwise start silently and split the traffic
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise FailedPrecondition(
                f"port {port} on {host} is in use (another gateway or `hyperinfer up`?); "
                f"pass {flag} N (or {flag} 0 for a free one)") from None


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        _LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG: SIGTERM when `up` dies
    except Exception:  # noqa: BLE001 - best effort
        pass


try:  # loaded before any fork: the child only calls it
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    if _LIBC is not None:
        _LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
except Exception:  # noqa: BLE001
    _LIBC = None


class LocalPool:
    """Start, watch and stop a gateway and ``options.nodes`` nodes as child processes."""

    def __init__(self, options: UpOptions, say: Say | None = None, stop_event: threading.Event | None = None):
        self.options = options.validate()
        self.say: Say = say or (lambda msg: print(msg, flush=True))
        self.stop_event = stop_event or threading.Event()
        self.state = self.options.state
        self.repository: Path = self.options.repository  # type: ignore[assignment]
        self.port = self.options.port
        self.address = ""
        # Triton's ports next to the gateway's gRPC one; free ones when the gRPC port is picked too
        default = (lambda p: p) if self.options.port else (lambda p: 0)
        o = self.options
        self.http_port = default(8000) if o.http_port is None else o.http_port
        self.metrics_port = default(8002) if o.metrics_port is None else o.metrics_port
        self.http_address = ""
        self.metrics_address = ""
        self.gateway: Child | None = None
        self.nodes: list[Child] = []
        self.models: list[str] = []  # NAME/VERSION offered
        self.compiled = False
        self._lock_file = None
        self._trusted: list[str] = []
        self._stopped = False

    # ------------------------------------------------------------ prepare

    @property
    def tls_dir(self) -> Path:
        return self.state / "tls"

    def tls_flags(self, name: str) -> list[str]:
        """``--tls-cert/--tls-key/--tls-ca`` for ``name`` (gateway, nodeN, client); [] without TLS."""
        if not self.options.tls:
            return []
        d = self.tls_dir
        return ["--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}.key"), "--tls-ca", str(d / "ca.pem")]

    @property
    def client_tls(self) -> Any:
        """TLSFiles a client of this pool uses (None without TLS)."""
        if not self.options.tls:
            return None
        from hyperinfer.transport.tls import TLSFiles

        return TLSFiles.load(ca=self.tls_dir / "ca.pem")

    @property
    def children(self) -> list[Child]:
        return [c for c in [self.gateway, *self.nodes] if c is not None]

    def prepare(self, progress: bool = True) -> None:
        """State dir, lock, port, repository (compiling the bundled model if empty), trust, keys."""
        o = self.options
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock()
        for p, flag in ((self.port, "--port"), (self.http_port, "--http-port"), (self.metrics_port, "--metrics-port")):
            if p:  # before a compile that may take minutes
                check_port_free(p, flag=flag)
        self.repository.mkdir(parents=True, exist_ok=True)
        if not self._packages():
            self.compile_bundled(progress)
        if not self.port:
            self.port = free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.address = f"{HOST}:{self.port}"
        self.http_address = f"{HOST}:{self.http_port}"
        self.metrics_address = f"{HOST}:{self.metrics_port}"
        packages = self._packages()
        if not packages:
            raise FailedPrecondition(f"no model package in {self.repository}")
        self.models = [f"{p.name}/{p.version}" for p in packages]
        self._check_trust(packages)
        from hyperinfer.identity import load_or_create_key
        from hyperinfer.verify.signing import key_id

        load_or_create_key(self.state / "gateway.key")
        load_or_create_key(self.admin_key)  # reads pool status (the pool API is closed)
        if o.tls:
            from hyperinfer import pki

            pki.pool_pki(self.tls_dir, ["gateway", *[f"node{i}" for i in range(1, o.nodes + 1)], "client"])
        self.nodes = []
        for i in range(1, o.nodes + 1):
            key, _ = load_or_create_key(self.state / f"node{i}.key")
            name = f"node{i}"
            self.nodes.append(Child(name, [], self.state / f"{name}.log", node_id=key_id(key),
                                    operator=f"operator-{i}"))
        self._admit_operators()

    @property
    def admin_key(self) -> Path:
        return self.state / "admin.key"

    def _admit_operators(self) -> None:
        """A closed pool, as in production: node i runs for operator-i, whose key
        (``operator-i.key``) is admitted into the gateway database with a bond and certifies
        the node key (``node-i.cert``)."""
        from hyperinfer.gateway.operators import OperatorBook
        from hyperinfer.gateway.store import open_store
        from hyperinfer.identity import load_or_create_key
        from hyperinfer.verify.operators import certify
        from hyperinfer.verify.signing import key_id, public_bytes

        store = open_store(self.state / "gateway.db")
        try:
            book = OperatorBook(store)
            for i, n in enumerate(self.nodes, 1):
                op_key, _ = load_or_create_key(self.state / f"{n.operator}.key")
                if book.get(key_id(op_key), fresh=True) is None:
                    book.add(public_bytes(op_key), n.operator, self.options.bond)
                node_key, _ = load_or_create_key(self.state / f"node{i}.key")
                (self.state / f"node{i}.cert").write_bytes(certify(op_key, public_bytes(node_key), n.operator).to_bytes())
        finally:
            store.close()

    def _lock(self) -> None:
        path = self.state / "up.lock"
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            other = f.read().strip() or "?"
            f.close()
            raise FailedPrecondition(f"another `hyperinfer up` (pid {other}) is using {self.state}; "
                                     "stop it or pass --state DIR") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def _packages(self) -> list:
        from hyperinfer.package import ModelRepository

        newest: dict[str, Any] = {}
        try:
            for p in ModelRepository(self.repository):
                newest[p.name] = p  # versions come in ascending order
        except HyperinferError as e:
            raise FailedPrecondition(f"--repository {self.repository}: {e}") from None
        return list(newest.values())

    def compile_bundled(self, progress: bool = True) -> None:
        """Fetch PP-OCRv4 detection and compile it for this CPU, signed with ``<state>/publisher.key``."""
        from hyperinfer import zoo
        from hyperinfer.compile import compile_model
        from hyperinfer.identity import load_or_create_key

        self.say(f"no model package in {self.repository}: compiling the bundled {BUNDLED_MODEL} "
                 f"(PP-OCRv4 text detection) for {', '.join(BUNDLED_TARGETS)}")
        onnx_path = zoo.fetch_ppocr(names=(BUNDLED_MODEL,))[BUNDLED_MODEL]
        key_path = self.state / "publisher.key"
        load_or_create_key(key_path)
        compile_model(onnx_path, BUNDLED_MODEL, out_dir=self.repository, targets=list(BUNDLED_TARGETS),
                      input_shapes=BUNDLED_SHAPE, sign_key=key_path, progress=progress, force=True)
        self.compiled = True

    def _check_trust(self, packages: list) -> None:
        """Nodes refuse packages they do not trust; say so now instead of timing out later."""
        from hyperinfer.identity import load_public_key
        from hyperinfer.verify.publisher import verify_manifest_signature

        trusted = list(self.options.trust_publishers)
        if (self.state / "publisher.key").is_file():
            trusted.append(str(self.state / "publisher.key"))
        keys = [load_public_key(k) for k in trusted]
        self._trusted = trusted
        if self.options.allow_unsigned:
            return
        for p in packages:
            sig = p.signature_path.read_bytes() if p.signature_path.is_file() else b""
            try:
                verify_manifest_signature(sig, p.manifest_bytes, keys)
            except PermissionDenied as e:
                hint = ("pass --allow-unsigned to serve packages you built yourself" if not sig
                        else "pass --trust-publisher KEY (or --allow-unsigned)")
                raise PermissionDenied(f"nodes would refuse {p.name}/{p.version} in {self.repository}: {e}; "
                                       f"{hint}") from None

    # -------------------------------------------------------------- start

    def _spawn(self, child: Child) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
        with open(child.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} hyperinfer up: "
                      f"{' '.join(child.args)}\n".encode())
            log.flush()
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "hyperinfer", *child.args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_set_pdeathsig if _LIBC is not None else None,
            )

    def start(self) -> None:
        """Start the gateway, wait until it listens, then start the nodes."""
        if not self.nodes:
            raise FailedPrecondition("LocalPool.start() before prepare()")
        o = self.options
        gw_args = ["gateway", "--repository", str(self.repository), "--listen", self.address,
                   "--db", str(self.state / "gateway.db"), "--key", str(self.state / "gateway.key"),
                   "--heartbeat-interval", f"{o.heartbeat_interval:g}", "--admin-key", str(self.admin_key),
                   *(["--open-model-control"] if o.open_model_control else []),
                   "--http-listen", self.http_address, "--metrics-listen", self.metrics_address]
        if o.sample_rate is not None:
            gw_args += ["--sample-rate", f"{o.sample_rate:g}"]
        gw_args += self.tls_flags("gateway") + list(o.gateway_args)
        self.gateway = Child("gateway", gw_args, self.state / "gateway.log")
        log_start = self.gateway.log_path.stat().st_size if self.gateway.log_path.exists() else 0
        self._spawn(self.gateway)
        self._wait_gateway_listening(log_start, timeout=min(120.0, o.model_timeout))
        trust = [a for k in self._trusted for a in ("--trust-publisher", k)]
        for i, n in enumerate(self.nodes, 1):
            n.args = ["node", "--gateway", self.address, "--listen", f"{HOST}:0",
                      "--key", str(self.state / f"node{i}.key"), "--operator", n.operator,
                      "--cache", str(self.state / f"cache{i}"), "--device", "cpu", "--threads", str(o.threads),
                      "--max-concurrency", str(o.max_concurrency), "--grace", "2", *trust,
                      "--operator-cert", str(self.state / f"node{i}.cert"),
                      "--gateway-key", str(self.state / "gateway.key"), *self.tls_flags(f"node{i}")]
            if o.allow_unsigned:  # only what this repository holds
                n.args += ["--allow-unsigned", str(self.repository)]
            if o.node_targets:
                pinned = o.node_targets[(i - 1) % len(o.node_targets)]
                n.args += ["--target", pinned]
                if pinned.split("-", 1)[0] == "vulkan":  # WGSL over wgpu: any adapter, lavapipe included
                    n.args[n.args.index("--device") + 1] = "vulkan"
            self._spawn(n)

    def _wait_gateway_listening(self, log_start: int, timeout: float) -> None:
        gw = self.gateway
        assert gw is not None
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"listening on (\S+:\d+)")
        while True:
            try:
                with open(gw.log_path, "rb") as f:
                    f.seek(log_start)
                    text = f.read().decode(errors="replace")
            except OSError:
                text = ""
            if pattern.search(text):
                return
            if not gw.alive():
                gw.exit_reported = True
                raise Unavailable(f"the gateway (pid {gw.pid}) {gw.exit_text()} while starting: "
                                  f"{gw.last_error() or 'no output'} (log: {gw.log_path})")
            if time.monotonic() > deadline:
                raise Unavailable(f"the gateway did not start listening on {self.address} within {timeout:.0f} s "
                                  f"(log: {gw.log_path})")
            if self.stop_event.wait(0.1):
                raise Stopped()

    # ------------------------------------------------------------- status

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The gateway's Pool.Status as plain values (see ``hyperinfer pool status --json``)."""
        from hyperinfer.pool_status import fetch_status

        return fetch_status(self.address, timeout=timeout, tls=self.client_tls, key=self.admin_key)

    def views(self, status: dict[str, Any] | None) -> list[NodeView]:
        """One NodeView per node this pool started, from a status (None: only what up knows)."""
        by_id = {n["node_id"]: n for n in (status or {}).get("nodes", [])}
        out = []
        for c in self.nodes:
            v = NodeView(c.name, c.node_id, c.operator, c.pid, c.log_path, c.alive())
            n = by_id.get(c.node_id)
            if n is not None:
                v.state = n["state"]
                v.address = n["address"]
                v.loaded = [f"{m['name']}/{m['version']}" for m in n["loaded"]]
                v.targets = sorted({m["target_id"] for m in n["loaded"]})
                v.node_targets = list(n["targets"])
                v.jobs, v.checks, v.faults = n["jobs"], n["checks"], n["faults"]
                v.credits, v.stake = n["credits"], n["stake"]
            if not v.alive:
                v.state = "gone"
            out.append(v)
        return out

    @staticmethod
    def _missing(v: NodeView, models: list[dict[str, Any]]) -> list[str]:
        """Models this node can run (an artifact for one of its targets) but has not loaded."""
        return [f"{m['name']}/{m['version']}" for m in models
                if set(m["targets"]) & set(v.node_targets) and f"{m['name']}/{m['version']}" not in v.loaded]

    def _ready(self, v: NodeView, models: list[dict[str, Any]]) -> bool:
        return v.alive and v.state == "healthy" and not self._missing(v, models)

    def wait_ready(self, timeout: float | None = None, poll: float = 0.25) -> list[NodeView]:
        """Block until every node is healthy with every model it can run loaded.

        Raises (naming the log file) if a child exits or the wait times out, and if
        no offered model has an artifact the nodes can run.
        """
        timeout = self.options.model_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            self._check_gateway()
            for c in self.nodes:
                if not c.alive():
                    c.exit_reported = True
                    raise Unavailable(f"{c.name} (pid {c.pid}) {c.exit_text()} before it was ready: "
                                      f"{c.last_error() or 'no output'} (log: {c.log_path})")
            try:
                status = self.status(timeout=2.0)
                last_error = ""
            except HyperinferError as e:
                status, last_error = None, str(e)
            views = self.views(status)
            models = status["models"] if status else []
            for v in views:
                if v.state == "quarantined":
                    raise FailedPrecondition(
                        f"{v.name} ({v.node_id[:12]}) is quarantined in {self.state / 'gateway.db'} from an "
                        "earlier run; use a fresh --state DIR")
            if models and all(self._ready(v, models) for v in views):
                served = [m for m in models if m["ready_nodes"] > 0]
                if not served:
                    have = "; ".join(f"{m['name']}/{m['version']}: {', '.join(m['targets']) or 'none'}" for m in models)
                    raise FailedPrecondition(
                        f"no model in {self.repository} has an artifact these nodes can run (nodes run "
                        f"{', '.join(views[0].node_targets)}; packages have {have})")
                self.models = [f"{m['name']}/{m['version']}" for m in served]
                for m in models:
                    if m["ready_nodes"] == 0:
                        self.say(f"warning: {m['name']}/{m['version']} has no artifact for these nodes' targets "
                                 f"(has {', '.join(m['targets']) or 'none'}); it is offered but not served")
                return views
            if time.monotonic() > deadline:
                if status is None:
                    raise Unavailable(f"the gateway at {self.address} did not answer within {timeout:.0f} s "
                                      f"({last_error}; log: {self.gateway.log_path})")
                if not models:
                    raise Unavailable(f"the gateway offers no model from {self.repository} after {timeout:.0f} s "
                                      f"(log: {self.gateway.log_path})")
                detail = "; ".join(
                    f"{v.name} (pid {v.pid}) is {v.state}"
                    + (f", has not loaded {', '.join(self._missing(v, models))}" if v.state != "starting" else "")
                    + f" (log: {v.log_path})"
                    for v in views if not self._ready(v, models))
                raise Unavailable(f"the pool was not ready within {timeout:.0f} s (--model-timeout): {detail}")
            if self.stop_event.wait(poll):
                raise Stopped()

    def _check_gateway(self) -> None:
        gw = self.gateway
        if gw is not None and not gw.alive():
            gw.exit_reported = True
            raise Unavailable(f"the gateway (pid {gw.pid}) {gw.exit_text()}: {gw.last_error() or 'no output'} "
                              f"(log: {gw.log_path})")

    def reap(self) -> list[Child]:
        """Nodes that exited since the last call (each reported once); raises if the gateway exited."""
        self._check_gateway()
        gone = []
        for c in self.nodes:
            if not c.exit_reported and c.proc is not None and not c.alive():
                c.exit_reported = True
                gone.append(c)
        return gone

    def alive_nodes(self) -> list[Child]:
        return [c for c in self.nodes if c.alive()]

    # --------------------------------------------------------------- stop

    def stop(self, timeout: float | None = None, force: threading.Event | None = None) -> list[Child]:
        """SIGTERM the nodes then the gateway, wait (bounded), SIGKILL what is left; returns the killed ones.

        ``force`` (e.g. set by a second Ctrl-C) skips the rest of the wait.
        """
        if self._stopped:
            return []
        self._stopped = True
        timeout = self.options.stop_timeout if timeout is None else timeout
        killed: list[Child] = []
        # nodes first (they leave the pool), then the gateway
        for group in (self.nodes, [self.gateway] if self.gateway else []):
            for c in group:
                if c.alive():
                    _signal_group(c, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(c.alive() for c in group) and time.monotonic() < deadline:
                if force is not None and force.is_set():
                    break
                time.sleep(0.05)
            for c in group:
                if c.alive():
                    _signal_group(c, signal.SIGKILL)
                    killed.append(c)
                if c.proc is not None:
                    try:
                        c.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
                # anything the child left in its process group
                _signal_group(c, signal.SIGKILL, only_group=True)
        if self._lock_file is not None:
            try:
                self._lock_file.close()
            except OSError:
                pass
            self._lock_file = None
        return killed


class Stopped(Exception):
    """A stop was requested (signal) while waiting."""


def _signal_group(c: Child, sig: int, only_group: bool = False) -> None:
    if c.proc is None:
        return
    try:
        os.killpg(c.proc.pid, sig)  # the child leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        if not only_group and c.proc.poll() is None:
            try:
                c.proc.send_signal(sig)
            except ProcessLookupError:
                pass

"""Gateway settings: one typed class, filled from `hyperinfer gateway` flags (or
``HYPERINFER_GATEWAY_*`` environment variables, which the CLI maps to the same flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hyperinfer.errors import InvalidArgument
from hyperinfer.transport.limits import DEFAULT_IDLE_S, DEFAULT_MAX_STREAMS
from hyperinfer.transport.server import DEFAULT_MAX_CONCURRENT_RPCS, DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_LISTEN = "127.0.0.1:8001"  # loopback by default; pass --listen 0.0.0.0:8001 to accept remote nodes
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_AUDIT_RATE = 0.02
DEFAULT_HTTP_PORT = 8000  # Triton's ports: HTTP 8000, gRPC 8001, metrics 8002
DEFAULT_METRICS_PORT = 8002
# artifacts go out in 1 MiB chunks: a smaller limit could not carry one
MIN_MESSAGE_BYTES = 2 * 1024 * 1024


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hyperinfer"


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "hyperinfer"


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/hyperinfer/gateway.key`` (``~/.config/hyperinfer/gateway.key``)."""
    return _config_home() / "gateway.key"


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/hyperinfer/gateway.db`` (``~/.local/share/hyperinfer/gateway.db``).

    Per user, next to the default key, not inside the model repository: the
    repository may be read-only or shared, and the registry and ledger belong
    to the gateway identity, not to the models.
    """
    return _data_home() / "gateway.db"


@dataclass
class GatewayConfig:
    repository: Path
    """Model repository: ``DIR/NAME/VERSION/manifest.json`` packages written by `hyperinfer compile`."""

    listen: str = DEFAULT_LISTEN
    """host:port for every gateway service (Pool, Open Inference Protocol, health, reflection)."""

    db: Path | str = field(default_factory=default_db_path)
    """Registry, ledger and evidence: an SQLite file (":memory:" for tests) or a
    ``postgresql://`` URL shared by several gateways."""

    key: Path = field(default_factory=default_key_path)
    """Gateway Ed25519 key, created with mode 0600 on first start."""

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between node heartbeats; a node silent for 3 intervals is stale."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message accepted or sent (larger ones get RESOURCE_EXHAUSTED)."""

    max_workers: int = 16
    """gRPC server threads."""

    workers: int = 1
    """Gateway processes sharing ``listen`` (SO_REUSEPORT) and the store (``--workers``);
    see :func:`hyperinfer.gateway.app.serve`."""

    worker_index: int = 0
    """Which of the ``workers`` processes this is (0 starts and stops the others)."""

    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    """RPCs held at once (running or waiting for a thread); more get RESOURCE_EXHAUSTED."""

    max_artifact_streams: int = DEFAULT_MAX_STREAMS
    """FetchArtifact streams at once (more get RESOURCE_EXHAUSTED; nodes retry), so downloads
    never take the threads inference and health need."""

    artifact_idle_s: float = DEFAULT_IDLE_S
    """A FetchArtifact stream whose client has not read for this long is cancelled."""

    max_pending_checks: int = 1000
    """Background checks queued at once; a sampled request beyond it is recorded ``skipped``
    ("check queue full")."""

    tls_cert: Path | None = None
    """PEM certificate the gateway presents (to clients, and to nodes as its client certificate)."""

    tls_key: Path | None = None
    """Its PEM private key."""

    tls_ca: Path | None = None
    """PEM CA that signed the nodes' certificates (checked when calling them)."""

    grace_seconds: float = 5.0
    """On shutdown, how long in-flight calls may finish."""

    # verification and ledger; None keeps the defaults of verify.sampling / gateway.ledger
    sample_rate: float | None = None
    """Share of requests re-run on another operator's node (mode ``auto``/``sync``), in [0, 1]."""

    model_sample_rates: dict[str, float] = field(default_factory=dict)
    """Per-model sample rates that override ``sample_rate``."""

    probation_jobs: int | None = None
    """Probation (verify.probation): a new node, or one back from a fault, has its answers held
    until checked, one job at a time, until K checks in a row passed (0 disables probation)."""

    quarantine_after: int | None = None
    """Verification faults before a node is quarantined (0: never)."""

    reward_per_job: float | None = None
    """Credit R for each job a node answers."""

    initial_stake: float | None = None
    """Stake a node starts with."""

    slash_per_fault: float | None = None
    """Stake S taken from a node for each fault."""

    node_timeout: float | None = None
    """Seconds a node call may take before it is retried elsewhere."""

    max_attempts: int | None = None
    """Nodes tried for one request before UNAVAILABLE."""

    open_pool: bool = False
    """Let nodes join without an admitted operator: each new operator starts with bond 0 and on
    probation, and receipts say ``admission: open``. Default: only admitted operators
    (``hyperinfer operators add``) whose nodes carry a certificate may join."""

    admin_keys: list[str] = field(default_factory=list)
    """Admin public keys (hex or key files): they may read Pool.Status and call admin-only RPCs."""

    audit_rate: float | None = None
    """Share of requests the gateway re-runs itself with ONNX Runtime (a floor no collusion of
    nodes can fool), in [0, 1]. Default 0.02."""

    open_model_control: bool = False
    """Let anyone call RepositoryModelLoad/Unload even when the gateway has admin keys (a local
    development pool, as Triton's default); otherwise they are admin-only once there is one."""
    timeout_slash: float | None = None
    """Stake taken from a node for each call that ran past ``node_timeout`` (default 1)."""

    quarantine_after_timeouts: int | None = None
    """Timeouts before a node is quarantined (0: never; default 5)."""

    http_listen: str | None = None
    """host:port of the KServe v2 REST front door, or "off". None: the host of ``listen``
    with port 8000 (Triton's), or a free port when ``listen`` asks for port 0."""

    metrics_listen: str | None = None
    """host:port of the Prometheus metrics endpoint (``/metrics``), or "off". None: the
    host of ``listen`` with port 8002 (Triton's), or a free port when ``listen`` asks for port 0."""

    def validate(self) -> "GatewayConfig":
        self.repository = Path(self.repository).expanduser()
        if not self.repository.is_dir():
            raise InvalidArgument(f"--repository {self.repository}: not a directory")
        if isinstance(self.db, str) and "://" in self.db:
            from hyperinfer.gateway.store import is_database_url

            if not is_database_url(self.db):
                raise InvalidArgument(f"--db {self.db.split('://')[0]}://...: expected a file path or a "
                                      "postgresql://USER@HOST[:PORT]/DBNAME URL")
        elif str(self.db) != ":memory:":
            self.db = Path(self.db).expanduser()
        self.key = Path(self.key).expanduser()
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(f"--listen {self.listen!r}: expected HOST:PORT (port 0 picks a free one)")
        self.http_listen = _side_port(self.http_listen, host, port, DEFAULT_HTTP_PORT, "--http-listen")
        self.metrics_listen = _side_port(self.metrics_listen, host, port, DEFAULT_METRICS_PORT, "--metrics-listen")
        if not 0 < self.heartbeat_interval <= 3600:
            raise InvalidArgument(f"--heartbeat-interval {self.heartbeat_interval}: must be in (0, 3600] seconds")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise InvalidArgument(f"max_message_bytes {self.max_message_bytes}: at least {MIN_MESSAGE_BYTES}")
        if self.sample_rate is not None and not 0.0 <= self.sample_rate <= 1.0:
            raise InvalidArgument(f"--sample-rate {self.sample_rate}: must be in [0, 1]")
        for model, rate in self.model_sample_rates.items():
            if not 0.0 <= rate <= 1.0:
                raise InvalidArgument(f"--model-sample-rate {model}={rate}: must be in [0, 1]")
        for name in ("probation_jobs", "quarantine_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise InvalidArgument(f"--{name.replace('_', '-')} {v}: must be >= 0")
        for name, flag in (("reward_per_job", "--reward"), ("initial_stake", "--stake"),
                           ("slash_per_fault", "--slash")):
            v = getattr(self, name)
            if v is not None and not 0 <= v < float("inf"):
                raise InvalidArgument(f"{flag} {v}: must be a finite number >= 0")
        if self.node_timeout is not None and not 0 < self.node_timeout <= 3600:
            raise InvalidArgument(f"--node-timeout {self.node_timeout}: must be in (0, 3600] seconds")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise InvalidArgument(f"--max-attempts {self.max_attempts}: at least 1")
        if self.audit_rate is not None and not 0.0 <= self.audit_rate <= 1.0:
            raise InvalidArgument(f"--audit-rate {self.audit_rate}: must be in [0, 1]")
        if self.max_workers < 1:
            raise InvalidArgument(f"max_workers {self.max_workers}: at least 1")
        if not 1 <= self.workers <= 64:
            raise InvalidArgument(f"--workers {self.workers}: must be in [1, 64]")
        if self.workers > 1 and str(self.db) == ":memory:":
            raise InvalidArgument("--workers: the worker processes share the store; use a database file or URL")
        for name in ("max_concurrent_rpcs", "max_artifact_streams", "max_pending_checks"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"--{name.replace('_', '-')} {getattr(self, name)}: at least 1")
        if not self.artifact_idle_s > 0:
            raise InvalidArgument(f"artifact_idle_s {self.artifact_idle_s}: must be > 0")
        if self.timeout_slash is not None and not 0 <= self.timeout_slash < float("inf"):
            raise InvalidArgument(f"--timeout-slash {self.timeout_slash}: must be a finite number >= 0")
        if self.quarantine_after_timeouts is not None and self.quarantine_after_timeouts < 0:
            raise InvalidArgument(f"--quarantine-after-timeouts {self.quarantine_after_timeouts}: must be >= 0")
        return self


def _side_port(value: str | None, host: str, grpc_port: str, default_port: int, flag: str) -> str:
    """The REST or metrics address: as given, "off", or derived from the gRPC ``--listen``."""
    if value is None:
        return f"{host}:{0 if grpc_port == '0' else default_port}"
    value = value.strip()
    if value.lower() == "off":
        return "off"
    h, sep, p = value.rpartition(":")
    if not sep or not h or not p.isdigit() or int(p) > 65535:
        raise InvalidArgument(f"{flag} {value!r}: expected HOST:PORT (port 0 picks a free one) or off")
    return value

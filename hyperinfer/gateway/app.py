"""The gateway as a whole: the :class:`Gateway` object the components share, and :func:`serve`.

A :class:`Gateway` holds the config, the gateway key and id, the store, the
model catalog, the registry, the optional ledger and the gRPC server. Other
gateway components receive it and attach themselves before :meth:`Gateway.start`::

    gw = Gateway(config)                  # opens store, key, catalog, registry
    gw.add_servicer(add_fn, servicer, "inference.GRPCInferenceService")
    gw.ledger = Ledger(gw.store)          # filled into `pool status`
    gw.add_shutdown_hook(scheduler.close)
    gw.start(); ...; gw.stop()

:func:`serve` (what `hyperinfer gateway` runs) does the same, attaching the
components listed in :data:`EXTENSIONS`: each is ``"module:function"`` and the
function is called with the gateway before it starts. A module that does not
exist yet is skipped, so parts can land independently.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from typing import Any, Callable

from hyperinfer.errors import FailedPrecondition, HyperinferError, InvalidArgument
from hyperinfer.gateway.access import Access
from hyperinfer.gateway.artifacts import Catalog
from hyperinfer.gateway.config import GatewayConfig
from hyperinfer.gateway.operators import OperatorBook
from hyperinfer.gateway.pool_servicer import SERVICE_NAME as POOL_SERVICE
from hyperinfer.gateway.pool_servicer import PoolServicer
from hyperinfer.gateway.registry import Registry
from hyperinfer.gateway.server import GatewayServer
from hyperinfer.gateway.store import Store, open_store
from hyperinfer.identity import load_or_create_key, load_public_key
from hyperinfer.package import ModelRepository
from hyperinfer.proto.v1 import pool_pb2_grpc
from hyperinfer.transport.limits import StreamLimiter
from hyperinfer.transport.tls import TLSFiles
from hyperinfer.verify.session import gateway_kx_offer
from hyperinfer.verify.signing import key_id, public_bytes

log = logging.getLogger("hyperinfer.gateway")

# components attached by serve(), in order (the ledger before what uses it)
EXTENSIONS: tuple[str, ...] = (
    "hyperinfer.gateway.ledger:install",
    "hyperinfer.gateway.oip_servicer:install",
    "hyperinfer.gateway.rest:install",
    "hyperinfer.gateway.metrics:install",
)


class Gateway:
    def __init__(self, config: GatewayConfig, *, store: Store | None = None, clock: Callable[[], float] | None = None):
        self.config = config.validate()
        self.key, self.key_created = load_or_create_key(config.key)
        self.public_key: bytes = public_bytes(self.key)
        self.gateway_id: str = key_id(self.key)
        # X25519 key for Worker-call sessions (derived from the key) and this key's signature over it
        self.kx_offer: tuple[bytes, bytes] = gateway_kx_offer(self.key)
        self.store: Store = store if store is not None else open_store(config.db)
        if config.workers > 1:
            # the other worker processes write the same database: read nodes back from it and
            # lock ledger rows as for several gateways on PostgreSQL (SQLite serialises writers)
            self.store.shared = True
        self.repository = ModelRepository(config.repository)
        self.catalog = Catalog(self.repository)
        self.catalog.refresh(force=True)
        kwargs = {"clock": clock} if clock is not None else {}
        # admitted operators and their bonds (gateway.operators), shared through the store
        self.operators = OperatorBook(self.store)
        self.registry = Registry(self.store, gateway_id=self.gateway_id, catalog=self.catalog,
                                 heartbeat_interval=config.heartbeat_interval, operators=self.operators,
                                 open_pool=config.open_pool, **kwargs)
        self.access = Access(self.registry, self.gateway_id, [load_public_key(k) for k in config.admin_keys],
                             open_pool=config.open_pool)
        if config.workers > 1:  # signed calls single use across the worker processes too
            from hyperinfer.gateway.replay import SharedReplayGuard

            self.access._replay = SharedReplayGuard(self.store, self.access, self.registry)
        # TLS on the gateway's port, and (mutual) TLS on its calls to nodes
        self.tls = TLSFiles.load(config.tls_cert, config.tls_key, config.tls_ca)
        if self.tls is not None and not self.tls.can_serve:
            raise InvalidArgument("--tls-ca on the gateway needs --tls-cert and --tls-key too")
        self.server = GatewayServer(config.listen, max_workers=config.max_workers,
                                    max_message_bytes=config.max_message_bytes,
                                    max_concurrent_rpcs=config.max_concurrent_rpcs,
                                    credentials=self.tls.server_credentials() if self.tls else None,
                                    reuse_port=config.workers > 1)
        # artifact downloads on their own bounded set of streams: they never starve inference/health
        self.artifact_streams = StreamLimiter(config.max_artifact_streams, config.artifact_idle_s,
                                              what="artifact streams")
        self.pool = PoolServicer(self.registry, self.catalog, gateway_id=self.gateway_id,
                                 gateway_public_key=self.public_key, artifact_streams=self.artifact_streams,
                                 access=self.access, pool_gateway_keys=self.pool_gateway_keys,
                                 gateway_kx=self.kx_offer, pool_gateway_kx=self.pool_gateway_kx)
        self._pool_keys: tuple[float, list[bytes], list[tuple[bytes, bytes, bytes]]] = (0.0, [], [])
        self.server.add_servicer(pool_pb2_grpc.add_PoolServicer_to_server, self.pool, POOL_SERVICE)
        # the data plane every front door shares (hyperinfer.gateway.assembly.dataplane_for)
        self.dataplane: Any = None
        # model control (repository load/unload), shared likewise (assembly.model_control_for);
        # it asks ``self.authorize_admin(metadata)`` (raising Unauthenticated/PermissionDenied)
        # when the gateway has that method (the admin credential); without it anyone may
        self.model_control: Any = None
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._start_hooks: list[Callable[[], Any]] = []
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # ---------------------------------------------------------------- hooks

    @property
    def ledger(self) -> Any:
        """Optional ledger with ``summary(node_id) -> dict``; shown by `pool status`."""
        return self.pool.ledger

    @ledger.setter
    def ledger(self, value: Any) -> None:
        self.pool.ledger = value

    @property
    def sample_rate(self) -> Callable[[str, int], float] | None:
        """Optional ``(model name, version) -> p`` shown in the models table of `pool status`."""
        return self.pool.sample_rate

    @sample_rate.setter
    def sample_rate(self, fn: Callable[[str, int], float] | None) -> None:
        self.pool.sample_rate = fn

    def authorize_admin(self, metadata: Any, method: str = "admin") -> None:
        """Hook for admin-only RPCs (e.g. model control): raises PermissionDenied/Unauthenticated
        unless the call is signed by a ``--admin-key`` (a no-op while the gateway has none, or
        with ``--open-model-control``)."""
        if self.config.open_model_control:
            return
        self.access.authorize_admin(metadata, method)

    def _pool_gateways(self) -> tuple[list[bytes], list[tuple[bytes, bytes, bytes]]]:
        """This gateway and the other gateways on the same store (cached 5 s): their keys, and
        their signed X25519 keys (Ed25519 key, X25519 key, signature) where they have one."""
        at, keys, kx = self._pool_keys
        if time.monotonic() - at > 5.0 or not keys:
            keys, kx = [self.public_key], [(self.public_key, *self.kx_offer)]
            if getattr(self.store, "shared", False):
                try:
                    for g in self.store.list_gateways():
                        pub = bytes(g.public_key)
                        if pub not in keys:
                            keys.append(pub)
                            if g.kx_public_key and g.kx_signature:
                                kx.append((pub, g.kx_public_key, g.kx_signature))
                except Exception:  # noqa: BLE001 - announce at least this gateway
                    log.exception("listing the pool's gateways failed")
            self._pool_keys = (time.monotonic(), keys, kx)
        return keys, kx

    def pool_gateway_keys(self) -> list[bytes]:
        """Keys of this gateway and the others on the same store: nodes accept Worker calls from
        any of them."""
        return self._pool_gateways()[0]

    def pool_gateway_kx(self) -> list[tuple[bytes, bytes, bytes]]:
        """Their signed X25519 keys: a node agrees a Worker-call session with each."""
        return self._pool_gateways()[1]

    def add_servicer(self, add_fn: Callable[[Any, Any], None], servicer: Any, service_full_name: str) -> None:
        """Serve another gRPC service on the gateway's port (before :meth:`start`)."""
        self.server.add_servicer(add_fn, servicer, service_full_name)

    def add_start_hook(self, fn: Callable[[], Any]) -> None:
        """Called by :meth:`start` after the gRPC port is bound, in order (e.g. the REST and metrics servers)."""
        self._start_hooks.append(fn)

    def add_shutdown_hook(self, fn: Callable[[], None]) -> None:
        """Called on :meth:`stop`, after the server stopped, in reverse order of registration."""
        self._shutdown_hooks.append(fn)

    @property
    def address(self) -> str:
        return self.server.address

    # ------------------------------------------------------------- lifecycle

    def start(self) -> int:
        port = self.server.start()
        for fn in self._start_hooks:
            fn()
        # which gateways use this database, with their keys (several, on a shared PostgreSQL store)
        self.store.register_gateway(self.gateway_id, self.public_key, self.address, int(time.time() * 1000),
                                    kx=self.kx_offer)
        self._sweeper = threading.Thread(target=self._sweep_loop, name="gateway-sweeper", daemon=True)
        self._sweeper.start()
        return port

    def _sweep_loop(self) -> None:
        period = min(max(self.config.heartbeat_interval / 2, 0.05), 5.0)
        last_seen = time.monotonic()
        while not self._stop.wait(period):
            try:
                if time.monotonic() - last_seen >= 30:
                    last_seen = time.monotonic()
                    self.store.register_gateway(self.gateway_id, self.public_key, "", int(time.time() * 1000),
                                                kx=self.kx_offer)
                self.registry.sweep()
            except Exception:  # noqa: BLE001 - liveness bookkeeping must not die
                log.exception("registry sweep failed")

    def stop(self, grace: float | None = None) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.server.stop(self.config.grace_seconds if grace is None else grace)
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        for fn in reversed(self._shutdown_hooks):
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("shutdown hook %r failed", fn)
        self.store.close()


def install_extensions(gateway: Gateway, names: tuple[str, ...] | None = None) -> list[str]:
    """Attach each ``module:function`` that exists (default :data:`EXTENSIONS`); return the ones attached."""
    attached = []
    for spec in EXTENSIONS if names is None else names:
        module_name, _, fn_name = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            log.debug("extension %s not present; skipped", module_name)
            continue
        fn = getattr(module, fn_name, None)
        if fn is None:
            log.debug("extension %s has no %s(); skipped", module_name, fn_name)
            continue
        try:
            fn(gateway)
        except HyperinferError:
            raise
        except Exception as e:  # a component bug: one line naming it; the traceback at debug level
            log.debug("extension %s failed", spec, exc_info=True)
            raise FailedPrecondition(f"gateway component {spec} failed to start: {type(e).__name__}: {e}") from e
        attached.append(spec)
    return attached


def serve(config: GatewayConfig, on_ready: Callable[[Gateway], None] | None = None) -> None:
    """Run a gateway until SIGINT/SIGTERM (main thread only), then stop gracefully.

    ``config.workers`` N > 1: N processes serve the same port (SO_REUSEPORT: the kernel spreads
    incoming connections over them; one client connection stays on one process) and the same
    store, like N gateways on one database with one key. This process is worker 0 (and alone
    serves REST and metrics); the others are started here and stopped with it. See
    :func:`start_workers` for what is shared and what is per process."""
    if threading.current_thread() is not threading.main_thread():
        raise FailedPrecondition("serve() installs signal handlers and must run on the main thread")
    workers, holder = [], None
    if config.workers > 1 and config.worker_index == 0:
        config, workers, holder = start_workers(config)
    try:
        gw = Gateway(config)
    except BaseException:
        stop_workers(workers)
        raise
    finally:
        if holder is not None:
            holder.close()  # worker 0's server binds the same port (SO_REUSEPORT)
    try:
        install_extensions(gw)
        done = threading.Event()

        def _on_signal(signum, frame):  # noqa: ARG001
            log.info("received %s; shutting down", signal.Signals(signum).name)
            done.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            gw.start()
            if on_ready is not None:
                on_ready(gw)
            while not done.wait(1.0):
                for w in workers:
                    if w.exitcode is not None and not getattr(w, "reported", False):
                        w.reported = True
                        log.error("gateway worker process %s exited with code %s", w.name, w.exitcode)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    finally:
        try:
            gw.stop()
        finally:
            stop_workers(workers)


def start_workers(config: GatewayConfig) -> tuple[GatewayConfig, list[Any], Any]:
    """Start workers 1..N-1 of ``hyperinfer gateway --workers N``; returns worker 0's config,
    the worker processes, and the socket holding a port picked for ``:0`` (or None).

    Shared through the store (as between gateways on one database): nodes, heartbeats and
    quarantines, the join-challenge secret, the ledger (SQLite serialises writers; each
    batch locks its nodes' rows first), attestations, evidence and receipts. Shared by
    construction: the gateway key and id (one key file), the port. Per process, and fine so:
    the scheduler's in-flight counts (each balances its own requests), ``report_failure``
    marks, channels to nodes, the ledger summary cache. Per process, as between gateways:
    probation state (seeded from the ledger when a process first sees a node, so a node on
    probation may hold one job per process) and ModelStatistics (each process counts what it
    served; REST and metrics are served by worker 0 only). Signed calls stay single use
    across the processes (gateway.replay claims them in the store)."""
    import multiprocessing
    import socket
    from dataclasses import replace

    config = replace(config, worker_index=0).validate()
    host, _, port = config.listen.rpartition(":")
    holder = None
    if port == "0":  # pick the port once, for all; held (SO_REUSEPORT) until the workers bind
        holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host.strip("[]"), 0))
        port = str(holder.getsockname()[1])
    config.listen = f"{host}:{port}"
    # the key file and the schema exist before N processes race to create them
    load_or_create_key(config.key)
    open_store(config.db).close()
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no gRPC state across fork
    workers = []
    try:
        for i in range(1, config.workers):
            w = ctx.Process(target=_worker_main, name=f"gateway-worker-{i}", daemon=False,
                            args=(replace(config, http_listen="off", metrics_listen="off", worker_index=i),
                                  logging.getLogger().level))
            w.start()
            workers.append(w)
    except BaseException:
        stop_workers(workers)
        if holder is not None:
            holder.close()
        raise
    return config, workers, holder


def _worker_main(config: GatewayConfig, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(config)
    except HyperinferError as e:
        log.error("gateway worker %d: %s", config.worker_index, e)
        raise SystemExit(1) from None


def stop_workers(workers: list[Any], timeout: float = 15.0) -> None:
    for w in workers:
        if w.is_alive():
            w.terminate()  # SIGTERM: a graceful stop, as for the parent
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(deadline - time.monotonic(), 0.1))
        if w.is_alive():
            w.kill()
            w.join(5)

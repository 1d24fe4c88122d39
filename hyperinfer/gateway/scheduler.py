"""Put one request on one node (design §7): least outstanding requests among the
healthy nodes that have the model loaded, retry elsewhere when a node fails.

Plain Python: the registry and the worker client are passed in, so tests run
with in-process fakes. Nothing here blocks without a deadline: every node call
gets ``min(call_timeout, time left)``, and the number of attempts is bounded.

What a node error means:

- INVALID_ARGUMENT: the request is wrong, whichever node runs it; returned as is.
- RESOURCE_EXHAUSTED: the node is busy, not broken; retried elsewhere and not
  reported (reporting would quarantine healthy nodes under load).
- anything else (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND for a model the
  registry says it has, INTERNAL, a result whose attestation does not check
  out): the node is reported to the registry and the request retried elsewhere.

``check(manifest, node, request_id, input_digest, result)`` (optional) judges a
result before it is accepted, raising a HyperinferError (e.g.
``gateway.verification.Verifier.check_result``, ResultRejected) to reject it.
The gateway's data plane leaves it out and lets ``Verifier.verify`` check each
result once; a rejected result is then retried by the data plane.

``gate`` (optional, a :class:`~hyperinfer.verify.probation.Probation`) says who
may take new primary work: a node with a dispute pending gets none, a node on
probation one job at a time. ``run(..., hold=True)`` keeps a probation node's
reservation after the call returns (its answer is held until checked); the
caller ends it with :meth:`Scheduler.release_hold`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from hyperinfer.errors import Code, HyperinferError, InvalidArgument, ResourceExhausted, Unavailable
from hyperinfer.package import Manifest
from hyperinfer.verify.digest import tensors_digest

log = logging.getLogger("hyperinfer.gateway.scheduler")

DEFAULT_CALL_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 3


class Registry(Protocol):
    def schedulable_nodes(self, model: str, version: int) -> list[Any]: ...

    def report_failure(self, node_id: str) -> None: ...


class WorkerClient(Protocol):
    def infer(self, node: Any, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> Any: ...


@dataclass
class Scheduled:
    """A checked result from one node."""

    node: Any
    request_id: str
    outputs: dict[str, np.ndarray]  # manifest order
    attestation: Any  # what ``check`` returned (an Attestation), None without a check
    attestation_bytes: bytes
    signature: bytes
    input_digest: str
    attempts: int
    seconds: float  # wall time of the successful node call


class Scheduler:
    def __init__(self, registry: Registry, client: WorkerClient, *,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 rng: random.Random | None = None,
                 check: Callable[[Manifest, Any, str, str, Any], Any] | None = None,
                 known_nodes: Callable[[], int] | None = None,
                 on_timeout: Callable[[str, str, str], None] | None = None, gate: Any = None):
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be >= 1, got {max_attempts}")
        if call_timeout <= 0:
            raise InvalidArgument(f"call_timeout must be > 0, got {call_timeout}")
        self.registry = registry
        self.client = client
        self.call_timeout = float(call_timeout)
        self.max_attempts = int(max_attempts)
        self._rng = rng or random.Random()
        self._check = check
        self._known_nodes = known_nodes
        # (node id, reason, request id) when a node ran past call_timeout (not the client's deadline):
        # the ledger records it as a timeout fault
        self._on_timeout = on_timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight: dict[str, int] = {}
        self.gate = gate if gate is not None and getattr(gate, "enabled", True) else None
        if self.gate is not None:  # a node freed by the gate may be what a waiting request needs
            self.gate.listeners.append(lambda node_id: self._wake())

    # -------------------------------------------------------------- choice

    def inflight(self, node_id: str) -> int:
        with self._lock:
            return self._inflight.get(node_id, 0)

    def _pick(self, candidates: Sequence[Any]) -> Any | None:
        """Least in-flight (counted here, so it is current, unlike heartbeats); ties at random.
        Nodes at their declared capacity are skipped (they would refuse with RESOURCE_EXHAUSTED).
        Called with the lock held; reserves a slot on the chosen node, or returns None."""
        best: list[Any] = []
        low = None
        gate = self.gate
        for n in candidates:
            c = self._inflight.get(n.node_id, 0)
            cap = getattr(n, "capacity", 0) or 0
            if cap and c >= cap:
                continue
            if gate is not None and gate.blocked(n.node_id):
                continue
            if low is None or c < low:
                low, best = c, [n]
            elif c == low:
                best.append(n)
        while best:
            node = best[0] if len(best) == 1 else self._rng.choice(best)
            if gate is None or gate.admit(node.node_id):  # admit: atomic, in case the gate changed meanwhile
                self._inflight[node.node_id] = low + 1
                return node
            best.remove(node)
        return None

    def _acquire(self, candidates: Sequence[Any], until: float) -> Any | None:
        """A node with a free slot, waiting (bounded) while every candidate is at capacity:
        a short queue at the gateway beats an error when the pool is momentarily full."""
        with self._cond:
            while True:
                node = self._pick(candidates)
                if node is not None:
                    return node
                left = until - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def _release(self, node_id: str) -> None:
        with self._cond:
            left = self._inflight.get(node_id, 0) - 1
            if left > 0:
                self._inflight[node_id] = left
            else:
                self._inflight.pop(node_id, None)
            self._cond.notify_all()  # waiters may want different nodes

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def release_hold(self, node_id: str) -> None:
        """End the reservation ``run(..., hold=True)`` kept (the held answer's check is over)."""
        if self.gate is not None:
            self.gate.release(node_id)

    def counted(self, client: WorkerClient) -> "CountedClient":
        """``client`` with its calls counted as in flight here: give it to the verifier, so that
        validator runs count toward least-outstanding like primary requests do."""
        return CountedClient(self, client)

    def _no_node(self, manifest: Manifest, healthy: int) -> Unavailable:
        known = self._known_nodes() if self._known_nodes is not None else healthy
        return Unavailable(
            f"no node can serve model {manifest.name} version {manifest.version} "
            f"({known} nodes known, {healthy} healthy)"
        )

    # -------------------------------------------------------------- run

    def run(self, manifest: Manifest, inputs: Mapping[str, np.ndarray], *,
            deadline: float | None = None, accept: Callable[[Any], bool] | None = None,
            prefer: Callable[[Any], bool] | None = None, input_digest: str | Future | None = None,
            exclude: Iterable[str] = (), hold: bool = False) -> Scheduled:
        """Run ``inputs`` (already checked against the manifest) on one node.

        ``deadline``: time.monotonic() by which to give up (the client's deadline).
        ``accept``: only nodes it returns True for (a validator of another operator).
        ``prefer``: among accepted nodes, those it returns True for come first
        (a validator running the same artifact).
        ``hold``: keep the gate's reservation of the node that answered (see the module doc).
        ``input_digest``: the inputs' digest, or a Future of it (waited for once a node answered).
        """
        name, version = manifest.name, manifest.version
        if input_digest is None:
            input_digest = tensors_digest([s.name for s in manifest.inputs], inputs)
        tried: set[str] = set(exclude)
        last: HyperinferError | None = None
        codes: set[Code] = set()
        attempts = 0
        while attempts < self.max_attempts:
            nodes = [n for n in self.registry.schedulable_nodes(name, version)
                     if n.node_id not in tried and (accept is None or accept(n))]
            if prefer is not None:
                preferred = [n for n in nodes if prefer(n)]
                nodes = preferred or nodes
            if not nodes:
                break
            timeout = self.call_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise HyperinferError(
                        f"deadline exceeded after {attempts} attempt(s) for model {name} version {version}"
                        + (f"; last error: {last}" if last else ""), Code.DEADLINE_EXCEEDED)
            node = self._acquire(nodes, time.monotonic() + timeout)
            if node is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise HyperinferError(
                        f"deadline exceeded waiting for a free node for model {name} version {version} "
                        f"({len(nodes)} nodes, all at capacity)", Code.DEADLINE_EXCEEDED)
                raise ResourceExhausted(
                    f"all {len(nodes)} nodes serving model {name} version {version} are at capacity; "
                    "retry later"
                )
            if deadline is not None:  # time spent waiting for a slot counts against the call
                timeout = max(min(self.call_timeout, deadline - time.monotonic()), 0.001)
            attempts += 1
            tried.add(node.node_id)
            request_id = uuid.uuid4().hex  # never the client's id: nodes must not link retries or checks
            t0 = time.perf_counter()
            ok = False
            try:
                result = self.client.infer(node, request_id, name, version, inputs, timeout=timeout)
                if isinstance(input_digest, Future):  # hashed while the node ran (gateway data plane)
                    input_digest = input_digest.result()
                att = self._check(manifest, node, request_id, input_digest, result) if self._check else None
                ok = True
            except HyperinferError as e:
                if e.code == Code.INVALID_ARGUMENT:
                    raise
                if (e.code == Code.DEADLINE_EXCEEDED and deadline is not None
                        and time.monotonic() >= deadline - 0.001):
                    # the client's deadline ran out, not the node's time: nobody to blame, nothing to retry
                    raise HyperinferError(f"deadline exceeded while node {node.node_id} ran model {name} "
                                          f"version {version}", Code.DEADLINE_EXCEEDED) from None
                last = e
                codes.add(e.code)
                if e.code == Code.DEADLINE_EXCEEDED and self._on_timeout is not None:
                    try:
                        self._on_timeout(node.node_id, f"no answer within {timeout:.3g} s", request_id)
                    except Exception:  # noqa: BLE001 - bookkeeping must not fail the request
                        log.exception("recording the timeout of node %s failed", node.node_id)
                if e.code != Code.RESOURCE_EXHAUSTED:
                    log.warning("node %s failed %s/%s (%s): %s; retrying elsewhere",
                                node.node_id, name, version, e.code.value, e)
                    self.registry.report_failure(node.node_id, f"{e.code.value}: {e}")
                continue
            finally:
                if self.gate is not None and not (ok and hold):
                    self.gate.release(node.node_id)
                self._release(node.node_id)
            return Scheduled(node, request_id, dict(result.outputs), att, result.attestation_bytes,
                             result.signature, input_digest, attempts, time.perf_counter() - t0)

        if last is None:
            raise self._no_node(manifest, 0)
        if codes == {Code.RESOURCE_EXHAUSTED}:  # every node said it is busy: say so, the client may back off
            raise ResourceExhausted(f"model {name} version {version}: {attempts} node(s) are at capacity; "
                                    f"retry later (last: {last})")
        raise Unavailable(
            f"model {name} version {version}: {attempts} attempt(s) on different nodes failed; "
            f"last error ({last.code.value}): {last}"
        )


class CountedClient:
    """A WorkerClient whose calls hold an in-flight slot of their node in a Scheduler."""

    def __init__(self, scheduler: Scheduler, client: WorkerClient):
        self._scheduler = scheduler
        self._client = client

    def infer(self, node: Any, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> Any:
        with self._scheduler._lock:
            self._scheduler._inflight[node.node_id] = self._scheduler._inflight.get(node.node_id, 0) + 1
        try:
            return self._client.infer(node, request_id, model_name, model_version, inputs, timeout=timeout)
        finally:
            self._scheduler._release(node.node_id)

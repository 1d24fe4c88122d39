"""Per model and version inference statistics, in the shape of Triton's ``InferStatistics``.

The gateway's data plane records every request it resolved to a model (so
every front door counts alike: gRPC, streaming, REST); the ModelStatistics
RPC and the Prometheus ``nv_*`` metrics both read :meth:`Statistics.snapshot`,
so they agree by construction. Plain Python, thread-safe, no I/O.

What the durations mean here (Triton's names, the gateway's view):

- ``success``: whole request, from the data plane receiving it to the response
  being ready, for requests that succeeded; ``fail``: the same for failures.
- ``compute_input``: checking the inputs against the manifest.
- ``compute_infer``: the node call that produced the answer (network + node).
- ``compute_output``: verification (receipt; a sync/always check waits here)
  and building the response.
- ``queue``: the rest — waiting for a free node slot, and attempts on nodes
  that failed or whose results were rejected before the one that answered.

So ``queue + compute_input + compute_infer + compute_output == success`` for
each request. ``inference_count`` counts inferences (one per request: the
gateway takes one sample per request), ``execution_count`` the node runs that
answered them (also one per request; nodes may batch runs of several clients,
which the gateway does not see).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Duration:
    """Triton's StatisticDuration: how many, and their total in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class ModelStats:
    name: str
    version: int
    last_inference_ms: int = 0  # wall clock of the last request, ms since the epoch (0: never)
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    # failed requests by error code (INVALID_ARGUMENT, UNAVAILABLE, ...)
    failures: dict[str, int] = field(default_factory=dict)


class _Counters:
    """Mutable per-version counters (the hot path: plain int additions under one lock)."""

    __slots__ = ("last_ms", "inferences", "executions", "ok", "ok_ns", "bad", "bad_ns", "queue_ns", "input_ns",
                 "infer_ns", "output_ns", "failures")

    def __init__(self):
        self.last_ms = self.inferences = self.executions = 0
        self.ok = self.ok_ns = self.bad = self.bad_ns = 0
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        self.failures: dict[str, int] = {}

    def stats(self, name: str, version: int) -> ModelStats:
        n = self.ok
        return ModelStats(name, version, self.last_ms, self.inferences, self.executions,
                          Duration(n, self.ok_ns), Duration(self.bad, self.bad_ns), Duration(n, self.queue_ns),
                          Duration(n, self.input_ns), Duration(n, self.infer_ns), Duration(n, self.output_ns),
                          dict(self.failures))


class Statistics:
    """Counters per (model name, version). ``clock``: wall time in seconds (tests pass a fake)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, int], _Counters] = {}

    def _get(self, name: str, version: int) -> _Counters:
        c = self._counters.get((name, version))
        if c is None:
            c = self._counters[(name, version)] = _Counters()
        return c

    def record_success(self, name: str, version: int, *, queue_ns: int, input_ns: int, infer_ns: int,
                       output_ns: int, inferences: int = 1) -> None:
        now_ms = int(self._clock() * 1000)
        with self._lock:
            c = self._get(name, version)
            c.last_ms = now_ms
            c.inferences += inferences
            c.executions += 1
            c.ok += 1
            c.ok_ns += queue_ns + input_ns + infer_ns + output_ns
            c.queue_ns += queue_ns
            c.input_ns += input_ns
            c.infer_ns += infer_ns
            c.output_ns += output_ns

    def record_failure(self, name: str, version: int, duration_ns: int, code: str = "INTERNAL") -> None:
        now_ms = int(self._clock() * 1000)
        with self._lock:
            c = self._get(name, version)
            c.last_ms = now_ms
            c.bad += 1
            c.bad_ns += max(int(duration_ns), 0)
            c.failures[code] = c.failures.get(code, 0) + 1

    def get(self, name: str, version: int) -> ModelStats:
        """The model version's counters (zeros if it never had a request)."""
        version = int(version)
        with self._lock:
            c = self._counters.get((name, version))
            return c.stats(name, version) if c is not None else ModelStats(name, version)

    def snapshot(self) -> list[ModelStats]:
        """Every model version with at least one request, sorted by name and version (immutable copies)."""
        with self._lock:
            return [self._counters[k].stats(*k) for k in sorted(self._counters)]

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
from dataclasses import dataclass, field, replace
from typing import Callable


@dataclass(frozen=True)
class Duration:
    """Triton's StatisticDuration: how many, and their total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> "Duration":
        return Duration(self.count + 1, self.ns + max(int(ns), 0))


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


class Statistics:
    """Counters per (model name, version). ``clock``: wall time in seconds (tests pass a fake)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, int], ModelStats] = {}

    def _get(self, name: str, version: int) -> ModelStats:
        s = self._stats.get((name, version))
        return s if s is not None else ModelStats(name, int(version))

    def record_success(self, name: str, version: int, *, queue_ns: int, input_ns: int, infer_ns: int,
                       output_ns: int, inferences: int = 1) -> None:
        now_ms = int(self._clock() * 1000)
        total = queue_ns + input_ns + infer_ns + output_ns
        with self._lock:
            s = self._get(name, version)
            self._stats[(name, version)] = replace(
                s, last_inference_ms=now_ms, inference_count=s.inference_count + inferences,
                execution_count=s.execution_count + 1, success=s.success.add(total),
                queue=s.queue.add(queue_ns), compute_input=s.compute_input.add(input_ns),
                compute_infer=s.compute_infer.add(infer_ns), compute_output=s.compute_output.add(output_ns))

    def record_failure(self, name: str, version: int, duration_ns: int, code: str = "INTERNAL") -> None:
        now_ms = int(self._clock() * 1000)
        with self._lock:
            s = self._get(name, version)
            failures = dict(s.failures)
            failures[code] = failures.get(code, 0) + 1
            self._stats[(name, version)] = replace(s, last_inference_ms=now_ms, fail=s.fail.add(duration_ns),
                                                   failures=failures)

    def get(self, name: str, version: int) -> ModelStats:
        """The model version's counters (zeros if it never had a request)."""
        with self._lock:
            return self._get(name, int(version))

    def snapshot(self) -> list[ModelStats]:
        """Every model version with at least one request, sorted by name and version (immutable copies)."""
        with self._lock:
            return [self._stats[k] for k in sorted(self._stats)]

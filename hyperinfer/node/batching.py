"""Dynamic batching on a node (Triton's dynamic batcher, for packages compiled with
``--max-batch``).

Each request is checked and digested on its own gRPC thread, then queued here;
one thread per model takes what is queued — at most ``max_batch`` requests,
waiting up to ``window_s`` after the first one for more (Triton's
``max_queue_delay_microseconds``; 0: only what queued while the previous batch
ran) — runs them as one call of the batched entry point, and hands each request
its own outputs. The request's thread then signs its own attestation over its
own inputs and outputs: batching changes how the work is scheduled, never what
a result attests to. A bad request is refused before it is queued, so it fails
alone; an error in the batched call fails the requests of that batch only.

Plain Python, no gRPC and no TVM: ``run_batch`` is a function of a list of
input dicts (tests pass one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Mapping, Sequence

import numpy as np

from hyperinfer.errors import Unavailable

log = logging.getLogger("hyperinfer.node")

RunBatch = Callable[[Sequence[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]]


class _Pending:
    __slots__ = ("feeds", "done", "outputs", "error")

    def __init__(self, feeds: Mapping[str, np.ndarray]):
        self.feeds = feeds
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    """Groups concurrent requests for one model into batched calls."""

    def __init__(self, run_batch: RunBatch, max_batch: int, window_s: float = 0.0, name: str = "model"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self._run_batch = run_batch
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        # batch size -> batches run (for the benchmark and tests)
        self.histogram: dict[int, int] = {}
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one checked request and wait for its outputs (its slice of a batch)."""
        item = _Pending(feeds)
        with self._cond:
            if self._stopped:
                raise Unavailable(f"model {self.name} is being unloaded")
            self._queue.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.outputs is not None
        return item.outputs

    def stop(self) -> None:
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self.histogram:
            log.info("%s: batch sizes %s", self.name,
                     ", ".join(f"{k}: {v}" for k, v in sorted(self.histogram.items())))

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if not self._queue:
                return None
            if self.window_s > 0 and len(self._queue) < self.max_batch:
                # wait for more requests, at most window_s after this one was picked up
                until = time.monotonic() + self.window_s
                while len(self._queue) < self.max_batch and not self._stopped:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            n = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self.histogram[len(batch)] = self.histogram.get(len(batch), 0) + 1
            try:
                results = self._run_batch([p.feeds for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched run returned {len(results)} results for {len(batch)} requests")
                for p, out in zip(batch, results):
                    p.outputs = out
            except Exception as e:  # noqa: BLE001 - handed to each waiting request
                log.warning("batched run of %d requests for %s failed: %s", len(batch), self.name, e)
                for p in batch:
                    p.error = e
            finally:
                for p in batch:
                    p.done.set()


def self_check(runner, manifest, samples: int = 3, seed: int = 0) -> str | None:
    """Run random inputs through every batched entry point and batch 1; None if every item's
    bits match, else why not. Compile checks this on its machine; a node checks again at load
    because its hardware (a GPU the compiler did not have) may differ."""
    from hyperinfer.compile.batching import check_bit_identical
    from hyperinfer.errors import FailedPrecondition

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(samples):
        x = {}
        for s in manifest.inputs:
            dt = np.dtype(s.dtype)
            if dt == np.bool_:
                x[s.name] = rng.random(s.shape) > 0.5
            elif np.issubdtype(dt, np.integer):
                x[s.name] = rng.integers(0, 10, size=s.shape).astype(dt)
            else:
                x[s.name] = rng.standard_normal(s.shape).astype(dt)
        items.append(x)
    try:
        solo = [runner.run(x) for x in items]
        check_bit_identical(lambda size, xs: runner.run_batch(xs, size), manifest.batch, solo, items,
                            f"{manifest.name}/{manifest.version}")
    except FailedPrecondition as e:
        return str(e)
    return None

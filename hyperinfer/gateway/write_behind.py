"""The ledger as the verifier sees it, with per-request writes batched on a background thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("hyperinfer.gateway")


class WriteBehindLedger:
    """The ledger as the verifier sees it, with the per-request writes off the request path.

    Every answered request credits a job and stores a receipt: two SQLite
    transactions, about half a millisecond, more than the rest of the gateway's
    work. Those writes (jobs, receipts, checks, skips) go in order to one
    background thread that commits them in batches; everything else (faults,
    disputes, reads) first waits for the queued writes, then runs as before, so
    the order of events in the ledger is the order they happened. ``summary``
    (the sampling policy's probation/reputation input, read on every request)
    is cached per node for ``summary_ttl`` seconds. A crash loses at most the
    queued writes; the receipts already returned are signed and self-contained.
    """

    _DEFERRED = frozenset({"record_job", "store_receipt", "record_check", "record_skipped"})

    def __init__(self, ledger: Any, *, max_queue: int = 10_000, summary_ttl: float = 0.5,
                 batch_seconds: float = 0.05):
        import queue

        self.ledger = ledger
        self.summary_ttl = summary_ttl
        self.batch_seconds = batch_seconds
        self._closed = False
        self._queue: "queue.Queue[tuple[str, tuple, dict] | None]" = queue.Queue(max_queue)
        self._summaries: dict[str, tuple[float, Any]] = {}
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        store = self.ledger.store
        while True:
            item = self._queue.get()
            batch = [item]
            if item is not None:
                # sleep, then drain: one commit per batch, and no wake-up (GIL handoff) per queued
                # write in the middle of the requests that queue them
                time.sleep(self.batch_seconds)
            while item is not None and len(batch) < 4096:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            ops = [op for op in batch if op is not None]
            try:
                with store.transaction():  # one commit for the batch; nested calls join it
                    lock = getattr(self.ledger, "lock_nodes", None) if getattr(store, "shared", False) else None
                    if lock is not None:  # rows in id order first: no deadlock with another gateway's batch
                        lock(n for op in ops for n in _nodes_of(*op))
                    for name, args, kwargs in ops:
                        getattr(self.ledger, name)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - retry one by one so one bad row loses only itself
                log.warning("ledger batch of %d writes failed (%s: %s); retrying them one by one",
                            len(ops), type(e).__name__, " ".join(str(e).split())[:200])
                for name, args, kwargs in ops:
                    try:
                        getattr(self.ledger, name)(*args, **kwargs)
                    except Exception:  # noqa: BLE001
                        log.exception("ledger %s failed", name)
            for _ in batch:
                self._queue.task_done()
            if batch[-1] is None:
                return

    def flush(self) -> None:
        if not self._closed:
            self._queue.join()

    def close(self) -> None:
        """Commit what is queued and stop; later calls (a background check finishing during
        shutdown) go straight to the ledger instead of waiting on a stopped writer."""
        if self._closed:
            return
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._closed = True

    def summary(self, node_id: str) -> Any:
        now = time.monotonic()
        hit = self._summaries.get(node_id)
        if hit is not None and now - hit[0] < self.summary_ttl:
            return hit[1]
        value = self.ledger.summary(node_id)
        self._summaries[node_id] = (now, value)
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.ledger, name)
        if not callable(attr):
            return attr
        if name in self._DEFERRED and not self._closed:
            return lambda *args, **kwargs: self._queue.put((name, args, kwargs))

        def call(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return attr(*args, **kwargs)

        return call


def _nodes_of(name: str, args: tuple, kwargs: dict) -> list[str]:
    """The ledger rows a deferred write touches."""
    if name in ("record_job", "record_skipped"):
        return [kwargs["node_id"] if "node_id" in kwargs else args[0]]
    if name == "record_check":
        return list(kwargs["node_ids"] if "node_ids" in kwargs else args[0])
    return []

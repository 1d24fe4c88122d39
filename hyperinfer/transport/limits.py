"""Bounds on long-lived streams, so that they cannot starve a server's other RPCs.

A server-streaming handler holds one of the server's threads for as long as
the stream lasts, and a client that stops reading (flow control) holds it
forever. :class:`StreamLimiter` admits at most ``max_streams`` such streams at
once (more get RESOURCE_EXHAUSTED at once; clients retry) and a watchdog
cancels a stream whose client has not taken a message for ``idle_s`` seconds,
which frees the thread blocked in the send.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable, Iterator

from hyperinfer.errors import ResourceExhausted

log = logging.getLogger("hyperinfer.grpc")

DEFAULT_MAX_STREAMS = 4
DEFAULT_IDLE_S = 30.0


class StreamLimiter:
    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, idle_s: float = DEFAULT_IDLE_S,
                 what: str = "streams"):
        self.max_streams = max(1, int(max_streams))
        self.idle_s = float(idle_s)
        self.what = what
        self._lock = threading.Lock()
        # id -> [gRPC context, monotonic time of the last message handed over]
        self._active: dict[int, list[Any]] = {}
        self._next_id = 0
        self._watchdog: threading.Thread | None = None
        self.cancelled = 0  # streams the watchdog ended (for tests and logs)
        self.admitted = 0  # streams ever admitted
        self.refused = 0  # streams refused because max_streams were running
        self.peak = 0  # most streams running at once

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def stream(self, context: Any, items: Iterable[Any]) -> Iterator[Any]:
        """Yield ``items`` as one admitted stream of ``context``'s RPC; RESOURCE_EXHAUSTED when
        ``max_streams`` are already running."""
        with self._lock:
            if len(self._active) >= self.max_streams:
                self.refused += 1
                raise ResourceExhausted(f"{self.max_streams} {self.what} are already running; retry in a moment")
            sid = self._next_id
            self._next_id += 1
            entry = [context, time.monotonic()]
            self._active[sid] = entry
            self.admitted += 1
            self.peak = max(self.peak, len(self._active))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
                self._watchdog.start()
        try:
            for item in items:
                yield item
                entry[1] = time.monotonic()  # the client took the previous message: progress
        finally:
            with self._lock:
                self._active.pop(sid, None)

    def _watch(self) -> None:
        period = max(min(self.idle_s / 4, 1.0), 0.01)
        while True:
            time.sleep(period)
            now = time.monotonic()
            with self._lock:
                idle = [e for e in self._active.values() if now - e[1] > self.idle_s]
                for e in idle:
                    e[1] = float("inf")  # cancelled once; it leaves the table when its handler ends
            for ctx, _ in idle:
                log.warning("cancelling a %s stream idle for more than %.0f s", self.what, self.idle_s)
                self.cancelled += 1
                try:
                    ctx.cancel()  # wakes the thread blocked sending to a client that does not read
                except Exception:  # noqa: BLE001
                    log.exception("could not cancel an idle stream")

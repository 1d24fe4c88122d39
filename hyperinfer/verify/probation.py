"""Probation (design §6): a new or suspect node never serves an answer nobody checked.

A node is *on probation* until it has passed K consecutive checks (K =
``--probation-jobs``; 0 disables probation): when it is first seen, and again
after every fault (a rejected attestation, a lost dispute, a failed referee
check). While on probation:

- its answer is **held**: the gateway returns it only after a validator of
  another operator agreed (trusted validators first), or, when no validator is
  available, after the gateway's ONNX Runtime referee found it within tolerance
  (receipt status ``refereed``). Whatever the client's verification mode. A
  held answer that fails is never returned: the request runs on another node.
- it gets **one job at a time**: no new primary work while a held answer of
  its own waits for its check, so each fault is known before the next job and
  quarantine takes effect exactly at the threshold, not several faults later.
- receipts of its answers carry the signed field ``"probation": true``.

Independently of probation, a node with a check **pending on a dispute** (a
validator disagreed and the referee is deciding) is suspended from new primary
work until the verdict is recorded.

Why held answers and not shadow traffic: a shadowed newcomer (duplicates of
trusted nodes' requests) costs nothing in latency, but it never answers a client,
so it cannot take load off the pool while it proves itself, and its checks
compete for capacity with real traffic. Holding costs one validator run per
probation job (measured in ``scripts/bench_probation.py``), only for K jobs.

This module is plain logic, shared by the scheduler (who may get primary work),
the verifier (outcomes, held checks, validator preference) and the ledger's
status view. State is in memory per gateway; a node first seen by a gateway is
seeded from the ledger (:func:`initial_streak`), so a gateway restart does not
put a long-trusted node back on probation, while a node with faults on record
proves itself again.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Probation", "initial_streak"]


def initial_streak(counts: Mapping[str, Any] | None, jobs: int) -> int:
    """Checks passed in a row a node is credited with when a gateway first sees it:
    all K if its ledger record shows no fault and at least K agreements, else 0."""
    if not counts:
        return 0
    if int(counts.get("faults", 0) or 0) == 0 and int(counts.get("agreements", 0) or 0) >= jobs:
        return jobs
    return 0


class Probation:
    """Per-node probation state of one gateway. Thread-safe.

    ``jobs``: K, the consecutive checks passed that end probation (0: nobody is
    ever on probation). ``seed(node_id) -> int``: the streak to start a node
    with when it is first seen (default 0: every new node is on probation).
    """

    def __init__(self, jobs: int, seed: Callable[[str], int] | None = None):
        if not isinstance(jobs, int) or jobs < 0:
            raise ValueError(f"probation jobs must be an integer >= 0, got {jobs!r}")
        self.jobs = jobs
        self._seed = seed
        self._lock = threading.Lock()
        self._streak: dict[str, int] = {}
        self._busy: set[str] = set()  # probation nodes holding a primary job
        self._suspended: dict[str, int] = {}  # node id -> disputes pending on it
        self.listeners: list[Callable[[str], None]] = []  # called when a node may have become free

    @property
    def enabled(self) -> bool:
        return self.jobs > 0

    # ------------------------------------------------------------ standing

    def _streak_of(self, node_id: str) -> int:
        with self._lock:
            s = self._streak.get(node_id)
        if s is not None:
            return s
        s = 0
        if self._seed is not None:
            try:
                s = max(0, min(int(self._seed(node_id)), self.jobs))
            except Exception:  # noqa: BLE001 - no record to go by: a stranger is on probation
                s = 0
        with self._lock:
            return self._streak.setdefault(node_id, s)

    def streak(self, node_id: str) -> int:
        """Consecutive checks passed since the node was first seen or last at fault."""
        return self._streak_of(node_id) if self.enabled else 0

    def on_probation(self, node_id: str) -> bool:
        return self.enabled and self._streak_of(node_id) < self.jobs

    def trusted(self, node_id: str) -> bool:
        return not self.on_probation(node_id)

    def suspended(self, node_id: str) -> bool:
        with self._lock:
            return self._suspended.get(node_id, 0) > 0

    # ------------------------------------------------------------ scheduling

    def blocked(self, node_id: str) -> bool:
        """True while the node may not take new primary work: a dispute is pending on it,
        or it is on probation and already holds a job."""
        if self.suspended(node_id):
            return True
        if not self.on_probation(node_id):
            return False
        with self._lock:
            return node_id in self._busy

    def admit(self, node_id: str) -> bool:
        """Reserve the node for one primary job; False if it is blocked. A probation node
        stays reserved until :meth:`release`."""
        probation = self.on_probation(node_id)  # may seed (a ledger read): outside the lock
        with self._lock:
            if self._suspended.get(node_id, 0) > 0:
                return False
            if probation:
                if node_id in self._busy:
                    return False
                self._busy.add(node_id)
            return True

    def release(self, node_id: str) -> None:
        """The node's primary job is over (answered, rejected or failed)."""
        with self._lock:
            was = node_id in self._busy
            self._busy.discard(node_id)
        if was:
            self._notify(node_id)

    def holding(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._busy

    # ------------------------------------------------------------ outcomes

    def passed(self, node_id: str) -> None:
        """The node's result was checked and found right."""
        if not self.enabled:
            return
        s = self._streak_of(node_id)
        with self._lock:
            self._streak[node_id] = min(max(s, self._streak.get(node_id, s)) + 1, self.jobs)

    def fault(self, node_id: str) -> None:
        """The node was at fault: back on probation, K checks to go."""
        self._streak_of(node_id)
        with self._lock:
            self._streak[node_id] = 0

    def suspend(self, node_ids: Iterable[str]) -> None:
        """A dispute is pending on these nodes: no new primary work until :meth:`resume`."""
        with self._lock:
            for n in set(node_ids):
                self._suspended[n] = self._suspended.get(n, 0) + 1

    def resume(self, node_ids: Iterable[str]) -> None:
        ids = set(node_ids)
        with self._lock:
            for n in ids:
                left = self._suspended.get(n, 0) - 1
                if left > 0:
                    self._suspended[n] = left
                else:
                    self._suspended.pop(n, None)
        for n in ids:
            self._notify(n)

    def prefer_trusted(self, nodes: Iterable[Any], node_id: Callable[[Any], str] = lambda n: n.node_id) -> list[Any]:
        """The trusted nodes among ``nodes`` if there are any, else all of them: validators
        are trusted nodes first, probation nodes only when no trusted one is available."""
        nodes = list(nodes)
        trusted = [n for n in nodes if not self.on_probation(node_id(n))]
        return trusted or nodes

    def _notify(self, node_id: str) -> None:
        for listener in list(self.listeners):
            listener(node_id)

    def snapshot(self, node_id: str) -> dict[str, Any]:
        """What status pages show: on probation, streak, holding a job, suspended."""
        return {"probation": self.on_probation(node_id), "streak": self.streak(node_id),
                "holding": self.holding(node_id), "suspended": self.suspended(node_id)}

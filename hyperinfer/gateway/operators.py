"""Admitted operators and their bonds, in the gateway's store (SQLite or a shared PostgreSQL).

Table ``operators`` (component ``"operators"``), one row per operator:

    operator_id   fingerprint of its Ed25519 key (or ``node:<node id>`` for a node that joined
                  an open pool without a certificate: it is its own operator)
    name          shown in `pool status`
    public_key    raw 32 bytes (empty for ``node:`` operators)
    admission     ``admitted`` (by the gateway operator, with a bond) or ``open`` (joined an
                  ``--open-pool`` gateway on its own: bond 0, probation)
    bond          what the operator put at stake; every node of the operator draws on it
    slashed       taken from the bond so far (never more than the bond)
    faults        faults of all its nodes
    state         ``active``, ``quarantined`` (by the ledger: ``faults >= quarantine_after``) or
                  ``removed`` (by the gateway operator)
    admitted, updated   unix ms

SQL follows the store's portability rule (see :mod:`hyperinfer.gateway.store`): a
fault is one locked UPDATE inside the ledger's own transaction, so a slash of the
node and of its operator commit together, on every gateway sharing the store.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from hyperinfer.errors import AlreadyExists, InvalidArgument, NotFound
from hyperinfer.verify.signing import fingerprint

COMPONENT = "operators"
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS operators (
            operator_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            public_key BLOB NOT NULL,
            admission TEXT NOT NULL,
            bond DOUBLE PRECISION NOT NULL,
            slashed DOUBLE PRECISION NOT NULL DEFAULT 0,
            faults INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            admitted BIGINT NOT NULL,
            updated BIGINT NOT NULL
        )""",
    ],
]

ADMITTED, OPEN = "admitted", "open"
ACTIVE, QUARANTINED, REMOVED = "active", "quarantined", "removed"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")
CACHE_TTL_S = 1.0


@dataclass(frozen=True)
class Operator:
    operator_id: str
    name: str
    public_key: bytes
    admission: str
    bond: float
    slashed: float
    faults: int
    state: str
    admitted_ms: int

    @property
    def remaining(self) -> float:
        """Bond left: what its nodes show as stake."""
        return max(0.0, self.bond - self.slashed)

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(r: Any) -> Operator:
    return Operator(str(r[0]), str(r[1]), bytes(r[2] or b""), str(r[3]), float(r[4]), float(r[5]), int(r[6]),
                    str(r[7]), int(r[8]))


_COLUMNS = "operator_id, name, public_key, admission, bond, slashed, faults, state, admitted"


def node_operator_id(node_id: str) -> str:
    """The operator id of a node that joined an open pool without a certificate."""
    return f"node:{node_id}"


class OperatorBook:
    """Reads and writes the operators table. Thread-safe; reads are cached for ``CACHE_TTL_S``
    (the hot path asks for an operator on every join, heartbeat and receipt)."""

    def __init__(self, store: Any):
        self.store = store
        store.migrate(COMPONENT, MIGRATIONS)
        self._cache: dict[str, tuple[float, Operator | None]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------- admin

    def add(self, public_key: bytes, name: str, bond: float) -> Operator:
        """Admit an operator with a bond; an open operator with this key is promoted."""
        if len(public_key) != 32:
            raise InvalidArgument("operator key: expected a 32-byte Ed25519 public key")
        if not _NAME_RE.match(name or ""):
            raise InvalidArgument(f"--name {name!r}: 1-64 letters, digits, space, . _ @ -")
        if not (bond >= 0 and bond < float("inf")):
            raise InvalidArgument(f"--bond {bond}: must be a finite number >= 0")
        op_id = fingerprint(public_key)
        now = _now_ms()
        with self.store.transaction() as c:
            row = c.execute(f"SELECT {_COLUMNS} FROM operators WHERE operator_id = ?", (op_id,)).fetchone()
            if row is not None and _row(row).admission == ADMITTED and _row(row).state != REMOVED:
                raise AlreadyExists(f"operator {op_id} ({_row(row).name}) is already admitted")
            if row is None:
                c.execute(f"INSERT INTO operators ({_COLUMNS}, updated) VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
                          (op_id, name, bytes(public_key), ADMITTED, float(bond), ACTIVE, now, now))
            else:  # promote an open operator, or re-admit a removed one: its faults and slashes stay
                state = QUARANTINED if _row(row).state == QUARANTINED else ACTIVE
                c.execute("UPDATE operators SET name = ?, admission = ?, bond = ?, state = ?, admitted = ?, "
                          "updated = ? WHERE operator_id = ?", (name, ADMITTED, float(bond), state, now, now, op_id))
        self._forget(op_id)
        return self.require(op_id)

    def add_open(self, operator_id: str, name: str, public_key: bytes = b"") -> Operator:
        """Record an operator that joined an open pool on its own: bond 0 (idempotent)."""
        now = _now_ms()
        with self.store.transaction() as c:
            c.execute(f"INSERT INTO operators ({_COLUMNS}, updated) VALUES (?, ?, ?, ?, 0, 0, 0, ?, ?, ?) "
                      "ON CONFLICT (operator_id) DO NOTHING",
                      (operator_id, name[:64] or operator_id[:12], bytes(public_key), OPEN, ACTIVE, now, now))
        self._forget(operator_id)
        return self.require(operator_id)

    def remove(self, ref: str) -> Operator:
        op = self.find(ref)
        with self.store.transaction() as c:
            c.execute("UPDATE operators SET state = ?, updated = ? WHERE operator_id = ?",
                      (REMOVED, _now_ms(), op.operator_id))
        self._forget(op.operator_id)
        return self.require(op.operator_id)

    def set_state(self, operator_id: str, state: str) -> None:
        if state not in (ACTIVE, QUARANTINED, REMOVED):
            raise InvalidArgument(f"operator state {state!r}: one of active, quarantined, removed")
        with self.store.transaction() as c:
            c.execute("UPDATE operators SET state = ?, updated = ? WHERE operator_id = ?",
                      (state, _now_ms(), operator_id))
        self._forget(operator_id)

    # ------------------------------------------------------------- ledger

    def fault_in(self, c: Any, operator_id: str, slash: float, quarantine_after: int, now: int) -> bool:
        """In the ledger's transaction ``c``: one fault and a slash (at most the bond left) for
        the operator. True if it newly quarantines the operator."""
        c.execute("UPDATE operators SET faults = faults + 1, updated = ? WHERE operator_id = ?", (now, operator_id))
        row = c.execute("SELECT bond, slashed, faults, state FROM operators WHERE operator_id = ?",
                        (operator_id,)).fetchone()
        if row is None:
            return False
        take = max(0.0, min(float(slash), float(row[0]) - float(row[1])))
        quarantine = bool(quarantine_after) and int(row[2]) >= quarantine_after and str(row[3]) == ACTIVE
        c.execute("UPDATE operators SET slashed = slashed + ?, state = CASE WHEN ? = 1 THEN ? ELSE state END "
                  "WHERE operator_id = ?", (take, 1 if quarantine else 0, QUARANTINED, operator_id))
        self._forget(operator_id)
        return quarantine

    # ------------------------------------------------------------- reads

    def _forget(self, operator_id: str) -> None:
        with self._lock:
            self._cache.pop(operator_id, None)

    def get(self, operator_id: str, fresh: bool = False) -> Operator | None:
        now = time.monotonic()
        if not fresh:
            hit = self._cache.get(operator_id)
            if hit is not None and now - hit[0] < CACHE_TTL_S:
                return hit[1]
        with self.store.transaction() as c:
            row = c.execute(f"SELECT {_COLUMNS} FROM operators WHERE operator_id = ?", (operator_id,)).fetchone()
        op = _row(row) if row is not None else None
        with self._lock:
            self._cache[operator_id] = (now, op)
        return op

    def require(self, operator_id: str) -> Operator:
        op = self.get(operator_id, fresh=True)
        if op is None:
            raise NotFound(f"no operator {operator_id!r}")
        return op

    def find(self, ref: str) -> Operator:
        """By id, unique id prefix, or name."""
        ops = self.list()
        exact = [o for o in ops if o.operator_id == ref]
        if exact:
            return exact[0]
        named = [o for o in ops if o.name == ref and o.state != REMOVED] or [o for o in ops if o.name == ref]
        prefixed = [o for o in ops if ref and o.operator_id.startswith(ref)]
        for group in (named, prefixed):
            if len(group) == 1:
                return group[0]
            if len(group) > 1:
                raise InvalidArgument(f"operator {ref!r} is ambiguous ({len(group)} matches); give its id")
        raise NotFound(f"no operator {ref!r} (see `hyperinfer operators list`)")

    def list(self) -> list[Operator]:
        with self.store.transaction() as c:
            rows = c.execute(f"SELECT {_COLUMNS} FROM operators ORDER BY admitted, operator_id").fetchall()
        return [_row(r) for r in rows]

"""The ledger: what each node did, earned and lost (design §6), and the audit trail.

Per node (table ``ledger``, one row created lazily with the initial stake the
first time the node is seen):

    jobs        results the gateway accepted from it (primary, validator or tiebreaker runs)
    checks      times a validator's result was compared with its own (as primary or validator)
    agreements  checks it came out right (agreed, or found right by the referee)
    faults      rejected attestations plus disputes it lost
    skipped     times it was sampled but no independent validator existed
    credits     reward_per_job per accepted job, minus the reward of every job it lost a dispute on
    stake       initial_stake, minus what was slashed (never below 0)
    slashed     total slashed: min(slash_per_fault, stake) per fault
    quarantined set once faults reach quarantine_after; on_quarantine(node_id) is called once

Derived: ``reputation = (agreements + a) / (checks + n)`` with the prior
(a, n) = ``reputation_prior`` (rule of succession: 0.5 before any check), and
``probation``: what the gateway's :class:`~hyperinfer.verify.probation.Probation`
says when one is attached (``ledger.probation``: fewer than K consecutive checks
passed since joining or the last fault), else ``jobs < probation_jobs`` (0
disables probation).

Audit tables: ``attestations`` (every signed attestation the gateway accepted:
request id, node id, role, bytes, signature, time), ``faults`` (one row per
fault with its reason), ``evidence`` (one row per dispute with the full
:class:`~hyperinfer.verify.dispute.Dispute` as JSON), ``receipts`` (the latest
signed receipt per request id; a pending receipt is replaced when its
background check ends).

Storage: a :class:`hyperinfer.gateway.store.Store` (SQLite, or PostgreSQL shared
by several gateways), or any object with ``transaction()`` yielding a connection
that takes ``?`` parameters. The SQL follows the store's portability rule. Every
counter changes in one statement; a slash reads the stake after ``_ensure`` has
locked the node's row; several nodes are locked in node id order (no deadlock
between gateways). So concurrent gateways neither lose nor double a job, a check
or a slash. Tests use :func:`hyperinfer.gateway.store.open_store` (``":memory:"`` works).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from hyperinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from hyperinfer.verify.dispute import Dispute
from hyperinfer.verify.receipt import Receipt, receipt_from_json, receipt_to_json

log = logging.getLogger("hyperinfer.gateway.ledger")

COMPONENT = "ledger"
SUMMARY_KEYS = ("jobs", "checks", "faults", "credits", "stake", "slashed", "reputation", "probation")

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS ledger (
            node_id TEXT PRIMARY KEY,
            jobs INTEGER NOT NULL DEFAULT 0,
            checks INTEGER NOT NULL DEFAULT 0,
            agreements INTEGER NOT NULL DEFAULT 0,
            faults INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            credits DOUBLE PRECISION NOT NULL DEFAULT 0,
            stake DOUBLE PRECISION NOT NULL,
            slashed DOUBLE PRECISION NOT NULL DEFAULT 0,
            quarantined INTEGER NOT NULL DEFAULT 0,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS attestations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            role TEXT NOT NULL,
            attestation BLOB NOT NULL,
            signature BLOB NOT NULL,
            accepted BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS attestations_request ON attestations (request_id)",
        "CREATE INDEX IF NOT EXISTS attestations_node ON attestations (node_id)",
        """CREATE TABLE IF NOT EXISTS faults (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            request_id TEXT NOT NULL,
            dispute_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            slashed DOUBLE PRECISION NOT NULL,
            at BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS faults_node ON faults (node_id)",
        """CREATE TABLE IF NOT EXISTS evidence (
            dispute_id TEXT PRIMARY KEY,
            created BIGINT NOT NULL,
            model_name TEXT NOT NULL,
            model_version BIGINT NOT NULL,
            primary_node TEXT NOT NULL,
            validator_node TEXT NOT NULL,
            faults TEXT NOT NULL,
            resolved INTEGER NOT NULL,
            reason TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS receipts (
            request_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            receipt TEXT NOT NULL,
            updated BIGINT NOT NULL
        )""",
    ],
]


@dataclass(frozen=True)
class LedgerConfig:
    reward_per_job: float = 1.0  # R
    initial_stake: float = 100.0  # stake a node starts with when it is first seen
    slash_per_fault: float = 10.0  # S: taken from the stake per fault (at most what is left)
    quarantine_after: int = 3  # faults before quarantine; 0 disables
    probation_jobs: int = 10  # K: a node is on probation for its first K jobs; 0 disables
    # a node call that ran past --node-timeout: a fault of its own kind, with a smaller slash than a
    # wrong answer (a node may be slow for honest reasons), quarantined after this many
    timeout_slash: float = 1.0
    quarantine_after_timeouts: int = 5  # 0 disables
    reputation_prior: tuple[float, float] = (1.0, 2.0)  # (a, n): (agreements + a) / (checks + n)

    def __post_init__(self) -> None:
        for name in ("reward_per_job", "initial_stake", "slash_per_fault", "timeout_slash"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or v != v or v == float("inf"):
                raise InvalidArgument(f"{name}: must be a finite number >= 0, got {v!r}")
        for name in ("quarantine_after", "probation_jobs", "quarantine_after_timeouts"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InvalidArgument(f"{name}: must be an integer >= 0, got {v!r}")
        a, n = self.reputation_prior
        if not (0 <= a <= n) or n <= 0:
            raise InvalidArgument(f"reputation_prior: need 0 <= a <= n and n > 0, got {self.reputation_prior}")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    """``operators`` (gateway.operators.OperatorBook) and ``operator_of(node_id) -> operator id``:
    a node's fault also slashes its operator's shared bond and counts toward the operator's
    quarantine (``on_operator_quarantine(operator_id)``, once); its stake shows the bond left."""

    def __init__(self, store: Any, config: LedgerConfig | None = None,
                 on_quarantine: Callable[[str], None] | None = None, *, operators: Any = None,
                 operator_of: Callable[[str], str | None] | None = None,
                 on_operator_quarantine: Callable[[str], None] | None = None,
                 on_stale_view: Callable[[], None] | None = None):
        self.store = store
        self.on_stale_view = on_stale_view
        self.config = config or LedgerConfig()
        self.on_quarantine = on_quarantine
        self.operators = operators
        self.operator_of = operator_of
        self.on_operator_quarantine = on_operator_quarantine
        self.probation: Any = None  # verify.probation.Probation, attached by the gateway's assembly
        if hasattr(store, "migrate"):
            store.migrate(COMPONENT, MIGRATIONS)
        else:
            with store.transaction() as c:
                for step in MIGRATIONS:
                    for sql in step:
                        c.execute(sql)

    # ------------------------------------------------------------ internals

    def _ensure(self, c: Any, node_id: str, now: int) -> None:
        """Create the node's row if needed, and lock it (a write, even when it exists: on
        PostgreSQL the row lock is held to commit, so what is read next stays true)."""
        c.execute("INSERT INTO ledger (node_id, stake, created, updated) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (node_id) DO UPDATE SET updated = excluded.updated",
                  (node_id, float(self.config.initial_stake), now, now))

    def lock_nodes(self, node_ids: Iterable[str]) -> None:
        """In the caller's transaction, lock these nodes' rows in node id order (a batch that
        then touches them in any order cannot deadlock with another gateway's batch)."""
        now = _now_ms()
        with self.store.transaction() as c:
            for node_id in sorted(set(node_ids)):
                self._ensure(c, node_id, now)

    def _operator_id(self, node_id: str) -> str | None:
        if self.operators is None or self.operator_of is None:
            return None
        try:
            return self.operator_of(node_id)
        except Exception:  # noqa: BLE001 - an unknown node has no operator to slash
            return None

    def _fault(self, c: Any, node_id: str, kind: str, request_id: str, dispute_id: str,
               reason: str, now: int, forfeit_reward: bool, operators_out: list[str] | None = None,
               already_out: list[str] | None = None) -> bool:
        """Count a fault, slash, maybe revoke the job's reward; True if it newly quarantines the node.
        The node's operator gets the fault and the slash too; an operator it newly quarantines
        is appended to ``operators_out``. A node the ledger had already quarantined (on a shared
        store: another gateway did) is appended to ``already_out``."""
        self._ensure(c, node_id, now)  # lock order: node rows, then operator rows
        op_id = self._operator_id(node_id)
        if op_id is not None and self.operators.fault_in(c, op_id, float(self.config.slash_per_fault),
                                                         self.config.quarantine_after, now):
            if operators_out is not None:
                operators_out.append(op_id)
        row = c.execute("SELECT stake, faults, quarantined FROM ledger WHERE node_id = ?", (node_id,)).fetchone()
        slash = min(float(self.config.slash_per_fault), float(row[0]))
        forfeit = float(self.config.reward_per_job) if forfeit_reward else 0.0
        faults = int(row[1]) + 1
        n = self.config.quarantine_after
        quarantine = bool(n) and faults >= n and not row[2]
        if row[2] and already_out is not None:
            already_out.append(node_id)
        c.execute(
            """UPDATE ledger SET faults = faults + 1, stake = stake - ?, slashed = slashed + ?,
               credits = credits - ?, quarantined = CASE WHEN ? = 1 THEN 1 ELSE quarantined END, updated = ?
               WHERE node_id = ?""",
            (slash, slash, forfeit, 1 if quarantine else 0, now, node_id),
        )
        c.execute("INSERT INTO faults (node_id, kind, request_id, dispute_id, reason, slashed, at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (node_id, kind, request_id, dispute_id, reason, slash, now))
        return quarantine

    def _after_quarantine(self, node_ids: Iterable[str], operator_ids: Iterable[str] = (),
                          already: Iterable[str] = ()) -> list[str]:
        # a fault for a node the ledger had quarantined (another gateway of a shared store did):
        # this gateway's registry may still hold it as healthy (its cache is up to cache_ttl old),
        # so have it re-read the store now, or it keeps scheduling the node and counting faults
        if self.on_stale_view is not None and list(already):
            try:
                self.on_stale_view()
            except Exception:  # noqa: BLE001
                log.exception("on_stale_view failed")
        for op_id in operator_ids:
            log.warning("operator %s quarantined after %d faults of its nodes", op_id, self.config.quarantine_after)
            if self.on_operator_quarantine is not None:
                try:
                    self.on_operator_quarantine(op_id)
                except Exception:  # noqa: BLE001
                    log.exception("on_operator_quarantine(%s) failed", op_id)
        done = list(node_ids)
        for node_id in done:
            log.warning("node %s quarantined (repeated faults or timeouts)", node_id)
            if self.on_quarantine is not None:
                try:
                    self.on_quarantine(node_id)
                except Exception:  # noqa: BLE001 - the ledger row is already final; keep serving
                    log.exception("on_quarantine(%s) failed", node_id)
        return done

    # ------------------------------------------------------------ recording

    def record_job(self, node_id: str, request_id: str, attestation: bytes, signature: bytes,
                   role: str = "primary") -> None:
        """An accepted, correctly signed result: one job, one reward, one attestation row."""
        now = _now_ms()
        reward = float(self.config.reward_per_job)
        with self.store.transaction() as c:
            # one upsert (create or add): the most frequent write, one round trip on PostgreSQL
            c.execute("INSERT INTO ledger (node_id, jobs, credits, stake, created, updated) VALUES (?, 1, ?, ?, ?, ?) "
                      "ON CONFLICT (node_id) DO UPDATE SET jobs = ledger.jobs + 1, "
                      "credits = ledger.credits + excluded.credits, updated = excluded.updated",
                      (node_id, reward, float(self.config.initial_stake), now, now))
            c.execute("INSERT INTO attestations (request_id, node_id, role, attestation, signature, accepted) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (request_id, node_id, role, bytes(attestation), bytes(signature), now))

    def record_fault(self, node_id: str, reason: str, request_id: str = "", kind: str = "attestation") -> bool:
        """A rejected result (bad signature, replay, mismatch). True if the node is now quarantined."""
        now = _now_ms()
        ops: list[str] = []
        already: list[str] = []
        with self.store.transaction() as c:
            q = self._fault(c, node_id, kind, request_id, "", reason, now, forfeit_reward=False, operators_out=ops,
                            already_out=already)
        return bool(self._after_quarantine([node_id] if q else [], ops, already))

    def record_timeout(self, node_id: str, reason: str, request_id: str = "") -> bool:
        """A node call that ran past the gateway's node timeout (a stalling node): a ``timeout``
        row in ``faults``, ``timeout_slash`` taken from the stake, quarantine after
        ``quarantine_after_timeouts`` of them. Not counted in ``faults`` (wrong answers), so
        a slow honest node is not quarantined as fast as a cheat. True if newly quarantined."""
        now = _now_ms()
        with self.store.transaction() as c:
            self._ensure(c, node_id, now)
            row = c.execute("SELECT stake, quarantined FROM ledger WHERE node_id = ?", (node_id,)).fetchone()
            count = int(c.execute("SELECT COUNT(*) FROM faults WHERE node_id = ? AND kind = 'timeout'",
                                  (node_id,)).fetchone()[0]) + 1
            slash = min(float(self.config.timeout_slash), float(row[0]))
            n = self.config.quarantine_after_timeouts
            quarantine = bool(n) and count >= n and not row[1]
            c.execute("UPDATE ledger SET stake = stake - ?, slashed = slashed + ?, "
                      "quarantined = CASE WHEN ? = 1 THEN 1 ELSE quarantined END, updated = ? WHERE node_id = ?",
                      (slash, slash, 1 if quarantine else 0, now, node_id))
            c.execute("INSERT INTO faults (node_id, kind, request_id, dispute_id, reason, slashed, at) "
                      "VALUES (?, 'timeout', ?, '', ?, ?, ?)", (node_id, request_id, reason, slash, now))
        return bool(self._after_quarantine([node_id] if quarantine else []))

    def timeouts(self, node_id: str) -> int:
        with self.store.transaction() as c:
            return int(c.execute("SELECT COUNT(*) FROM faults WHERE node_id = ? AND kind = 'timeout'",
                                 (node_id,)).fetchone()[0])

    def record_check(self, node_ids: Sequence[str], agreed: bool) -> None:
        """A comparison without fault: an agreement, or an unresolved/unrefereed disagreement."""
        now = _now_ms()
        with self.store.transaction() as c:
            for node_id in sorted(node_ids):  # lock order: node id
                self._ensure(c, node_id, now)
                c.execute("UPDATE ledger SET checks = checks + 1, agreements = agreements + ?, updated = ? "
                          "WHERE node_id = ?", (1 if agreed else 0, now, node_id))

    def record_skipped(self, node_id: str) -> None:
        now = _now_ms()
        with self.store.transaction() as c:
            self._ensure(c, node_id, now)
            c.execute("UPDATE ledger SET skipped = skipped + 1, updated = ? WHERE node_id = ?", (now, node_id))

    def record_dispute(self, dispute: Dispute) -> list[str]:
        """Store the evidence and apply the verdict; return the nodes newly quarantined."""
        now = _now_ms()
        v = dispute.verdict
        quarantined = []
        ops: list[str] = []
        already: list[str] = []
        with self.store.transaction() as c:
            c.execute(
                """INSERT INTO evidence (dispute_id, created, model_name, model_version, primary_node,
                   validator_node, faults, resolved, reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (dispute.dispute_id, dispute.created_ms, dispute.model_name, dispute.model_version,
                 dispute.primary.node_id, dispute.validator.node_id, json.dumps(list(v.faults)),
                 1 if v.resolved else 0, v.reason, dispute.to_json()),
            )
            for node_id in sorted({dispute.primary.node_id, dispute.validator.node_id}):  # lock order
                self._ensure(c, node_id, now)
            if self.operators is not None:  # then their operators' rows, in id order
                for op_id in sorted({o for o in map(self._operator_id, v.faults) if o}):
                    c.execute("UPDATE operators SET updated = ? WHERE operator_id = ?", (now, op_id))
            for e in (dispute.primary, dispute.validator):
                self._ensure(c, e.node_id, now)
                right = v.resolved and e.node_id not in v.faults
                c.execute("UPDATE ledger SET checks = checks + 1, agreements = agreements + ?, updated = ? "
                          "WHERE node_id = ?", (1 if right else 0, now, e.node_id))
                if e.node_id in v.faults:
                    request_id = e.parsed.request_id
                    if self._fault(c, e.node_id, "dispute", request_id, dispute.dispute_id, v.reason, now,
                                   forfeit_reward=True, operators_out=ops, already_out=already):
                        quarantined.append(e.node_id)
        return self._after_quarantine(quarantined, ops, already)

    def store_receipt(self, receipt: Receipt) -> None:
        with self.store.transaction() as c:
            c.execute("INSERT INTO receipts (request_id, status, receipt, updated) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, "
                      "receipt = excluded.receipt, updated = excluded.updated",
                      (receipt.request_id, receipt.status, receipt_to_json(receipt), _now_ms()))

    # ------------------------------------------------------------ reading

    def _row(self, node_id: str) -> Any:
        with self.store.transaction() as c:
            return c.execute("SELECT * FROM ledger WHERE node_id = ?", (node_id,)).fetchone()

    def counts(self, node_id: str) -> dict[str, Any]:
        """The node's counters as stored (a fresh node's defaults if unseen), nothing derived."""
        r = self._row(node_id)
        cfg = self.config
        if r is None:
            d = dict(jobs=0, checks=0, agreements=0, faults=0, skipped=0, credits=0.0,
                     stake=float(cfg.initial_stake), slashed=0.0, quarantined=False)
        else:
            d = dict(jobs=int(r["jobs"]), checks=int(r["checks"]), agreements=int(r["agreements"]),
                     faults=int(r["faults"]), skipped=int(r["skipped"]), credits=float(r["credits"]),
                     stake=float(r["stake"]), slashed=float(r["slashed"]), quarantined=bool(r["quarantined"]))
        return d

    def details(self, node_id: str) -> dict[str, Any]:
        """Everything the ledger knows about a node (a fresh node's defaults if unseen)."""
        d = self.counts(node_id)
        cfg = self.config
        op_id = self._operator_id(node_id)
        op = self.operators.get(op_id) if op_id is not None else None
        if op is not None:  # nodes of one operator share its bond: their stake is what is left of it
            d["stake"] = op.remaining
            d["operator_slashed"] = op.slashed
            d["admission"] = op.admission
        a, n = cfg.reputation_prior
        d["reputation"] = (d["agreements"] + a) / (d["checks"] + n)
        if self.probation is not None:
            d["probation"] = self.probation.on_probation(node_id)
        else:
            d["probation"] = d["jobs"] < cfg.probation_jobs
        return d

    def summary(self, node_id: str) -> dict[str, Any]:
        """The keys Pool.Status reports: jobs, checks, faults, credits, stake, slashed, reputation, probation."""
        d = self.details(node_id)
        return {k: d[k] for k in SUMMARY_KEYS}

    def receipt(self, request_id: str) -> Receipt | None:
        with self.store.transaction() as c:
            row = c.execute("SELECT receipt FROM receipts WHERE request_id = ?", (request_id,)).fetchone()
        return receipt_from_json(row[0]) if row else None

    def evidence(self, dispute_id: str) -> Dispute:
        with self.store.transaction() as c:
            return _evidence(c, dispute_id)

    def list_evidence(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.transaction() as c:
            return _list_evidence(c, limit)

    def faults(self, node_id: str) -> list[dict[str, Any]]:
        with self.store.transaction() as c:
            rows = c.execute("SELECT kind, request_id, dispute_id, reason, slashed, at FROM faults "
                             "WHERE node_id = ? ORDER BY id", (node_id,)).fetchall()
        return [dict(kind=r[0], request_id=r[1], dispute_id=r[2], reason=r[3], slashed=float(r[4]), at_ms=int(r[5]))
                for r in rows]

    def attestation_count(self, node_id: str | None = None) -> int:
        with self.store.transaction() as c:
            if node_id is None:
                return int(c.execute("SELECT COUNT(*) FROM attestations").fetchone()[0])
            return int(c.execute("SELECT COUNT(*) FROM attestations WHERE node_id = ?", (node_id,)).fetchone()[0])


def _evidence(c: Any, dispute_id: str) -> Dispute:
    row = c.execute("SELECT data FROM evidence WHERE dispute_id = ?", (dispute_id,)).fetchone()
    if row is None and dispute_id:
        # a unique prefix is enough, as ids are printed short
        prefix = dispute_id.replace("%", "").replace("_", "")
        rows = c.execute("SELECT data FROM evidence WHERE dispute_id LIKE ?", (prefix + "%",)).fetchall()
        if len(rows) > 1:
            raise InvalidArgument(f"dispute id prefix {dispute_id!r} is ambiguous ({len(rows)} matches)")
        row = rows[0] if rows else None
    if row is None:
        raise NotFound(f"no evidence with dispute id {dispute_id!r}")
    return Dispute.from_json(row[0])


def _list_evidence(c: Any, limit: int) -> list[dict[str, Any]]:
    rows = c.execute("SELECT dispute_id, created, model_name, model_version, primary_node, validator_node, "
                     "faults, resolved, reason FROM evidence ORDER BY created DESC LIMIT ?", (int(limit),)).fetchall()
    return [dict(dispute_id=r[0], created_ms=int(r[1]), model_name=r[2], model_version=int(r[3]),
                 primary_node=r[4], validator_node=r[5], faults=json.loads(r[6]), resolved=bool(r[7]),
                 reason=r[8]) for r in rows]


class LedgerReader:
    """Read-only access to a gateway database: an SQLite file or a ``postgresql://`` URL
    (the audit commands; safe while gateways run)."""

    def __init__(self, path: str | Any):
        from hyperinfer.gateway.store import is_database_url

        if is_database_url(path):
            from hyperinfer.gateway.store.postgresql import connect, redact

            self._conn = connect(str(path), read_only=True)
            try:
                self._conn.execute("SELECT 1 FROM evidence LIMIT 1")
            except Exception as e:  # noqa: BLE001 - psycopg.Error: one line, no traceback
                self._conn.close()
                raise FailedPrecondition(f"{redact(str(path))} is not a gateway database with a ledger: "
                                         f"{' '.join(str(e).split())}") from None
            return
        p = Path(path).expanduser()
        if not p.is_file():
            raise NotFound(f"gateway database {p} not found (pass --db)")
        try:
            self._conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
            self._conn.execute("SELECT 1 FROM evidence LIMIT 1")
        except sqlite3.DatabaseError as e:
            raise FailedPrecondition(f"{p} is not a gateway database with a ledger: {e}") from None

    def evidence(self, dispute_id: str) -> Dispute:
        return _evidence(self._conn, dispute_id)

    def list_evidence(self, limit: int = 50) -> list[dict[str, Any]]:
        return _list_evidence(self._conn, limit)

    def receipt(self, request_id: str) -> Receipt | None:
        row = self._conn.execute("SELECT receipt FROM receipts WHERE request_id = ?", (request_id,)).fetchone()
        return receipt_from_json(row[0]) if row else None

    def gateway_key(self, gateway_id: str) -> bytes | None:
        """The public key of a gateway that used this database (None if it never did)."""
        try:
            row = self._conn.execute("SELECT public_key FROM gateways WHERE gateway_id = ?", (gateway_id,)).fetchone()
        except Exception:  # noqa: BLE001 - a database from before the gateways table: unknown
            return None
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()


def config_from(obj: Any) -> LedgerConfig:
    """A LedgerConfig from any settings object, using the fields it has (same names)."""
    defaults = LedgerConfig()
    kw = {}
    for name in ("reward_per_job", "initial_stake", "slash_per_fault", "quarantine_after", "probation_jobs",
                 "timeout_slash", "quarantine_after_timeouts"):
        value = getattr(obj, name, None)
        if value is not None:
            kw[name] = type(getattr(defaults, name))(value)
    return LedgerConfig(**kw)


def install(gateway: Any) -> Ledger:
    """Gateway component (see gateway.app.EXTENSIONS): the ledger on the gateway's store,
    quarantining through the registry, reported by Pool.Status."""

    def quarantine(node_id: str) -> None:
        gateway.registry.set_state(node_id, "quarantined", reason="ledger: repeated verification faults")

    def quarantine_operator(operator_id: str) -> None:
        gateway.registry.quarantine_operator(operator_id, reason="ledger: its operator was quarantined")

    def operator_of(node_id: str) -> str | None:
        op = gateway.registry.operator_of(node_id)
        return op.operator_id if op is not None else None

    ledger = Ledger(gateway.store, config_from(gateway.config), on_quarantine=quarantine,
                    operators=getattr(gateway, "operators", None), operator_of=operator_of,
                    on_operator_quarantine=quarantine_operator,
                    on_stale_view=lambda: gateway.registry.reload())
    gateway.ledger = ledger
    c = ledger.config
    log.info("ledger: reward %g per job, stake %g, slash %g per fault, quarantine after %s faults, "
             "%s; cheating is unprofitable when the sample rate p > C / %g "
             "(C: compute cost saved per job; see `hyperinfer economics`)",
             c.reward_per_job, c.initial_stake, c.slash_per_fault, c.quarantine_after or "never",
             f"probation until {c.probation_jobs} checks in a row" if c.probation_jobs else "no probation",
             c.reward_per_job + c.slash_per_fault)
    return ledger

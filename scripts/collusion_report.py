"""Wrong answers served to clients by colluding nodes, per pool set-up (a bounded run, ~1 min).

A closed in-process pool (tests/grpc/closed_pool.py: real gateway, real nodes over gRPC, ONNX
Runtime instead of TVM) serves ``mlp`` to one client in mode ``auto`` (answer first, check in
the background: the worst case for wrong answers served). Cheaters never compute and return
zeros with valid signatures. Rows:

* pair, one operator: two cheating node keys certified by one operator key, two honest operators
* pair, two operators: the same pair under two admitted operator keys (they can validate each other)
* colluders only: two cheating operators and no honest node (only the audits can catch them)

For each: requests answered, wrong answers served (checked against ONNX Runtime here), final
receipt statuses, whether every cheater ended quarantined, and the share the settings allow
(a cheater answers about K / (p_catch) times before its K-th fault).

    python scripts/collusion_report.py [--runs 3] [--requests 300] [--audit-rate 0.2] [--sample-rate 0.1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "grpc"), str(ROOT / "tests")]


def one_run(tmp: Path, setup: str, requests: int, sample_rate: float, audit_rate: float, k: int,
            probation_jobs: int = 0) -> dict:
    from closed_pool import MODEL, start_pool
    from support import wait_for
    from test_collusion import final_statuses, run_traffic

    pool = start_pool(tmp, sample_rate=sample_rate, audit_rate=audit_rate, quarantine_after=k,
                      probation_jobs=probation_jobs)
    try:
        cheaters = []
        if setup == "pair, one operator":
            party = pool.operator("party")
            cheaters = [pool.node("c1", party, cheat=True), pool.node("c2", party, cheat=True)]
        else:
            cheaters = [pool.node("c1", pool.operator("x1"), cheat=True),
                        pool.node("c2", pool.operator("x2"), cheat=True)]
        if setup != "colluders only":
            pool.node("h1", pool.operator("h1"))
            pool.node("h2", pool.operator("h2"))
        n = len(pool.nodes)
        wait_for(lambda: len(pool.gateway.registry.schedulable_nodes(MODEL, 1)) == n, 60, "nodes ready")
        statuses, wrong, errors = run_traffic(pool, requests)
        reg = pool.gateway.registry
        return {"answered": sum(statuses.values()), "wrong": wrong, "errors": errors,
                "final": final_statuses(pool),
                "quarantined": sum(reg.get(c.node_id).state == "quarantined" for c in cheaters)}
    finally:
        pool.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--sample-rate", type=float, default=0.1)
    p.add_argument("--audit-rate", type=float, default=0.2)
    p.add_argument("--quarantine-after", type=int, default=3)
    p.add_argument("--probation-jobs", type=int, default=0,
                   help="gateway --probation-jobs (0, the default here, isolates checks and audits)")
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from hyperinfer.verify.economics import detection_rate

    print(f"sample rate p={a.sample_rate:g}, audit rate a={a.audit_rate:g}, quarantine after K={a.quarantine_after}, "
          f"probation {a.probation_jobs or 'off'}, {a.requests} requests per run, mode auto")
    print(f"{'set-up':22} {'run':>3} {'answered':>8} {'wrong':>5} {'errors':>6} {'cheaters q.':>11}  final receipts")
    for setup in ("pair, one operator", "pair, two operators", "colluders only"):
        wrongs = []
        for run in range(1, a.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                r = one_run(Path(tmp), setup, a.requests, a.sample_rate, a.audit_rate, a.quarantine_after,
                            a.probation_jobs)
            wrongs.append(r["wrong"])
            final = ", ".join(f"{k} {v}" for k, v in sorted(r["final"].items()))
            print(f"{setup:22} {run:>3} {r['answered']:>8} {r['wrong']:>5} {r['errors']:>6} {r['quarantined']:>9}/2  {final}")
        colluding = setup != "pair, one operator"
        d = detection_rate(a.sample_rate, a.audit_rate, colluding=setup == "colluders only")
        print(f"{setup:22} mean wrong served {sum(wrongs) / len(wrongs):.1f}; a cheater is caught with p≈{d:.3g} "
              f"per answer{' (audits only)' if setup == 'colluders only' else ''}, so about "
              f"{2 * a.quarantine_after / d:.0f} wrong answers for two cheaters before both are quarantined "
              f"{'(less: a failed audit also faults the validator that agreed)' if colluding else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

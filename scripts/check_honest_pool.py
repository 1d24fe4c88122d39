#!/usr/bin/env python
"""Two honest nodes on different artifacts must never be found at fault.

Compiles one model for two CPU targets whose floats differ (default
``cpu-x86_64`` and ``cpu-x86_64-avx2``: other instructions, other rounding),
starts a local pool (``hyperinfer.local_pool``: a gateway and two nodes of
different operators as real processes on 127.0.0.1), pins each node to one of
the two artifacts, and sends ``--requests`` requests with ``verify=always`` so
that every answer is re-run on the other node and compared within the
tolerance calibrated at compile time. Prints how the two artifacts differ
(run in this process on the first inputs), the receipt statuses, and each
node's ledger (jobs, checks, faults, stake).

Exit status 0 if every request was checked and agreed and no node has a fault;
1 otherwise. tests/e2e/test_honest_pool.py runs it on the small models.

    python scripts/check_honest_pool.py --model ppocr-cls --requests 300
    python scripts/check_honest_pool.py --model mlp --requests 300 --work /tmp/honest
    python scripts/check_honest_pool.py --model ppocr-cls --targets cpu-x86_64-avx2,vulkan  # cross-vendor
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hyperinfer import zoo  # noqa: E402

TARGETS = ("cpu-x86_64", "cpu-x86_64-avx2")


def compile_package(model: str, repo: Path, targets: tuple[str, ...], work: Path):
    from hyperinfer.compile import compile_model
    from hyperinfer.package import ModelRepository

    for p in ModelRepository(repo) if repo.is_dir() else []:
        if p.name == model and set(targets) <= set(p.manifest.artifacts):
            return p
    if model in zoo.PPOCR:
        src = zoo.fetch_ppocr(work / "onnx", names=[model])[model]
        shapes = {"x": zoo.PPOCR[model].input_shape}
    else:
        src, shapes = zoo.build_small(model, work / "onnx")
    print(f"compiling {model} for {', '.join(targets)} ...", flush=True)
    return compile_model(src, name=model, out_dir=repo, targets=list(targets), input_shapes=shapes,
                         version=1, progress=True, force=True, threads=1)


def artifact_difference(package, inputs: list[dict[str, np.ndarray]], targets) -> str:
    """How far apart the two artifacts' outputs are on the same inputs (in this process)."""
    from hyperinfer.runtime.runners import runner_for_package

    a, b = (runner_for_package(package, t, threads=1) for t in targets)
    worst, identical = 0.0, 0
    for x in inputs:
        oa, ob = a.run(x), b.run(x)
        same = all(np.array_equal(oa[k], ob[k]) for k in oa)
        identical += same
        for k in oa:
            if np.issubdtype(oa[k].dtype, np.floating):
                worst = max(worst, float(np.max(np.abs(oa[k].astype(np.float64) - ob[k]))))
    return (f"{targets[0]} vs {targets[1]} in this process on {len(inputs)} inputs: "
            f"{len(inputs) - identical} with different outputs, max |difference| {worst:.3g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ppocr-cls", help="zoo model: mlp, cnn, ppocr-det, ppocr-rec, ppocr-cls")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--targets", default=",".join(TARGETS), help="the two target ids, comma-separated")
    ap.add_argument("--work", type=Path, default=None, help="compiled packages and pool state (kept)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pool")
    ap.add_argument("--node-timeout", type=float, default=None,
                    help="gateway --node-timeout (seconds per node call; PP-OCR det on lavapipe needs ~900)")
    args = ap.parse_args()
    targets = tuple(args.targets.split(","))
    if len(targets) != 2 or targets[0] == targets[1]:
        ap.error("--targets: give two different target ids")
    work = args.work or Path(tempfile.mkdtemp(prefix="hyperinfer-honest-"))
    work.mkdir(parents=True, exist_ok=True)

    import tritonclient.grpc as grpcclient

    from hyperinfer.demo import make_inputs
    from hyperinfer.local_pool import LocalPool, UpOptions
    from hyperinfer.verify.attestation import Attestation
    from hyperinfer.verify.receipt import RECEIPT_PARAMETER, receipt_from_json

    package = compile_package(args.model, work / "repo", targets, work)
    shas = {t: package.manifest.artifacts[t].sha256[:16] for t in targets}
    print(f"artifacts: {', '.join(f'{t} {s}' for t, s in shas.items())}")

    state = work / f"state-{int(time.time())}"  # a fresh ledger per run
    pool = LocalPool(UpOptions(state=state, repository=work / "repo", nodes=2, port=0, sample_rate=1.0,
                               allow_unsigned=True, node_targets=list(targets), model_timeout=args.timeout,
                               gateway_args=["--probation-jobs", "0", "--quarantine-after", "0"]
                               + (["--node-timeout", f"{args.node_timeout:g}"] if args.node_timeout else [])))
    statuses: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    try:
        pool.prepare(progress=False)
        pool.start()
        pool.wait_ready()
        client = grpcclient.InferenceServerClient(pool.address)
        meta = client.get_model_metadata(args.model, as_json=False)
        kept: list[dict[str, np.ndarray]] = []
        t0 = time.monotonic()
        for i in range(args.requests):
            arrays, _ = make_inputs(meta, seed=i)
            if len(kept) < 20:
                kept.append(arrays)
            infer_inputs = []
            for name, a in arrays.items():
                spec = next(s for s in meta.inputs if s.name == name)
                x = grpcclient.InferInput(name, list(a.shape), spec.datatype)
                x.set_data_from_numpy(a)
                infer_inputs.append(x)
            result = client.infer(args.model, infer_inputs, parameters={"verify": "always"})
            receipt = receipt_from_json(result.get_response().parameters[RECEIPT_PARAMETER].string_param)
            statuses[receipt.status] += 1
            primary = Attestation.from_bytes(receipt.attestation).target_id
            validator = (Attestation.from_bytes(receipt.validator_attestation).target_id
                         if receipt.validator_attestation else "-")
            pairs[(primary, validator)] += 1
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{args.requests} requests, {dict(statuses)}", flush=True)
        elapsed = time.monotonic() - t0
        # the ledger commits in the background: wait (bounded) for every primary and validator job
        deadline = time.monotonic() + 30
        while True:
            status = pool.status()
            if sum(n["jobs"] for n in status["nodes"]) >= 2 * args.requests or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        pool.stop()

    print(f"\n{args.model}: {args.requests} requests with verify=always in {elapsed:.1f} s")
    print(artifact_difference(package, kept, targets))
    print("receipt statuses: " + json.dumps(dict(statuses)))
    print("primary -> validator artifacts: "
          + ", ".join(f"{p} -> {v}: {n}" for (p, v), n in sorted(pairs.items())))
    faults = 0
    for n in status["nodes"]:
        faults += n["faults"]
        print(f"node {n['node_id'][:12]} {n['operator']}: jobs {n['jobs']}, checks {n['checks']}, "
              f"faults {n['faults']}, stake {n['stake']:g}, slashed {n['slashed']:g}")
    cross = sum(n for (p, v), n in pairs.items() if v not in ("-", p))
    ok = faults == 0 and statuses["agreed"] == args.requests
    print(f"checked {sum(statuses.values())}, agreed {statuses['agreed']}, across artifacts {cross}, "
          f"nodes at fault {faults}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

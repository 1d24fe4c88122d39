#!/usr/bin/env python
"""Where the time goes: every TVM kernel of a model's native build next to the ONNX Runtime node
it corresponds to, in one process.

    python scripts/profile_kernels.py [--model resnet50] [--threads 1] [--rounds 9] [--top 25]

Builds the architecture of hyperinfer/zoo_arch.py (seeded random weights) for the native CPU
target, then times each kernel call inside the whole network (the Relax VM's instrument hook
around every call; the fastest of ``--rounds`` inferences per call site, so caches are as warm or
cold as in a real run) and each ONNX Runtime node (its profiler, same thread count, fastest of
the rounds). Convolutions are matched by input and weight shape (the TVM kernel's weight may be
repacked; its element count is the same; a channel-blocked input [n, C/16, h, w, 16] counts as
the NCHW shape it holds), ResNet's stride-2 1x1 shortcuts (NCHW builds) by the sliced input.
``HYPERINFER_LAYOUT=NCHW`` profiles the NCHW build of an AVX-512 target.
Prints the totals, the TVM kernels by time, ONNX Runtime by op type and the per-conv table
sorted by the time TVM loses. Single-thread numbers are the ones load from other processes
moves least.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def tvm_kernels(so: Path, x: dict, rounds: int) -> dict[str, list[tuple[float, tuple]]]:
    """{kernel: [(fastest us, arg shapes) per call site]} over ``rounds`` inferences."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in x.values()]
    for _ in range(3):
        vm["main"](*args)
    calls: list[tuple[str, float, tuple]] = []
    start = [0.0]

    def instrument(_func, sym, before, _ret, *a):
        if before:
            start[0] = time.perf_counter()
        else:
            shapes = tuple(tuple(int(d) for d in t.shape) for t in a if hasattr(t, "shape"))
            calls.append((sym, (time.perf_counter() - start[0]) * 1e6, shapes))
        return 0

    vm.set_instrument(instrument)
    per: dict[str, list[list[tuple[float, tuple]]]] = {}
    for _ in range(rounds):
        calls.clear()
        vm["main"](*args)
        sites: dict[str, list[tuple[float, tuple]]] = {}
        for sym, us, shapes in calls:
            sites.setdefault(sym, []).append((us, shapes))
        for sym, v in sites.items():
            per.setdefault(sym, []).append(v)
    out = {}
    for sym, rs in per.items():
        out[sym] = [(min(r[i][0] for r in rs), rs[0][i][1]) for i in range(len(rs[0]))]
    return out


def ort_nodes(onnx_path: Path, x: dict, threads: int, rounds: int, work: Path) -> list[tuple[float, str, str, list]]:
    """[(fastest us, node, op type, input shapes)] from ONNX Runtime's profiler."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(work / "ort-profile")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    for _ in range(rounds + 3):
        sess.run(None, x)
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e.get("args", {})
            shapes = [tuple(next(iter(s.values()))) for s in a.get("input_type_shape", [])]
            nodes.setdefault(e["name"][: -len("_kernel_time")], []).append((e["dur"], a.get("op_name", "?"), shapes))
    return [(min(d for d, _, _ in v), k, v[0][1], v[0][2]) for k, v in nodes.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--target", default="native")
    ap.add_argument("--work-dir", default=None)
    args = ap.parse_args(argv)

    import onnx

    from hyperinfer import zoo_arch
    from hyperinfer.compile import build, cleanup, targets
    from hyperinfer.runtime import configure_threads

    configure_threads(args.threads)
    target = targets.resolve([args.target])[0]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="hyperinfer-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    src = zoo_arch.save(args.model, work / f"{args.model}.onnx")
    clean = cleanup.clean(cleanup.load_onnx(src), {}, threads=args.threads)
    onnx_path = work / f"{args.model}.clean.onnx"
    onnx.save(clean.model, str(onnx_path))
    so = work / f"{args.model}.{target.id}.so"
    build.build_artifact(build.import_onnx(clean.model), target, so)
    x = cleanup.random_inputs(clean.inputs, np.random.default_rng(0))

    tvm_calls = tvm_kernels(so, x, args.rounds)
    ort_rows = ort_nodes(onnx_path, x, args.threads, args.rounds, work)
    tvm_total = sum(us for v in tvm_calls.values() for us, _ in v)
    ort_total = sum(r[0] for r in ort_rows)
    print(f"{args.model} on {target.id}, {args.threads} thread(s), fastest of {args.rounds} per call, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"sum of kernels: TVM {tvm_total / 1e3:.2f} ms, ONNX Runtime {ort_total / 1e3:.2f} ms, "
          f"ratio {tvm_total / ort_total:.2f}")
    print("\nTVM kernels (us, all calls):")
    for total, sym, n in sorted(((sum(us for us, _ in v), k, len(v)) for k, v in tvm_calls.items()), reverse=True)[:args.top]:
        print(f"{total:9.0f} {100 * total / tvm_total:5.1f}%  x{n:<3d} {sym}")
    print("\nONNX Runtime by op type (us):")
    by_type: dict[str, float] = {}
    for us, _, op, _ in ort_rows:
        by_type[op] = by_type.get(op, 0.0) + us
    for op, us in sorted(by_type.items(), key=lambda t: -t[1]):
        print(f"{us:9.0f} {100 * us / ort_total:5.1f}%  {op}")

    # convolutions: TVM call sites keyed by (input shape, weight element count)
    tvm_by: dict[tuple, list[tuple[float, str]]] = {}
    for sym, sites in tvm_calls.items():
        for us, shapes in sites:
            if len(shapes) >= 3 and len(shapes[0]) in (4, 5) and len(shapes[1]) >= 4:
                xs = shapes[0]
                if len(xs) == 5:  # channel-blocked [n, C/b, h, w, b]: the NCHW shape it holds
                    xs = (xs[0], xs[1] * xs[4], xs[2], xs[3])
                tvm_by.setdefault((xs, int(np.prod(shapes[1]))), []).append((us, sym))
    rows = []
    for us, _, op, shapes in ort_rows:
        if op not in ("Conv", "FusedConv") or len(shapes) < 2:
            continue
        rows.append((shapes[0], shapes[1], us))
    table: dict[tuple, list] = {}
    for xs, ws, us in rows:
        table.setdefault((xs, ws), []).append(us)
    print("\nconvolutions (input, weight): ONNX Runtime us, TVM us (all calls), ratio, TVM kernel")
    out = []
    for (xs, ws), ort_us in table.items():
        wn = int(np.prod(ws))
        hits = [h for (ts, n), v in tvm_by.items() if wn <= n <= wn * 1.1
                and (ts == xs or (ts[:2] == xs[:2] and ts[2] * 2 == xs[2] and ws[2] == 1)) for h in v]
        t = sum(us for us, _ in hits)
        out.append((t - sum(ort_us), xs, ws, sum(ort_us), len(ort_us), t, sorted({s for _, s in hits})))
    for diff, xs, ws, o, n, t, syms in sorted(out, key=lambda r: -r[0]):
        print(f"{str(xs):20s} {str(ws):20s} x{n:<2d} ORT {o:7.0f}  TVM {t:7.0f}  {t / o if o else 0:5.2f}  "
              f"{diff:+6.0f}  {', '.join(syms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""TVM artifacts vs ONNX Runtime on the PP-OCR models, public architectures and small models, in one process.

    python scripts/bench_models.py [--threads 2] [--runs 30] [--rounds 1] [--markdown bench.md]
                                   [--models ppocr-det,resnet50,...] [--repository DIR]
                                   [--compat compat.md]

Architectures of hyperinfer/zoo_arch.py (resnet50, resnet18, resnet50-caffe2,
mobilenetv2, densenet121, inception, squeezenet, transformer, detector, lstm)
are built at their published size with seeded random weights; ``--compat``
writes the compatibility table (model, ops, compiles, max error, ratios), a
model that does not compile being a row with its error.

For every model: ONNX Runtime (CPU provider) on the cleaned model, the TVM
default build (rule-based schedules) and, when a tuning database exists, the
TVM tuned build, all with the same thread count. Latency is the median of
``--runs`` runs after warm-up; the runtimes are measured in interleaved blocks
so that load from other processes hits them alike, ``--rounds N`` times (the
ratio is the median of the rounds' ratios). Ratios are TVM / ONNX Runtime
(below 1.0: TVM is faster); "fastest runs" is the fastest TVM run over the
fastest ONNX Runtime run, which load from other processes moves least; the
load average is printed with each model. GFLOP/s counts conv, conv-transpose,
matmul and gemm multiply-adds (x2) from the ONNX graph.

``--target native`` (the default) builds for the best CPU target this machine
runs (``cpu-x86_64-avx512`` on an AVX-512 host), the ISA ONNX Runtime's MLAS
dispatches to on the same host: compare like with like. The speed goal on a
ResNet-50-class net:

    python scripts/bench_models.py --models resnet50,resnet18 --runs 12 --rounds 3

``--vulkan`` adds the vulkan artifact (TVM's WGSL kernels run by wgpu-native)
on this machine's WebGPU adapter, timed on its own (``--vulkan-runs``, median).
On lavapipe (a Vulkan driver that runs on the CPU) it is a correctness backend:
expect tens to hundreds of times ONNX Runtime's latency; on a GPU it is a speed one.

Tuning databases are looked up in ``--repository DIR`` (packages written by
``hyperinfer compile``: ``DIR/<name>/<version>/tuning/<target>/``, the newest
version first) and in ``--tuning-root DIR`` (``DIR/<name>/<target>/``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PPOCR = ["ppocr-det", "ppocr-rec", "ppocr-cls"]
SMALL = ["mlp", "cnn", "two-inputs", "int-bool"]
ARCH = ["resnet50", "resnet18", "resnet50-caffe2", "mobilenetv2", "densenet121", "inception", "squeezenet",
        "transformer", "detector", "lstm"]


@dataclass
class Row:
    model: str
    shape: str
    ort_ms: float
    tvm_ms: float
    tuned_ms: float | None
    err: float
    tuned_err: float | None
    gflop: float
    compile_s: float
    rules: str = ""
    ops: str = ""
    vulkan_ms: float | None = None
    vulkan_err: float | None = None
    vulkan_note: str = ""
    ratio_med: float | None = None  # median over rounds of (median TVM / median ORT) within the round
    tuned_ratio_med: float | None = None
    ratio_min: float | None = None  # fastest TVM run / fastest ORT run (other processes only slow runs down)
    tuned_ratio_min: float | None = None
    load: float | None = None  # 1-minute load average while this model was timed
    tuned_is_default: bool = False  # tuned, and no tuned schedule beat the default (same artifact)

    @property
    def ratio(self) -> float:
        return self.ratio_med if self.ratio_med is not None else self.tvm_ms / self.ort_ms

    @property
    def tuned_ratio(self) -> float | None:
        if self.tuned_ms is None:
            return None
        return self.tuned_ratio_med if self.tuned_ratio_med is not None else self.tuned_ms / self.ort_ms


# ---------------------------------------------------------------- FLOPs

def count_gflop(model) -> float:
    """Multiply-adds x2 of Conv, ConvTranspose, MatMul and Gemm, from inferred shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in m.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    macs = 0
    for n in m.graph.node:
        try:
            if n.op_type == "Conv":
                w = shapes[n.input[1]]
                out = shapes[n.output[0]]
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
            elif n.op_type == "ConvTranspose":
                x = shapes[n.input[0]]
                w = shapes[n.input[1]]  # [Cin, Cout/g, kh, kw]
                macs += int(np.prod(x)) * int(np.prod(w[1:]))
            elif n.op_type in ("MatMul", "Gemm"):
                a = shapes[n.input[0]]
                out = shapes[n.output[0]]
                trans_a = any(at.name == "transA" and at.i for at in n.attribute)
                k = a[-2] if trans_a else a[-1]
                macs += int(np.prod(out)) * int(k)
        except (KeyError, IndexError):
            continue
    _ = onnx
    return 2.0 * macs / 1e9


# ---------------------------------------------------------------- models

def sources(names: list[str], work: Path) -> list[tuple[str, Path, dict]]:
    from hyperinfer import zoo, zoo_arch

    out = []
    ppocr = [n for n in names if n in zoo.PPOCR]
    paths = zoo.fetch_ppocr(names=tuple(ppocr)) if ppocr else {}
    for n in names:
        if n in zoo.PPOCR:
            m = zoo.PPOCR[n]
            out.append((n, paths[n], {"x": m.input_shape}))
        elif n in zoo.SMALL:
            p, shapes = zoo.build_small(n, work)
            out.append((n, p, dict(shapes)))
        elif n in zoo_arch.ARCHS:
            out.append((n, zoo_arch.save(n, work / f"{n}.onnx"), {}))
        else:
            raise SystemExit(f"unknown model {n!r}; known: {', '.join(PPOCR + ARCH + SMALL)}")
    return out


def find_tuning(name: str, target_id: str, repository: Path | None, tuning_root: Path | None) -> Path | None:
    from hyperinfer.compile import tune

    cands: list[Path] = []
    if repository is not None and (repository / name).is_dir():
        versions = sorted((p for p in (repository / name).iterdir() if p.is_dir()),
                          key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
                          reverse=True)
        cands += [v / "tuning" / target_id for v in versions]
    if tuning_root is not None:
        cands.append(tuning_root / name / target_id)
    for c in cands:
        # a database that kept nothing still says the model was tuned: its column reads "= default"
        if tune.has_tuning(c) or (c / tune.CHOICES).is_file():
            return c
    return None


# ---------------------------------------------------------------- timing

def interleaved(fns: dict[str, callable], runs: int, warmup: int, blocks: int = 3) -> dict[str, float]:
    """Median ms per function, measured in alternating blocks with a warm-up before each.

    Not call by call: ONNX Runtime's worker threads spin for a while after a
    run and would steal the cores from whatever runs right after it.
    """
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, runs, warmup, blocks).items()}


def interleaved_samples(fns: dict[str, callable], runs: int, warmup: int, blocks: int = 3) -> dict[str, list[float]]:
    """Every timed run (ms) per function, in the alternating blocks of :func:`interleaved`."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_block = max(1, -(-runs // blocks))
    for _ in range(blocks):
        for k, f in fns.items():
            for _ in range(warmup):
                f()
            for _ in range(per_block):
                t = time.perf_counter()
                f()
                samples[k].append((time.perf_counter() - t) * 1e3)
    return samples


def max_error(ref: dict, got: dict) -> float:
    err = 0.0
    for k, a in ref.items():
        b = got[k]
        if a.dtype.kind in "biu":
            err = max(err, float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if a.size else 0.0)
        else:
            err = max(err, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0)
    return err


def thread_affinity_report() -> str:
    """CPUs each thread of this process may run on (to catch a pool pinned to CPU 0)."""
    seen: dict[str, int] = {}
    for t in Path("/proc/self/task").iterdir():
        try:
            for line in (t / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    v = line.split(":", 1)[1].strip()
                    seen[v] = seen.get(v, 0) + 1
        except OSError:
            continue
    return ", ".join(f"{n} threads on CPUs {v}" for v, n in sorted(seen.items()))


# ---------------------------------------------------------------- main

def bench(args) -> tuple[list[Row], list[tuple[str, str, str]]]:
    """(measured rows, (model, ops, error) of the models that do not compile)."""
    import onnx

    from hyperinfer.compile import build, cleanup, targets
    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.runtime import ORTRunner, TVMRunner, configure_threads

    configure_threads(args.threads)
    target = targets.resolve([args.target])[0]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="hyperinfer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed: list[tuple[str, str, str]] = []
    from hyperinfer.errors import HyperinferError

    for name, path, shapes in sources(args.models.split(","), work):
        model = cleanup.load_onnx(path)
        ops = f"{len(model.graph.node)} nodes, {len({n.op_type for n in model.graph.node})} op types"
        if name in PPOCR:
            shapes = {model.graph.input[0].name: next(iter(shapes.values()))}
        try:
            clean = cleanup.clean(model, shapes, threads=args.threads)
            mod = build.import_onnx(clean.model)
        except HyperinferError as e:
            failed.append((name, ops, str(e)))
            print(f"{name:11s} does not compile: {e}", flush=True)
            continue
        onnx_path = work / f"{name}.clean.onnx"
        onnx.save(clean.model, str(onnx_path))
        gflop = count_gflop(clean.model)
        report = cpu_sched.CpuScheduleReport()
        orig = cpu_sched.schedule_pass
        cpu_sched.schedule_pass = lambda t, report_=None, threads=0: orig(t, report, threads)  # noqa: E731
        try:
            t0 = time.perf_counter()
            default_so = work / f"{name}.{target.id}.so"
            build.build_artifact(mod, target, default_so)
            compile_s = time.perf_counter() - t0
        finally:
            cpu_sched.schedule_pass = orig
        db = find_tuning(name, target.id, args.repository, args.tuning_root)
        tuned_so, tuned_is_default = None, False
        if db is not None:
            tuned_so = work / f"{name}.{target.id}.tuned.so"
            res = build.build_artifact(mod, target, tuned_so, tuning_db=db)
            if not res.tuned:
                tuned_so, tuned_is_default = None, True  # no tuned schedule beat the default: same artifact
        ort = ORTRunner(onnx_path, clean.inputs, [o.name for o in clean.outputs], threads=args.threads)
        tvm_r = TVMRunner(default_so, clean.inputs, clean.outputs, threads=args.threads)
        tuned_r = TVMRunner(tuned_so, clean.inputs, clean.outputs, threads=args.threads) if tuned_so else None
        x = cleanup.random_inputs(clean.inputs, np.random.default_rng(0))
        ref = ort.run(x)
        err = max_error(ref, tvm_r.run(x))
        tuned_err = max_error(ref, tuned_r.run(x)) if tuned_r else None
        fns = {"ort": lambda: ort.run(x), "tvm": lambda: tvm_r.run(x)}
        if tuned_r:
            fns["tuned"] = lambda: tuned_r.run(x)
        # several rounds: the ratio is the median of the rounds' ratios (each round interleaves the
        # runtimes, so load from other processes hits both), times are medians over all rounds
        samples: dict[str, list[float]] = {k: [] for k in fns}
        round_ratios: dict[str, list[float]] = {"tvm": [], "tuned": []}
        for _ in range(max(1, args.rounds)):
            got = interleaved_samples(fns, args.runs, args.warmup)
            for k, v in got.items():
                samples[k] += v
            for k in round_ratios:
                if k in got:
                    round_ratios[k].append(statistics.median(got[k]) / statistics.median(got["ort"]))
        ms = {k: statistics.median(v) for k, v in samples.items()}
        shape = ";".join("x".join(str(d) for d in s.shape) for s in clean.inputs)
        rules = ", ".join(f"{k} {v}" for k, v in sorted(report.count().items()))
        row = Row(name, shape, ms["ort"], ms["tvm"], ms.get("tuned"), err, tuned_err, gflop, compile_s, rules, ops,
                  tuned_is_default=tuned_is_default)
        row.ratio_med = statistics.median(round_ratios["tvm"])
        row.tuned_ratio_med = statistics.median(round_ratios["tuned"]) if round_ratios["tuned"] else None
        row.ratio_min = min(samples["tvm"]) / min(samples["ort"])
        row.tuned_ratio_min = min(samples["tuned"]) / min(samples["ort"]) if "tuned" in samples else None
        row.load = os.getloadavg()[0]
        if args.vulkan:
            row.vulkan_ms, row.vulkan_err, row.vulkan_note = bench_vulkan(name, mod, clean, work, x, ref, args)
        rows.append(row)
        print(f"{name:11s} ORT {row.ort_ms:8.2f} ms  TVM {row.tvm_ms:8.2f} ms  ratio {row.ratio:5.2f}"
              f" (fastest runs {row.ratio_min:4.2f}, load {row.load:.1f})"
              + (f"  tuned {row.tuned_ms:8.2f} ms ({row.tuned_ratio:4.2f}, fastest {row.tuned_ratio_min:4.2f})"
                 if row.tuned_ms else "")
              + f"  max err {err:.1e}  compile {compile_s:5.1f} s  [{rules}]"
              + (f"  vulkan {row.vulkan_ms:9.2f} ms ({row.vulkan_ms / row.ort_ms:.0f}x ORT, err {row.vulkan_err:.1e})"
                 if row.vulkan_ms else (f"  vulkan: {row.vulkan_note}" if args.vulkan else "")), flush=True)
    print(f"threads: {thread_affinity_report()}")
    return rows, failed


def bench_vulkan(name, mod, clean, work: Path, x, ref, args) -> tuple[float | None, float | None, str]:
    """(median ms, max abs error vs ONNX Runtime, note) of the vulkan artifact on this machine's adapter."""
    from hyperinfer.compile import build, targets
    from hyperinfer.errors import HyperinferError
    from hyperinfer.runtime import webgpu
    from hyperinfer.runtime.wgsl_runner import WGSLRunner

    if not webgpu.adapters():
        return None, None, f"does not run here: {webgpu.why_not()}"
    try:
        path = work / f"{name}.vulkan.zip"
        build.build_artifact(mod, targets.get("vulkan"), path, model=name)
        runner = WGSLRunner(path, clean.inputs, clean.outputs)
    except HyperinferError as e:
        return None, None, str(e)[:160]
    err = max_error(ref, runner.run(x))
    times = []
    for _ in range(max(1, args.vulkan_runs)):
        t0 = time.perf_counter()
        runner.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), err, webgpu.adapters()[0].name


def _f(v, fmt):
    return "–" if v is None else format(v, fmt)


def _tuned(r: Row, fmt: str, value) -> str:
    return "= default" if r.tuned_is_default else _f(value, fmt)


def table(rows: list[Row], threads: int, target: str) -> str:
    lines = [
        f"| model | input | ONNX Runtime ms | TVM default ms | ratio | TVM tuned ms | tuned ratio | max abs err | "
        f"GFLOP | GFLOP/s ORT | GFLOP/s TVM | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        best = min(r.tvm_ms, r.tuned_ms) if r.tuned_ms else r.tvm_ms
        lines.append(
            f"| {r.model} | {r.shape} | {r.ort_ms:.2f} | {r.tvm_ms:.2f} | {r.ratio:.2f} | {_tuned(r, '.2f', r.tuned_ms)} | "
            f"{_tuned(r, '.2f', r.tuned_ratio)} | {r.err:.1e} | {r.gflop:.3f} | "
            f"{(r.gflop / r.ort_ms * 1e3 if r.gflop else 0):.1f} | {(r.gflop / best * 1e3 if r.gflop else 0):.1f} | "
            f"{r.compile_s:.1f} |"
        )
    lines.append("")
    lines.append(f"Target `{target}`, {threads} threads for both runtimes, median of runs after warm-up, "
                 f"ratio = TVM / ONNX Runtime (below 1: TVM faster).")
    if any(r.vulkan_ms or r.vulkan_note for r in rows):
        lines += ["", "| model | ONNX Runtime ms | vulkan ms | vulkan / ORT | max abs err | adapter / why not |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r.model} | {r.ort_ms:.2f} | {_f(r.vulkan_ms, '.1f')} | "
                         f"{_f(r.vulkan_ms / r.ort_ms if r.vulkan_ms else None, '.0f')} | {_f(r.vulkan_err, '.1e')} | "
                         f"{r.vulkan_note} |")
    return "\n".join(lines)


def compat_table(rows: list[Row], failed: list[tuple[str, str, str]], threads: int, target: str) -> str:
    lines = ["| model | input | ops | compiles | max abs err | ratio vs ORT (default) | fastest runs | "
             "ratio vs ORT (tuned) | load |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.shape} | {r.ops} | yes | {r.err:.1e} | {r.ratio:.2f} | "
                     f"{_f(r.ratio_min, '.2f')} | {_tuned(r, '.2f', r.tuned_ratio)} | {_f(r.load, '.1f')} |")
    for name, ops, err in failed:
        lines.append(f"| {name} | – | {ops} | no: {err.replace('|', '/')} | – | – | – | – | – |")
    load = os.getloadavg()
    lines.append("")
    lines.append(f"Target `{target}`, {threads} threads for both runtimes, ratio = TVM / ONNX Runtime "
                 f"(below 1: TVM faster): the median over rounds of each round's median ratio; fastest runs = "
                 f"fastest TVM run / fastest ORT run; load = 1-minute load average while the model was timed "
                 f"(at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per runtime (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the interleaved timing; the ratio is the median of the rounds' ratios")
    ap.add_argument("--models", default=",".join(PPOCR + SMALL), help=f"known: {','.join(PPOCR + ARCH + SMALL)}")
    ap.add_argument("--target", default="native")
    ap.add_argument("--repository", type=Path, default=None, help="packages from `hyperinfer compile` (tuning dbs)")
    ap.add_argument("--tuning-root", type=Path, default=None, help="tuning dbs as DIR/<model>/<target-id>/")
    ap.add_argument("--work-dir", default=None, help="where cleaned models and artifacts go (default: a temp dir)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table as markdown to this file")
    ap.add_argument("--compat", type=Path, default=None, help="write the compatibility table as markdown here")
    ap.add_argument("--vulkan", action="store_true", help="also time the vulkan artifact (WGSL over wgpu)")
    ap.add_argument("--vulkan-runs", type=int, default=3, help="timed runs of the vulkan artifact (median)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    rows, failed = bench(args)
    from hyperinfer.compile import targets

    md = table(rows, args.threads, targets.resolve([args.target])[0].id)
    print()
    print(md)
    if args.markdown:
        args.markdown.write_text(md + "\n")
    compat = compat_table(rows, failed, args.threads, targets.resolve([args.target])[0].id)
    print()
    print(compat)
    if args.compat:
        args.compat.write_text(compat + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

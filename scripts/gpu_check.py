#!/usr/bin/env python
"""Run CUDA artifacts for real: compile, run through the node's runner, compare, time.

On a machine with an NVIDIA GPU (and nvcc): compiles PP-OCR det, cls, rec and a
MiniLM-class encoder (6 layers, hidden 384, 12 heads, sequence 128, built here
with onnx.helper) for this GPU's arch (``cuda-sm<XY>`` from nvidia-smi), runs
each through the runner a node uses (runtime/runners.py), checks the outputs
against ONNX Runtime within the tolerance the package's manifest was calibrated
with, and prints median latencies: TVM on the GPU, ONNX Runtime's CUDA
execution provider (when onnxruntime-gpu is installed) and ONNX Runtime on the
CPU. Exit status 0 if every model is within tolerance.

    bash scripts/gpu_check.sh                       # everything, < 8 minutes
    python scripts/gpu_check.py --models ppocr-cls --runs 20
    python scripts/gpu_check.py --target cpu-x86_64-avx2   # the same flow on a CPU target (smoke test)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ["ppocr-det", "ppocr-cls", "ppocr-rec", "minilm-l6"]


def gpu_target() -> tuple[str, str]:
    """(target id, GPU name) of GPU 0 from nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        raise SystemExit("gpu_check: nvidia-smi not found: this needs a machine with an NVIDIA GPU and its driver")
    out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=60).stdout.strip().splitlines()
    if not out:
        raise SystemExit("gpu_check: nvidia-smi lists no GPU")
    name, cap = (p.strip() for p in out[0].split(","))
    major, minor = cap.split(".")
    return f"cuda-sm{major}{minor}", name


def build_minilm(path: Path, layers: int = 6, hidden: int = 384, heads: int = 12, ffn: int = 1536,
                 seq: int = 128) -> Path:
    """A MiniLM-L6-shaped encoder over embeddings (random weights; the shapes are what matter)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def w(name, *shape, scale=0.05):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    const("shape_heads", [1, seq, heads, hidden // heads])
    const("shape_back", [1, seq, hidden])
    x = "hidden"
    for i in range(layers):
        p = f"l{i}_"
        qkv = []
        for n in "qkv":
            nodes.append(helper.make_node("MatMul", [x, w(p + n + "_w", hidden, hidden)], [p + n + "_mm"]))
            nodes.append(helper.make_node("Add", [p + n + "_mm", w(p + n + "_b", hidden)], [p + n]))
            nodes.append(helper.make_node("Reshape", [p + n, "shape_heads"], [p + n + "_h"]))
            perm = [0, 2, 3, 1] if n == "k" else [0, 2, 1, 3]
            nodes.append(helper.make_node("Transpose", [p + n + "_h"], [p + n + "_t"], perm=perm))
            qkv.append(p + n + "_t")
        nodes.append(helper.make_node("MatMul", qkv[:2], [p + "scores"]))
        scale = const(p + "scale", [1.0 / np.sqrt(hidden // heads)], np.float32)
        nodes.append(helper.make_node("Mul", [p + "scores", scale], [p + "scaled"]))
        nodes.append(helper.make_node("Softmax", [p + "scaled"], [p + "probs"], axis=-1))
        nodes.append(helper.make_node("MatMul", [p + "probs", qkv[2]], [p + "ctx"]))
        nodes.append(helper.make_node("Transpose", [p + "ctx"], [p + "ctx_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [p + "ctx_t", "shape_back"], [p + "ctx_r"]))
        nodes.append(helper.make_node("MatMul", [p + "ctx_r", w(p + "o_w", hidden, hidden)], [p + "o_mm"]))
        nodes.append(helper.make_node("Add", [p + "o_mm", w(p + "o_b", hidden)], [p + "o"]))
        nodes.append(helper.make_node("Add", [p + "o", x], [p + "res1"]))
        nodes.append(helper.make_node("LayerNormalization", [p + "res1", w(p + "ln1_g", hidden, scale=1.0),
                                                             w(p + "ln1_b", hidden)], [p + "ln1"], axis=-1))
        nodes.append(helper.make_node("MatMul", [p + "ln1", w(p + "f1_w", hidden, ffn)], [p + "f1_mm"]))
        nodes.append(helper.make_node("Add", [p + "f1_mm", w(p + "f1_b", ffn)], [p + "f1"]))
        # GELU (erf form, as BERT exports it)
        nodes.append(helper.make_node("Div", [p + "f1", const(p + "sqrt2", [np.sqrt(2.0)], np.float32)], [p + "g0"]))
        nodes.append(helper.make_node("Erf", [p + "g0"], [p + "g1"]))
        nodes.append(helper.make_node("Add", [p + "g1", const(p + "one", [1.0], np.float32)], [p + "g2"]))
        nodes.append(helper.make_node("Mul", [p + "f1", p + "g2"], [p + "g3"]))
        nodes.append(helper.make_node("Mul", [p + "g3", const(p + "half", [0.5], np.float32)], [p + "gelu"]))
        nodes.append(helper.make_node("MatMul", [p + "gelu", w(p + "f2_w", ffn, hidden)], [p + "f2_mm"]))
        nodes.append(helper.make_node("Add", [p + "f2_mm", w(p + "f2_b", hidden)], [p + "f2"]))
        nodes.append(helper.make_node("Add", [p + "f2", p + "ln1"], [p + "res2"]))
        out = "last_hidden_state" if i == layers - 1 else p + "out"
        nodes.append(helper.make_node("LayerNormalization", [p + "res2", w(p + "ln2_g", hidden, scale=1.0),
                                                             w(p + "ln2_b", hidden)], [out], axis=-1))
        x = out
    graph = helper.make_graph(nodes, "minilm_l6", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT,
                                                                                 [1, seq, hidden])],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sources(names: list[str], work: Path) -> dict[str, tuple[Path, dict]]:
    from hyperinfer import zoo

    out = {}
    ppocr = [n for n in names if n in zoo.PPOCR]
    if ppocr:
        paths = zoo.fetch_ppocr(work / "onnx", names=ppocr)
        for n in ppocr:
            out[n] = (paths[n], {"x": zoo.PPOCR[n].input_shape})
    if "minilm-l6" in names:
        out["minilm-l6"] = (build_minilm(work / "minilm-l6.onnx"), {})
    return out


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ort_session(path: Path, providers: list[str]):
    import onnxruntime as ort

    if not set(providers) <= set(ort.get_available_providers()):
        return None
    return ort.InferenceSession(str(path), providers=providers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--target", default=None, help="target id (default: cuda-sm<XY> of GPU 0 from nvidia-smi)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per runtime (median)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    t_start = time.monotonic()
    if args.target:
        target, gpu = args.target, args.target
    else:
        target, gpu = gpu_target()
    work = args.work or Path(tempfile.mkdtemp(prefix="hyperinfer-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)

    from hyperinfer.compile import compile_model
    from hyperinfer.package import ModelPackage
    from hyperinfer.runtime.runners import runner_for_package
    from hyperinfer.verify.agreement import within_tolerance

    print(f"gpu_check: {gpu}, target {target}, work dir {work}", flush=True)
    rows, failed = [], []
    for name, (src, shapes) in sources(args.models.split(","), work).items():
        t0 = time.monotonic()
        pkg: ModelPackage = compile_model(src, name, out_dir=work / "repo", targets=[target], input_shapes=shapes,
                                          force=True, progress=True)
        compile_s = time.monotonic() - t0
        runner = runner_for_package(pkg, target)  # what a node runs: the same factory
        onnx_file = pkg.path / "model.onnx"
        cpu = ort_session(onnx_file, ["CPUExecutionProvider"])
        cuda = ort_session(onnx_file, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        inputs, _ = pkg.load_reference()
        worst, bad = 0.0, []
        for i, x in enumerate(inputs):
            want = dict(zip([o.name for o in cpu.get_outputs()], cpu.run(None, x)))
            got = runner.run(x)
            res = within_tolerance(got, want, pkg.manifest.outputs)
            worst = max(worst, max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want))
            if not res.agree:
                bad.append(f"sample {i}: {res.reason}")
        x = inputs[0]
        tvm_ms = median_ms(lambda: runner.run(x), args.runs)
        cpu_ms = median_ms(lambda: cpu.run(None, x), max(5, args.runs // 5))
        cuda_ms = median_ms(lambda: cuda.run(None, x), args.runs) if cuda else None
        rows.append((name, tvm_ms, cuda_ms, cpu_ms, worst, compile_s, not bad))
        if bad:
            failed.append(f"{name}: {bad[0]}")
        print(f"{name}: TVM {tvm_ms:.2f} ms, ORT CUDA {cuda_ms if cuda_ms is None else round(cuda_ms, 2)} ms, "
              f"ORT CPU {cpu_ms:.2f} ms, max |err| {worst:.2g}, {'within' if not bad else 'OUTSIDE'} tolerance",
              flush=True)

    print(f"\n| model | TVM {target} ms | ORT CUDA EP ms | ORT CPU ms | TVM / ORT CUDA | max abs err | "
          f"within tolerance | compile s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for name, tvm_ms, cuda_ms, cpu_ms, worst, compile_s, ok in rows:
        print(f"| {name} | {tvm_ms:.2f} | {'–' if cuda_ms is None else f'{cuda_ms:.2f}'} | {cpu_ms:.2f} | "
              f"{'–' if cuda_ms is None else f'{tvm_ms / cuda_ms:.2f}'} | {worst:.1e} | {'yes' if ok else 'NO'} | "
              f"{compile_s:.0f} |")
    print(f"\n{gpu}; ORT CUDA EP: {'onnxruntime-gpu' if any(r[2] for r in rows) else 'not installed (pip install onnxruntime-gpu)'}; "
          f"total {time.monotonic() - t_start:.0f} s")
    for f in failed:
        print(f"FAILED {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

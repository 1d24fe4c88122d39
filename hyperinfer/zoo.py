"""Models hyperinfer ships or knows how to get, for tests, demos and benchmarks.

- Real: the pretrained PP-OCRv4 detection and recognition and the PP-OCR mobile
  v2.0 angle classifier, shipped inside the ``rapidocr-onnxruntime==1.4.4``
  wheel. ``pip download --no-deps`` fetches the wheel from PyPI (the only
  network access) and the .onnx files are extracted from it.
- Small, built here with ``onnx.helper``: an MLP, a CNN, a two-input model and
  a model with int64 and bool outputs.
- Triton's example models, rebuilt as ONNX with the same names, tensors and
  meaning: ``simple`` (INT32 INPUT0, INPUT1 [batch, 16] -> OUTPUT0 = sum,
  OUTPUT1 = difference; max batch 8) and ``simple_int8`` (the same in INT8),
  so Triton's client examples run unchanged against a hyperinfer pool.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperinfer.errors import NotFound, Unavailable

RAPIDOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"


@dataclass(frozen=True)
class RealModel:
    name: str
    member: str  # path inside the wheel
    sha256: str
    input_shape: tuple[int, ...]  # the shape hyperinfer compiles it for
    description: str


PPOCR = {
    "ppocr-det": RealModel(
        "ppocr-det", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        (1, 3, 640, 640), "PP-OCRv4 text detection (DB head, probability map)"),
    "ppocr-rec": RealModel(
        "ppocr-rec", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        (1, 3, 48, 320), "PP-OCRv4 text recognition (CTC over 6625 characters)"),
    "ppocr-cls": RealModel(
        "ppocr-cls", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        (1, 3, 48, 192), "PP-OCR mobile v2.0 text angle classifier (0 or 180 degrees)"),
}


def default_models_dir() -> Path:
    return Path(os.environ.get("HYPERINFER_MODELS", Path.home() / ".cache" / "hyperinfer" / "models"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_ppocr(dest: str | os.PathLike | None = None, names=tuple(PPOCR), quiet: bool = False) -> dict[str, Path]:
    """Return {name: path} of the PP-OCR ONNX models, downloading the wheel once if needed."""
    dest = Path(dest) if dest else default_models_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {n: PPOCR[n] for n in names}
    paths = {n: dest / f"{n}.onnx" for n in wanted}
    missing = [n for n, p in paths.items() if not p.is_file() or _sha256(p) != wanted[n].sha256]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            if not quiet:
                print(f"Downloading {RAPIDOCR_WHEEL} from PyPI (15 MB) for the PP-OCR models…", file=sys.stderr)
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                 "-d", tmp, RAPIDOCR_WHEEL],
                capture_output=True, text=True,
            )
            wheels = list(Path(tmp).glob("rapidocr_onnxruntime-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise Unavailable(
                    f"could not download {RAPIDOCR_WHEEL} with pip: "
                    f"{(proc.stderr.strip().splitlines() or ['no wheel'])[-1]}"
                )
            with zipfile.ZipFile(wheels[0]) as z:
                for n in missing:
                    data = z.read(wanted[n].member)
                    if hashlib.sha256(data).hexdigest() != wanted[n].sha256:
                        raise Unavailable(f"{wanted[n].member} in {wheels[0].name} has an unexpected sha256")
                    tmp_path = paths[n].with_suffix(".tmp")
                    tmp_path.write_bytes(data)
                    tmp_path.replace(paths[n])
    return paths


# ------------------------------------------------------------------ small models

def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(arr, name)


def _finish(graph, path: Path, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hyperinfer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_mlp(path: Path) -> Path:
    """x[1,64] -> Gemm 128 -> Relu -> Gemm 64 -> Relu -> Gemm 10 -> Softmax."""
    from onnx import TensorProto, helper

    r = _rng(1)
    dims = [64, 128, 64, 10]
    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        w = (r.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        b = (r.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [_init(f"w{i}", w), _init(f"b{i}", b)]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"h{i}"]))
        cur = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Softmax", [cur], ["probs"], axis=-1))
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(g, path)


def build_cnn(path: Path) -> Path:
    """image[1,3,32,32] -> conv/relu/pool x2 -> flatten -> gemm -> logits[1,10]."""
    from onnx import TensorProto, helper

    r = _rng(2)
    w1 = (r.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)
    b1 = (r.standard_normal(16) * 0.1).astype(np.float32)
    w2 = (r.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
    b2 = (r.standard_normal(32) * 0.1).astype(np.float32)
    w3 = (r.standard_normal((32 * 8 * 8, 10)) * 0.02).astype(np.float32)
    b3 = np.zeros(10, np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [_init(n, a) for n, a in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3)]],
    )
    return _finish(g, path)


def build_two_inputs(path: Path) -> Path:
    """a[2,16], b[2,16] -> (tanh(a @ W) * b, sum over the last axis)."""
    from onnx import TensorProto, helper

    w = (_rng(3).standard_normal((16, 16)) * 0.3).astype(np.float32)
    axes = np.array([1], dtype=np.int64)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["aw"]),
        helper.make_node("Tanh", ["aw"], ["t"]),
        helper.make_node("Mul", ["t", "b"], ["product"]),
        helper.make_node("ReduceSum", ["product", "axes"], ["total"], keepdims=0),
    ]
    g = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("product", TensorProto.FLOAT, [2, 16]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [2])],
        [_init("w", w), _init("axes", axes)],
    )
    return _finish(g, path)


def build_int_bool(path: Path) -> Path:
    """scores[4,10] -> (argmax int64[4], positive bool[4,10], scaled float[4,10])."""
    from onnx import TensorProto, helper

    zero = np.array(0.0, np.float32)
    two = np.array(2.0, np.float32)
    nodes = [
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        helper.make_node("Greater", ["scores", "zero"], ["positive"]),
        helper.make_node("Mul", ["scores", "two"], ["scaled"]),
    ]
    g = helper.make_graph(
        nodes, "int_bool",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [4, 10])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, [4, 10]),
         helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [4, 10])],
        [_init("zero", zero), _init("two", two)],
    )
    return _finish(g, path)


def _build_add_sub(path: Path, elem: int, graph_name: str) -> Path:
    """INPUT0, INPUT1 [batch, 16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's
    ``simple``). Narrow integers are added in int32 and cast back (wrapping, as C does):
    ONNX Runtime, the reference, has no int8 Add kernel."""
    from onnx import TensorProto, helper

    wide = elem != TensorProto.INT32
    nodes = []
    a, b = "INPUT0", "INPUT1"
    if wide:
        nodes += [helper.make_node("Cast", ["INPUT0"], ["a32"], to=TensorProto.INT32),
                  helper.make_node("Cast", ["INPUT1"], ["b32"], to=TensorProto.INT32)]
        a, b = "a32", "b32"
    sum_, diff = ("s32", "d32") if wide else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [sum_]), helper.make_node("Sub", [a, b], [diff])]
    if wide:
        nodes += [helper.make_node("Cast", ["s32"], ["OUTPUT0"], to=elem),
                  helper.make_node("Cast", ["d32"], ["OUTPUT1"], to=elem)]
    io = lambda n: helper.make_tensor_value_info(n, elem, ["batch", 16])  # noqa: E731
    g = helper.make_graph(nodes, graph_name, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")])
    return _finish(g, path)


def build_simple(path: Path) -> Path:
    """Triton's example `simple`: INT32 INPUT0, INPUT1 [batch, 16] -> sum, difference (max batch 8)."""
    from onnx import TensorProto

    return _build_add_sub(path, TensorProto.INT32, "simple")


def build_simple_int8(path: Path) -> Path:
    """Triton's example `simple_int8`: `simple` in INT8 (max batch 8)."""
    from onnx import TensorProto

    return _build_add_sub(path, TensorProto.INT8, "simple_int8")


SMALL = {
    "mlp": (build_mlp, {"x": (1, 64)}),
    "cnn": (build_cnn, {}),
    "two-inputs": (build_two_inputs, {}),
    "int-bool": (build_int_bool, {}),
    "simple": (build_simple, {"INPUT0": (1, 16), "INPUT1": (1, 16)}),
    "simple_int8": (build_simple_int8, {"INPUT0": (1, 16), "INPUT1": (1, 16)}),
}
# Triton's example models are compiled with --max-batch, like their Triton configs (max_batch_size 8)
MAX_BATCH = {"simple": 8, "simple_int8": 8}


def build_small(name: str, dest: str | os.PathLike) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """Write the small model ``name`` to ``dest/name.onnx``; return (path, input shapes to compile with)."""
    try:
        builder, shapes = SMALL[name]
    except KeyError:
        raise NotFound(f"unknown small model {name!r}; known: {', '.join(SMALL)}") from None
    return builder(Path(dest) / f"{name}.onnx"), shapes


# ------------------------------------------------------------------ build into a repository

def known_models() -> dict[str, str]:
    """Every model ``hyperinfer models build`` knows: {name: one-line description}."""
    out = {name: PPOCR[name].description + f" (from the {RAPIDOCR_WHEEL} wheel)" for name in PPOCR}
    for name, (builder, _) in SMALL.items():
        out[name] = (builder.__doc__ or "").strip().splitlines()[0]
    return out


def build(name: str, out_dir: str | os.PathLike, *, sources: str | os.PathLike | None = None,
          targets: list[str] | None = None, version: int = 1, force: bool = False, progress: bool = True):
    """Obtain model ``name`` (download PP-OCR from its wheel, or write a small model's ONNX to
    ``sources``) and compile it into the repository ``out_dir``; returns the ModelPackage."""
    from hyperinfer.compile import compile_model

    src_dir = Path(sources) if sources is not None else default_models_dir()
    if name in PPOCR:
        path = fetch_ppocr(src_dir, names=(name,), quiet=not progress)[name]
        shapes = {"x": PPOCR[name].input_shape}
        max_batch = 1
    elif name in SMALL:
        path, shapes = build_small(name, src_dir)
        max_batch = MAX_BATCH.get(name, 1)
    else:
        raise NotFound(f"unknown model {name!r}; known: {', '.join(known_models())}")
    return compile_model(path, name, out_dir=out_dir, targets=targets or ["cpu-x86_64"], version=version,
                         input_shapes=shapes, force=force, progress=progress, max_batch=max_batch)

"""Load an ONNX model and make it importable by TVM.

Real models do not import as exported: dynamic dims, and Shape->Concat->Reshape
chains that TVM's ONNX frontend cannot follow until the dims are fixed and the
constants folded. The clean-up fixes the dims it is given, lets ONNX Runtime
fold constants and apply its standard (ONNX-only) graph simplifications, runs
ONNX shape inference, and then checks the cleaned model against the original
with ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from hyperinfer import dtypes
from hyperinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from hyperinfer.package import TensorSpec

# ONNX Runtime 1.2x/1.3x reads models up to this IR version
MAX_IR_VERSION = 10


@dataclass
class CleanModel:
    model: "onnx.ModelProto"  # noqa: F821
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[str] = field(default_factory=list)
    max_deviation: float = 0.0  # cleaned vs original, ONNX Runtime, on random inputs


def load_onnx(path: str | os.PathLike):
    """Parse an ONNX file; every way it can be wrong is one clear error."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise NotFound(f"{p}: no such file")
    if not p.is_file():
        raise InvalidArgument(f"{p}: not a file")
    data = p.read_bytes()
    if not data:
        raise InvalidArgument(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidArgument(
            f"{p}: not a valid ONNX model (truncated or not ONNX: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise InvalidArgument(f"{p}: not a valid ONNX model (no graph: is the file truncated or not ONNX?)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArgument(f"{p}: invalid ONNX model ({first})") from None
    return model


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,640,640"]`` -> ``{"x": (1, 3, 640, 640)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise InvalidArgument(f"--input-shape {item!r}: expected NAME=D1,D2,... (e.g. x=1,3,640,640)")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InvalidArgument(f"--input-shape {item!r}: dimensions must be integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise InvalidArgument(f"--input-shape {item!r}: dimensions must be positive integers")
        shapes[name] = shape
    return shapes


def _graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(value_info) -> list[int | str]:
    out: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def _spec(value_info, shape: tuple[int, ...], source: list[int | str] | None) -> TensorSpec:
    elem = value_info.type.tensor_type.elem_type
    dt = dtypes.from_onnx(elem).name
    dynamic = source is not None and any(not isinstance(d, int) for d in source)
    return TensorSpec(value_info.name, dt, tuple(shape), tuple(source) if dynamic else None)


def fix_input_dims(model, input_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Set every graph input to a static shape; returns the clean-up step descriptions."""
    inputs = _graph_inputs(model)
    names = [i.name for i in inputs]
    for name in input_shapes:
        if name not in names:
            raise InvalidArgument(f"--input-shape names {name!r}, but the model's inputs are: {', '.join(names)}")
    steps = []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise InvalidArgument(f"input {vi.name!r} is not a tensor (sequences and maps are not supported)")
        dims = _dims(vi)
        given = input_shapes.get(vi.name)
        if given is None:
            dynamic = [d for d in dims if not isinstance(d, int)]
            if dynamic or not dims and not vi.type.tensor_type.HasField("shape"):
                example = ",".join(str(d) if isinstance(d, int) else "N" for d in dims)
                raise InvalidArgument(
                    f"input {vi.name!r} has dynamic dims {dims}: pass --input-shape {vi.name}={example}"
                )
            continue
        if len(given) != len(dims):
            raise InvalidArgument(
                f"--input-shape {vi.name}: {len(given)} dims given, the input has {len(dims)} ({dims})"
            )
        for i, (g, d) in enumerate(zip(given, dims)):
            if isinstance(d, int) and d != g:
                raise InvalidArgument(
                    f"--input-shape {vi.name}: dim {i} is fixed to {d} in the model, {g} given"
                )
        for d, g in zip(vi.type.tensor_type.shape.dim, given):
            d.ClearField("dim_param")
            d.dim_value = g
        steps.append(f"fixed input {vi.name} {dims} -> {list(given)}")
    return steps


def _ort_session(model_bytes: bytes, optimized_path: str | None = None, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        # BASIC = constant folding and ONNX-only rewrites; higher levels emit
        # ONNX Runtime's own contrib ops, which TVM cannot import
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = optimized_path
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def random_inputs(specs: list[TensorSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt == np.bool_:
            out[s.name] = rng.random(s.shape) > 0.5
        elif np.issubdtype(dt, np.integer):
            out[s.name] = rng.integers(0, 10, size=s.shape).astype(dt)
        else:
            out[s.name] = rng.standard_normal(s.shape).astype(dt)
    return out


def clean(model, input_shapes: Mapping[str, tuple[int, ...]], threads: int | None = None) -> CleanModel:
    import onnx

    source_dims = {vi.name: _dims(vi) for vi in _graph_inputs(model)}
    source_out_dims = {vo.name: _dims(vo) for vo in model.graph.output}
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's model
    steps = fix_input_dims(model, input_shapes)

    # stale intermediate shapes (with the old symbolic dims) would mislead inference
    del model.graph.value_info[:]
    for vo in model.graph.output:
        vo.type.tensor_type.ClearField("shape")
    if model.ir_version > MAX_IR_VERSION:
        steps.append(f"IR version {model.ir_version} -> {MAX_IR_VERSION} (ONNX Runtime's maximum)")
        model.ir_version = MAX_IR_VERSION
    fixed_bytes = model.SerializeToString()

    with tempfile.TemporaryDirectory() as tmp:
        opt_path = os.path.join(tmp, "optimized.onnx")
        try:
            _ort_session(fixed_bytes, opt_path, threads)
        except Exception as e:  # onnxruntime's own exception types
            raise FailedPrecondition(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None
        cleaned = onnx.load(opt_path)
    steps.append("constant folding and graph simplification (ONNX Runtime, basic level)")
    try:
        cleaned = onnx.shape_inference.infer_shapes(cleaned, check_type=True, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx.shape_inference.InferenceError
        raise FailedPrecondition(f"ONNX shape inference failed on the cleaned model: {str(e).splitlines()[0]}") from None
    steps.append("shape inference")

    inputs = [_spec(vi, tuple(_dims(vi)), source_dims.get(vi.name)) for vi in _graph_inputs(cleaned)]
    outputs = []
    for vo in cleaned.graph.output:
        dims = _dims(vo)
        if not vo.type.tensor_type.HasField("shape") or any(not isinstance(d, int) for d in dims):
            raise FailedPrecondition(
                f"output {vo.name!r} still has a dynamic shape {dims} after clean-up; "
                "fix more input dims with --input-shape"
            )
        outputs.append(_spec(vo, tuple(dims), source_out_dims.get(vo.name)))

    # the cleaned model must compute what the original computes
    rng = np.random.default_rng(0)
    feeds = random_inputs(inputs, rng)
    names = [o.name for o in outputs]
    a = _ort_session(fixed_bytes, threads=threads).run(names, feeds)
    b = _ort_session(cleaned.SerializeToString(), threads=threads).run(names, feeds)
    worst = 0.0
    for n, x, y in zip(names, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            raise FailedPrecondition(f"clean-up changed output {n!r}'s shape: {x.shape} -> {y.shape}")
        if np.issubdtype(x.dtype, np.floating):
            both_nan = np.isnan(x) & np.isnan(y)
            diff = np.where(both_nan, 0, np.abs(x.astype(np.float64) - y.astype(np.float64)))
            err = float(np.nanmax(diff)) if diff.size else 0.0
            scale = float(np.nanmax(np.abs(x))) if x.size else 0.0
            if not np.isfinite(err) or err > 1e-3 * max(1.0, scale):
                raise FailedPrecondition(f"clean-up changed output {n!r}: max deviation {err:.3g}")
            worst = max(worst, err)
        elif not np.array_equal(x, y):
            raise FailedPrecondition(f"clean-up changed integer output {n!r}")
    steps.append(f"checked against the original with ONNX Runtime (max deviation {worst:.2g})")
    return CleanModel(cleaned, inputs, outputs, steps, worst)

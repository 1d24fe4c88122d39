"""Load an ONNX model and make it importable by TVM.

Real models do not import as exported. What the clean-up handles, in order:

- external data files (weights next to the model), loaded and checked; a
  model over protobuf's 2 GB limit is refused with what to do;
- initializers also listed among the graph inputs (IR version 3: how the
  Caffe2-era ONNX Model Zoo stores every model) become constants, unless the
  user names one with ``--input-shape`` (then it is an input, fed at run time);
  initializers nothing reads are dropped;
- opsets older than TVM's importer's converters (below 13) are converted with
  onnx's version converter;
- dynamic dims, named or unnamed, are fixed from ``--input-shape``; a dim name
  shared by several inputs is fixed for all of them at once; what is left is
  one error naming every unresolved dim;
- ONNX Runtime folds constants and applies its standard (ONNX-only) graph
  simplifications (Shape->Concat->Reshape chains TVM cannot follow), ONNX
  shape inference runs, and the cleaned model is checked against the original
  with ONNX Runtime on random inputs (int64 token ids included).

Every failure is one error that names the step and, where there is one, the
node (op type and name) and what to do.
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
# TVM 0.27's ONNX importer has converters from this opset on for most operators
# (MatMul, Gemm, Reshape, Concat, Transpose, Slice, Relu ...): older models are converted
MIN_OPSET = 13
# protobuf cannot serialize a message over 2 GiB: the clean-up (ONNX Runtime) and TVM's
# importer need the whole model in one message
MAX_MODEL_BYTES = 2**31 - 1


@dataclass
class CleanModel:
    model: "onnx.ModelProto"  # noqa: F821
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[str] = field(default_factory=list)
    max_deviation: float = 0.0  # cleaned vs original, ONNX Runtime, on random inputs


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _too_big(what: str, size: int) -> InvalidArgument:
    return InvalidArgument(
        f"{what} is {_gb(size)}, over the 2 GB protobuf limit: the clean-up (ONNX Runtime) and TVM's importer "
        f"need the model in one piece, so hyperinfer cannot compile it; to do: export a smaller model "
        f"(fewer parameters, float16 or int8 weights) or keep it on ONNX Runtime")


def _external_files(model, base: Path) -> tuple[int, list[str]]:
    """(total bytes of external weights, problems) without reading the weights."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    total, problems = 0, []
    sizes: dict[Path, int] = {}
    for t in model.graph.initializer:
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        f = (base / info.location)
        if not f.is_file():
            problems.append(f"initializer {t.name!r} keeps its data in {info.location!r}, which is not in {base}: "
                            f"copy the model's external data files next to it")
            continue
        if f not in sizes:
            sizes[f] = f.stat().st_size
        length = info.length if info.length else sizes[f] - (info.offset or 0)
        if (info.offset or 0) + length > sizes[f]:
            problems.append(f"initializer {t.name!r}: {info.location!r} is shorter than the data it should hold "
                            f"(truncated copy?)")
        total += length
    return total, problems


def load_onnx(path: str | os.PathLike):
    """Parse an ONNX file (and its external data files); every way it can be wrong is one clear error."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model

    p = Path(path)
    if not p.exists():
        raise NotFound(f"{p}: no such file")
    if not p.is_file():
        raise InvalidArgument(f"{p}: not a file")
    size = p.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise _too_big(str(p), size)
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
    external, problems = _external_files(model, p.resolve().parent)
    if problems:
        raise InvalidArgument(f"{p}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if external:
        if size + external > MAX_MODEL_BYTES:
            raise _too_big(f"{p} with its external data", size + external)
        try:
            load_external_data_for_model(model, str(p.resolve().parent))
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"{p}: cannot read its external data ({e})") from None
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


def _dim_label(i: int, d) -> str:
    return f"dim {i} ({d!r})" if d != "?" else f"dim {i} (unnamed)"


def fix_input_dims(model, input_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Set every graph input to a static shape; returns the clean-up step descriptions.

    A named dim fixed in one input (``batch`` = 1 in ``x``) fixes the same name in
    the others; what is still unresolved is one error naming every dim.
    """
    inputs = _graph_inputs(model)
    names = [i.name for i in inputs]
    for name in input_shapes:
        if name not in names:
            raise InvalidArgument(f"--input-shape names {name!r}, but the model's inputs are: {', '.join(names)}")
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise InvalidArgument(f"input {vi.name!r} is not a tensor (sequences and maps are not supported)")
    # dim names resolved by the shapes given
    named: dict[str, int] = {}
    for vi in inputs:
        given = input_shapes.get(vi.name)
        dims = _dims(vi)
        if given is None:
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
            if isinstance(d, str) and d != "?":
                if named.setdefault(d, g) != g:
                    raise InvalidArgument(f"--input-shape gives dim {d!r} two values: {named[d]} and {g}")
    unresolved: list[str] = []
    steps = []
    for vi in inputs:
        dims = _dims(vi)
        given = input_shapes.get(vi.name)
        if given is None:
            if not dims and not vi.type.tensor_type.HasField("shape"):
                unresolved.append(f"input {vi.name!r} has no shape (pass --input-shape {vi.name}=D1,D2,...)")
                continue
            resolved = [d if isinstance(d, int) else named.get(d) for d in dims]
            if any(r is None for r in resolved):
                open_dims = ", ".join(_dim_label(i, d) for i, (d, r) in enumerate(zip(dims, resolved)) if r is None)
                example = ",".join(str(r) if r is not None else "N" for r in resolved)
                unresolved.append(f"input {vi.name!r} has dynamic dims {dims}: {open_dims}; "
                                  f"pass --input-shape {vi.name}={example}")
                continue
            if resolved == dims:
                continue
            given = tuple(resolved)
        for d, g in zip(vi.type.tensor_type.shape.dim, given):
            d.ClearField("dim_param")
            d.dim_value = g
        steps.append(f"fixed input {vi.name} {dims} -> {list(given)}")
    if unresolved:
        raise InvalidArgument("; ".join(unresolved))
    return steps


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def prepare(model, input_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """In place: initializers listed as inputs -> constants (unless ``input_shapes`` names them),
    unused initializers dropped, IR version and opset raised to what ONNX Runtime and TVM's
    importer need. Returns the step descriptions."""
    import onnx
    from onnx import helper

    steps = []
    inits = {t.name for t in model.graph.initializer}
    as_inputs = [vi for vi in model.graph.input if vi.name in inits]
    overridden = [vi.name for vi in as_inputs if vi.name in input_shapes]
    if overridden:  # the user feeds these: drop the initializer, keep the input
        keep = [t for t in model.graph.initializer if t.name not in overridden]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        steps.append(f"initializers kept as inputs (named by --input-shape): {', '.join(overridden)}")
    constant = {vi.name for vi in as_inputs if vi.name not in overridden}
    if constant:
        real = [vi for vi in model.graph.input if vi.name not in constant]
        del model.graph.input[:]
        model.graph.input.extend(real)
        steps.append(f"{len(constant)} initializers listed as graph inputs made constants")
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:  # subgraphs (If/Loop bodies) read outer names too
        for a in n.attribute:
            for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                used |= {i for sn in g.node for i in sn.input}
    unused = [t.name for t in model.graph.initializer if t.name not in used]
    if unused:
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        steps.append(f"{len(unused)} unused initializers dropped")
    ir_before = model.ir_version
    model.ir_version = max(model.ir_version, 4)  # IR 4: initializers need not be graph inputs
    opset = _opset(model)
    if opset < MIN_OPSET:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:  # onnx raises RuntimeError/ConvertError with the adapter that failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FailedPrecondition(
                f"clean-up (opset {opset} -> {MIN_OPSET}, onnx version converter): {first}; to do: re-export the "
                f"model with opset {MIN_OPSET} or newer (TVM's importer needs it)") from None
        model.CopyFrom(converted)
        steps.append(f"opset {opset} -> {MIN_OPSET} (onnx version converter; TVM's importer needs {MIN_OPSET})")
    try:
        need_ir = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except TypeError:  # older onnx: no ignore_unknown
        need_ir = 4
    model.ir_version = max(model.ir_version, need_ir)
    if model.ir_version != ir_before:
        steps.append(f"IR version {ir_before} -> {model.ir_version}")
    _ = onnx
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


def _rename_generated(cleaned, original) -> None:
    """Give the initializers ONNX Runtime's optimizer added names of their own.

    Its fusions name new initializers ``gemm_input_shape`` and the like; when the
    cleaned model is loaded by ONNX Runtime again with its full optimizations (the
    reference runs), the same fusions add the same names and the session fails
    ("Attempt to replace the existing tensor")."""
    taken = {t.name for t in original.graph.initializer} | {i.name for i in original.graph.input}
    taken |= {o for n in original.graph.node for o in n.output}
    renames = {}
    for t in cleaned.graph.initializer:
        if t.name not in taken:
            renames[t.name] = f"hyperinfer_folded/{t.name}"
            t.name = renames[t.name]
    if not renames:
        return
    for n in cleaned.graph.node:
        for i, name in enumerate(n.input):
            if name in renames:
                n.input[i] = renames[name]
    for vi in cleaned.graph.value_info:
        if vi.name in renames:
            vi.name = renames[vi.name]


def _ort_message(e: BaseException) -> str:
    """ONNX Runtime's message without its ``[ONNXRuntimeError] : 1 : FAIL :`` prefix (it names the node)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first.split(" : ", 3)[-1] if first.startswith("[ONNXRuntimeError]") else first


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

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's model
    steps = prepare(model, input_shapes)
    source_dims = {vi.name: _dims(vi) for vi in _graph_inputs(model)}
    source_out_dims = {vo.name: _dims(vo) for vo in model.graph.output}
    steps += fix_input_dims(model, input_shapes)
    fixed_inputs = [_spec(vi, tuple(_dims(vi)), source_dims.get(vi.name)) for vi in _graph_inputs(model)]

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
            raise FailedPrecondition(
                f"clean-up (ONNX Runtime load and constant folding): {_ort_message(e)}; to do: check that ONNX "
                f"Runtime runs the model as given (python -c 'import onnxruntime; onnxruntime.InferenceSession(...)')"
            ) from None
        cleaned = onnx.load(opt_path)
    _rename_generated(cleaned, model)
    steps.append("constant folding and graph simplification (ONNX Runtime, basic level)")
    try:
        cleaned = onnx.shape_inference.infer_shapes(cleaned, check_type=True, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx.shape_inference.InferenceError
        raise FailedPrecondition(
            f"clean-up (ONNX shape inference): {str(e).strip().splitlines()[0]}; to do: fix that node's input "
            f"shapes (--input-shape) or re-export the model") from None
    steps.append("shape inference")

    inputs = [_spec(vi, tuple(_dims(vi)), source_dims.get(vi.name)) for vi in _graph_inputs(cleaned)]
    if [(i.name, i.shape, i.dtype) for i in inputs] != [(i.name, i.shape, i.dtype) for i in fixed_inputs]:
        raise FailedPrecondition(
            "clean-up (ONNX Runtime constant folding) changed the model's inputs: "
            f"{[(i.name, list(i.shape)) for i in fixed_inputs]} -> {[(i.name, list(i.shape)) for i in inputs]}")
    outputs = []
    for vo in cleaned.graph.output:
        dims = _dims(vo)
        if not vo.type.tensor_type.HasField("shape") or any(not isinstance(d, int) for d in dims):
            which = ", ".join(_dim_label(i, d) for i, d in enumerate(dims) if not isinstance(d, int)) \
                if vo.type.tensor_type.HasField("shape") else "no shape inferred"
            raise FailedPrecondition(
                f"clean-up (shape inference): output {vo.name!r} still has a dynamic shape {dims} ({which}): "
                "its size depends on input values (e.g. NonZero, NMS, a data-dependent Reshape) or on dims "
                "not fixed; to do: fix more input dims with --input-shape, or export the model without the "
                "data-dependent part")
        outputs.append(_spec(vo, tuple(dims), source_out_dims.get(vo.name)))

    # the cleaned model must compute what the original computes
    rng = np.random.default_rng(0)
    feeds = random_inputs(inputs, rng)
    names = [o.name for o in outputs]
    try:
        a = _ort_session(fixed_bytes, threads=threads).run(names, feeds)
        b = _ort_session(cleaned.SerializeToString(), threads=threads).run(names, feeds)
    except Exception as e:  # onnxruntime's own exception types
        raise FailedPrecondition(
            f"clean-up (checking against the original with ONNX Runtime): {_ort_message(e)}; to do: check "
            f"that ONNX Runtime runs the model with inputs of shapes "
            f"{', '.join(f'{i.name}={list(i.shape)}' for i in inputs)}") from None
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

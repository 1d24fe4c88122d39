"""The execution plan of a WebGPU (WGSL) build: what runs in what order.

TVM's C++ runtime has no WebGPU device API (TVM runs WGSL only inside tvmjs in
a browser), so the host side of a ``webgpu`` build cannot run from Python. This
module reads what the host side would do from two stages of the same build:

- the Relax ``main`` after memory planning: storage allocations (reused across
  tensors as TVM planned them), tensor views into them, constants (weights),
  reshapes, and calls of TIR functions in order;
- each TIR host function after ``SplitHostDevice``: the kernels it launches
  (``call_ffi_kernel``), which of its buffers each kernel binds, the POD
  arguments and the grid (thread extents, constants for static shapes).

The plan is plain JSON plus the constants' bytes; ``runtime/wgsl_runner.py``
replays it over wgpu. The launch ABI is TVM's WebGPU one (web/src/webgpu.ts):
storage buffers at bindings 0..n-1 in argument order, a uniform ``PODArgs``
struct (the POD arguments as 32-bit words, then ``packGridDimX``) at binding n,
``blockIdx.x`` beyond 65535 folded into ``blockIdx.z``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperinfer.errors import FailedPrecondition

PLAN_FORMAT = 1
# what WGSL storage buffers can hold (host-shareable scalar types)
WGSL_DTYPES = {"float32", "int32", "uint32", "float16"}
_POD_DTYPES = {"int32", "uint32", "float32"}
_IGNORED_PACKED = {"vm.builtin.check_tensor_info", "vm.builtin.match_shape", "vm.builtin.check_shape_info",
                   "vm.builtin.check_tuple_info", "vm.builtin.null_value"}
_FUNCTION_RE = re.compile(r"^// Function: (\w+)\n//-+\n", re.M)


class PlanError(FailedPrecondition):
    """The build uses something the WebGPU plan cannot express (said per model and kernel)."""


@dataclass
class Tensor:
    buffer: int
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        return {"buffer": self.buffer, "offset": self.offset, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Plan:
    buffers: list[dict] = field(default_factory=list)  # {"size": bytes, "kind": storage|input|constant}
    inputs: list[dict] = field(default_factory=list)  # {"name", "tensor"}
    outputs: list[dict] = field(default_factory=list)  # tensor dicts
    constants: list[dict] = field(default_factory=list)  # {"buffer", "key", "dtype", "shape"}
    kernels: dict[str, dict] = field(default_factory=dict)
    launches: list[dict] = field(default_factory=list)
    constant_data: dict[str, np.ndarray] = field(default_factory=dict)  # key -> array (not in the JSON)

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "buffers": self.buffers, "inputs": self.inputs, "outputs": self.outputs,
                "constants": self.constants, "kernels": self.kernels, "launches": self.launches}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()


def split_wgsl(source: str) -> dict[str, str]:
    """{kernel name: its WGSL} from the webgpu module's concatenated source.

    Each kernel is a self-contained shader (its own bindings from 0), headed by
    ``// Function: <name>``; the header may repeat, the last non-empty body wins.
    """
    parts = _FUNCTION_RE.split(source)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if body.strip():
            out[name] = body
    return out


def _int(expr, what: str) -> int:
    v = getattr(expr, "value", None)
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    raise PlanError(f"{what} is not a constant ({expr}); the vulkan target needs static shapes")


def _shape(sinfo, what: str) -> tuple[int, ...]:
    shape = getattr(sinfo, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        raise PlanError(f"{what} has no static shape")
    return tuple(_int(d, f"a dimension of {what}") for d in shape.values)


class _Builder:
    def __init__(self, model: str, host_mod, fmap: dict[str, dict], sources: dict[str, str]):
        self.model = model
        self.host = {gv.name_hint: f for gv, f in host_mod.functions_items()}
        self.fmap = fmap
        self.sources = sources
        self.plan = Plan()
        self.values: dict[Any, Any] = {}  # relax Var -> Tensor | storage buffer id | tuple
        self.constant_ids: dict[int, Tensor] = {}

    # ------------------------------------------------------------------ buffers

    def _buffer(self, size: int, kind: str) -> int:
        self.plan.buffers.append({"size": int(size), "kind": kind})
        return len(self.plan.buffers) - 1

    def _constant(self, const) -> Tensor:
        key = const.id_
        if key not in self.constant_ids:
            arr = np.ascontiguousarray(const.value.numpy())
            dtype = arr.dtype.name
            if dtype not in WGSL_DTYPES:
                raise PlanError(f"{self.model}: a {dtype} constant (WGSL storage buffers hold only "
                                f"{', '.join(sorted(WGSL_DTYPES))})")
            buf = self._buffer(arr.nbytes, "constant")
            name = f"c{len(self.plan.constants)}"
            self.plan.constants.append({"buffer": buf, "key": name, "dtype": dtype, "shape": list(arr.shape)})
            self.plan.constant_data[name] = arr
            self.constant_ids[key] = Tensor(buf, 0, tuple(arr.shape), dtype)
        return self.constant_ids[key]

    def _value(self, expr):
        kind = type(expr).__name__
        if kind == "GenericConst" and hasattr(expr.value, "numpy"):
            return self._constant(expr)
        if kind == "Var":
            if expr.id_ not in self.values:
                raise PlanError(f"{self.model}: {_name(expr)} is used before it is defined")
            return self.values[expr.id_]
        if kind == "Tuple":
            return tuple(self._value(f) for f in expr.fields)
        if kind == "TupleGetItem":
            return self._value(expr.tuple_value)[int(expr.index)]
        if kind in ("ShapeExpr", "IntImm", "PrimValue", "StringImm", "GenericConst", "DataTypeImm"):
            return expr
        raise PlanError(f"{self.model}: unsupported Relax value {kind} in main")

    # ------------------------------------------------------------------ relax main

    def build(self, main) -> Plan:
        for p in main.params:
            ty = p.ty
            shape, dtype = _shape(ty, f"input {_name(p)}"), str(ty.dtype)
            t = Tensor(self._buffer(max(Tensor(0, 0, shape, dtype).nbytes, 4), "input"), 0, shape, dtype)
            self.values[p.id_] = t
            self.plan.inputs.append({"name": _name(p), "tensor": t.to_json()})
        body = main.body
        for block in body.blocks:
            for b in block.bindings:
                if type(b).__name__ != "VarBinding":
                    raise PlanError(f"{self.model}: unsupported binding {type(b).__name__} in main")
                self.values[b.var.id_] = self._binding(b.var, b.value)
        result = self._value(body.body)
        for t in _flatten(result):
            if not isinstance(t, Tensor):
                raise PlanError(f"{self.model}: main returns a {type(t).__name__}, not tensors")
            self.plan.outputs.append(t.to_json())
        return self.plan

    def _binding(self, var, value):
        if type(value).__name__ != "Call":
            return self._value(value)
        op = value.op
        opkind = type(op).__name__
        if opkind == "GlobalVar":
            return self._call_tir(op.name_hint, [self._value(a) for a in value.args])
        if opkind == "ExternFunc":
            name = str(op.global_symbol)
            if name in _IGNORED_PACKED:
                return None
            if name == "vm.builtin.reshape":
                src = self._value(value.args[0])
                shape = tuple(_int(d, "a reshape dimension") for d in value.args[1].values)
                return Tensor(src.buffer, src.offset, shape, src.dtype)
            raise PlanError(f"{self.model}: the vulkan plan cannot run the packed function {name!r}")
        name = getattr(op, "name", str(op))
        if name == "relax.vm.alloc_storage":
            size = _int(value.args[0].values[0], "a storage size")
            return ("storage", self._buffer(max(size, 4), "storage"))
        if name == "relax.vm.alloc_tensor":
            storage = self._value(value.args[0])
            offset = _int(value.args[1], "a tensor offset")
            shape = tuple(_int(d, "a tensor dimension") for d in value.args[2].values)
            dtype = str(value.args[3].value)
            return Tensor(storage[1], offset, shape, dtype)
        if name in ("relax.vm.kill_object", "relax.null_value"):
            return None
        raise PlanError(f"{self.model}: the vulkan plan cannot run the Relax op {name!r}")

    # ------------------------------------------------------------------ TIR host functions

    def _call_tir(self, fname: str, args: list) -> None:
        func = self.host.get(fname)
        if func is None:
            raise PlanError(f"{self.model}: main calls {fname}, which the build did not produce")
        if len(args) != len(func.params):
            raise PlanError(f"{self.model}: {fname} takes {len(func.params)} arguments, main passes {len(args)}")
        env: dict[Any, Any] = {}
        for p, a in zip(func.params, args):
            env[p.id_] = a
        self._stmt(fname, func.body, env)
        return None

    def _stmt(self, fname: str, stmt, env) -> None:
        from tvm import tirx

        if isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                self._stmt(fname, s, env)
        elif isinstance(stmt, tirx.DeclBuffer):
            # a flat view of a parameter (or of an earlier view): kernels bind its data
            src = stmt.data
            if getattr(getattr(src, "op", None), "name", "") == "tirx.buffer_data":
                src = src.args[0]
            if type(src).__name__ == "Var" and isinstance(env.get(src.id_), Tensor):
                env[stmt.buffer.id_] = env[src.id_]
        elif isinstance(stmt, tirx.AllocBuffer):
            buf = stmt.buffer
            scope = str(getattr(buf, "scope", lambda: "global")()) if callable(getattr(buf, "scope", None)) else "global"
            if scope not in ("global", ""):
                raise PlanError(f"{self.model}: {fname} allocates {scope} memory on the host side")
            shape = tuple(_int(d, f"the size of {buf.name} in {fname}") for d in buf.shape)
            t = Tensor(self._buffer(max(Tensor(0, 0, shape, str(buf.dtype)).nbytes, 4), "storage"), 0, shape,
                       str(buf.dtype))
            env[buf.data.id_] = t
        elif isinstance(stmt, tirx.AttrStmt):
            self._stmt(fname, stmt.body, env)
        elif isinstance(stmt, tirx.LetStmt):
            env[stmt.var.id_] = stmt.value
            self._stmt(fname, stmt.body, env)
        elif isinstance(stmt, tirx.Evaluate):
            self._evaluate(fname, stmt.value, env)
        else:
            raise PlanError(f"{self.model}: {fname} has host-side code ({type(stmt).__name__}) the vulkan plan "
                            "cannot replay")

    def _evaluate(self, fname: str, call, env) -> None:
        op = getattr(call, "op", None)
        opname = getattr(op, "name", "")
        if opname != "tirx.call_ffi_kernel":
            if getattr(call, "value", None) == 0:  # a no-op
                return
            raise PlanError(f"{self.model}: {fname} calls {opname or call} on the host side; the vulkan plan "
                            "can only launch kernels")
        kname = str(call.args[0].value)
        info = self.fmap.get(kname)
        if info is None or kname not in self.sources:
            raise PlanError(f"{self.model}: kernel {kname} has no WGSL source in the build")
        arg_types = list(info["arg_types"])
        tags = [t for t in info["launch_param_tags"] if not t.startswith("paramWriteAccess:")]
        rest = list(call.args[1:])
        if len(rest) != len(arg_types) + len(tags):
            raise PlanError(f"{self.model}: kernel {kname}: {len(rest)} launch arguments, expected "
                            f"{len(arg_types)} + {len(tags)} thread extents")
        bindings, pods = [], []
        for i, (a, ty) in enumerate(zip(rest, arg_types)):
            if ty == "handle":
                t = self._tensor_arg(fname, kname, a, env)
                if t.dtype not in WGSL_DTYPES:
                    raise PlanError(f"{self.model}: kernel {kname} binds a {t.dtype} tensor; WGSL storage "
                                    f"buffers hold only {', '.join(sorted(WGSL_DTYPES))}")
                bindings.append(t.to_json())
            elif ty in _POD_DTYPES:
                pods.append([ty, self._scalar(fname, kname, a, env, ty)])
            else:
                raise PlanError(f"{self.model}: kernel {kname} takes a {ty} argument; WGSL POD arguments are "
                                "32-bit (int64 is not in WGSL)")
        extents = [_int(self._resolve(e, env), f"a thread extent of {kname}") for e in rest[len(arg_types):]]
        work = [1] * 6
        for tag, n in zip(tags, extents):
            axis = "xyz".index(tag[-1])
            work[axis + (3 if tag.startswith("threadIdx.") else 0)] = n
        if work[2] != 1:
            raise PlanError(f"{self.model}: kernel {kname} uses blockIdx.z, which TVM's WebGPU ABI reserves")
        self.plan.launches.append({"kernel": kname, "bindings": bindings, "pod": pods,
                                   "grid": work[:3], "threads": work[3:]})
        if kname not in self.plan.kernels:
            self.plan.kernels[kname] = {"arg_types": arg_types, "launch_param_tags": list(info["launch_param_tags"]),
                                        "storage_buffers": len(bindings)}

    def _resolve(self, expr, env):
        if type(expr).__name__ == "Var" and expr.id_ in env:
            return env[expr.id_]
        return expr

    def _tensor_arg(self, fname: str, kname: str, expr, env) -> Tensor:
        if getattr(getattr(expr, "op", None), "name", "") == "tirx.buffer_data":
            expr = expr.args[0]
        if type(expr).__name__ == "Var" and isinstance(env.get(expr.id_), Tensor):
            return env[expr.id_]
        raise PlanError(f"{self.model}: kernel {kname} in {fname} binds {expr}, which is not a buffer of {fname}")

    def _scalar(self, fname, kname, expr, env, ty):
        import tvm

        expr = self._resolve(expr, env)
        expr = tvm.arith.Analyzer().simplify(expr) if not hasattr(expr, "value") else expr
        v = getattr(expr, "value", None)
        if v is None or isinstance(v, str):
            raise PlanError(f"{self.model}: kernel {kname} in {fname} takes a POD argument computed at run time "
                            f"({expr}); the vulkan target needs static shapes")
        return float(v) if ty == "float32" else int(v)


def _name(v) -> str:
    return str(getattr(v, "name_hint", None) or getattr(v, "name", "?"))


def _flatten(v):
    if isinstance(v, tuple):
        for x in v:
            yield from _flatten(x)
    else:
        yield v


def build_plan(model: str, relax_main, host_mod, func_info: dict[str, dict], wgsl: dict[str, str]) -> Plan:
    """The plan of one build: ``relax_main`` after the Relax pipeline, ``host_mod`` the TIR
    module right after SplitHostDevice, ``func_info``/``wgsl`` from the webgpu module."""
    plan = _Builder(model, host_mod, func_info, wgsl).build(relax_main)
    for name in plan.kernels:
        plan.kernels[name]["wgsl"] = f"kernels/{name}.wgsl"
    return plan

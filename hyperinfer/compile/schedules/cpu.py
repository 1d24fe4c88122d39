"""Rule-based CPU schedules (no search): one pass over the fused PrimFuncs.

Per function, after LegalizeOps/FuseOps/FuseTIR:

1. Inline elementwise producers and consumers (``compute_inline``), except
   padding (a block whose value is an ``if_then_else``), which stays
   materialized so the hot loops carry no bound checks (unless a pooling
   reads it with a stride along the row: it gathers anyway), and expensive
   blocks with several consumers (an ``exp`` read twice by softmax).
2. Each contraction block (conv, matmul: a reduction of a product of two
   buffers) and each other reduction whose output's innermost axis is
   contiguous in its inputs (pooling) gets a register tile:

   - the innermost output axis is split by a multiple of the target's vector
     width (``TargetInfo.vector_lanes``) and vectorized;
   - one outer spatial axis that the vectorized operand does not depend on
     (output channels of a conv, rows of a matmul) is split by an unroll
     factor for register reuse (16 accumulator vectors with AVX-512's 32
     registers, 12 with 16 registers: a 6x16 AVX2 tile); depthwise convs and
     pooling use the output rows, so each loaded input row serves every
     kernel row it falls under;
   - loop order: parallel spatial tiles (fused) -> reduction loops ->
     register tile -> vector lanes;
   - the accumulator is a small local buffer (``cache_write`` when the block
     writes the function's output directly) and the elementwise epilogue is
     fused into its write-back (``reverse_compute_at``);
   - the reduction's init is split off (``decompose_reduction``).

   When the innermost output axis is not contiguous in the input (stride-2
   convs) or does not split into whole vectors (widths 20, 40, 80 with 16
   lanes), the conv is vectorized over output channels instead, with the
   weights repacked to ``[O/V, I, KH, KW, V]`` (once per call) and the
   accumulator kept in the same channel-blocked layout; its epilogue writes
   the tile back with vector stores along the row. A 1x1 stride-1 conv whose
   plane (not row) splits into vectors (56x56 with 16 lanes) is a GEMM over
   the flattened plane instead: pixels vectorized, output channels in
   registers. One that reduces over at least twice its output channels
   (512->128) is parallel over pixel tiles and copies each tile's input
   into a contiguous local buffer that all its output-channel blocks read
   (in place, every reduction step would be another plane, kilobytes
   apart); other 1x1 convs whose input outgrows L2 run their channel blocks
   innermost of the parallel loop (each input tile stays in L1 across
   them); one whose weight block outgrows L1 (over 192 input channels)
   consumes it in slices over the whole plane. Depthwise stride-2
   convs and pooling fall back to strided vector loads. A matrix-vector
   product by a constant weight (a classifier head at batch 1) tiles 2-4
   vectors of columns and reads the weight repacked to ``[N/t, K, t]`` at
   compile time (each tile's weights one contiguous stream). A matmul whose width
   has no vector-sized divisor (6625 classes) is padded to whole vectors
   (``pad_einsum``).
   Contractions under 32k multiply-adds stay on one thread.
   A conv in the channel-blocked layout (``NCHW16c``, AVX-512 builds: see
   ``schedules/blocked.py``) vectorizes its 16-channel output block, with 7
   output pixels along the row by 2 blocks in registers (weights repacked so
   that both blocks' vectors of a step are adjacent), parallel over (block
   pairs, rows, pixel runs); a pooling window over that layout is one vector
   per pixel, its padding a per-pixel condition instead of a padded copy.
   Depthwise convs and pooling pad their input plane by plane inside the
   parallel loop over (n, c), right before that plane's tiles (it stays in
   L1), instead of padding the whole tensor in a separate pass.
3. Other reductions: a long one over a row's contiguous innermost axis
   (softmax's max and sum, layer-norm means) keeps several vectors of partial
   results (``rfactor``), parallel over rows; the rest (global pooling) is
   parallel over the fused spatial loops.
4. Elementwise/injective blocks left at the root: fuse, parallel, vectorize.

Every function is scheduled inside a try: if a rule throws, the function
falls back to the simple rule (parallel outer loops, vectorized inner loop),
and if that throws too it is left unscheduled (slow but correct). The build
never fails because of a schedule.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace

from hyperinfer.compile.targets import TargetInfo

log = logging.getLogger("hyperinfer.compile")

_DEBUG = bool(os.environ.get("HYPERINFER_SCHEDULE_DEBUG"))
# below this many output elements a loop nest is not worth a parallel launch
_PARALLEL_MIN = 2048
# a contraction with fewer multiply-adds runs on one thread (a parallel launch costs microseconds)
_PARALLEL_MIN_MACS = 1 << 15
# register tile: accumulators = unroll x vector (<= ~24 of AVX-512's 32 zmm registers)
_UNROLL = 8
# TVM's kMaxStackAlloca: a CPU "global" allocation smaller than this is a stack alloca
_STACK_BYTES = 1024
# constant weights repacked at compile time (HYPERINFER_PACK_WEIGHTS=0: once per call, as before)
_PACK_WEIGHTS = os.environ.get("HYPERINFER_PACK_WEIGHTS", "1") != "0"
# output-channel vectors per register tile of the channel-vectorized conv rule
_CH_VECTORS = 2
# L2 per core assumed by the loop-order choice of 1x1 convs (Skylake-SP and newer: 1-2 MB)
_L2_BYTES = 1 << 21
# the 1x1-as-GEMM rule copies each pixel tile's input into a contiguous buffer (HYPERINFER_PACK_INPUT=0: reads in place)
_PACK_INPUT = os.environ.get("HYPERINFER_PACK_INPUT", "1") != "0"
# ... and one with more outputs than inputs copies chunks of pixels' input of up to this size
# (HYPERINFER_PIX_CHUNK_KB=0: the tile order of before, no copy)
_PIX_CHUNK = int(os.environ.get("HYPERINFER_PIX_CHUNK_KB", "128")) * 1024


@dataclass(frozen=True)
class ScheduleKnobs:
    """The rules' tile and loop-order parameters. The defaults are what every build uses;
    ``hyperinfer tune`` searches other values per function on the node's own CPU and records
    the winners in the package's tuning database (see ``compile/tune.py``)."""

    unroll: int = _UNROLL  # register tile along the row (channel-vectorized convs, 1-vector tiles)
    ch_vectors: int = _CH_VECTORS  # output-channel vectors per register tile (channel-vectorized convs)
    pix_vectors: int = 2  # pixel vectors per register tile (1x1 convs as a GEMM over the plane)
    pix_acc: int = 16  # accumulator vectors of that tile (output channels = pix_acc // pix_vectors)
    pix_gemm: bool = True  # 1x1 convs whose rows are no whole vectors run as that GEMM (else channel vectors)
    pix_chunk_kb: int = _PIX_CHUNK >> 10  # input chunk copied by those GEMMs (0: per tile order)
    pack_input: bool = _PACK_INPUT  # those GEMMs copy each tile's input (reductions over many inputs)
    l2_kb: int = _L2_BYTES >> 10  # L2 assumed by the 1x1 loop-order choices
    slice_kb: int = 16  # L1 slice of packed weights for 1x1 convs with many inputs (0: no slices)
    k_unroll: int = 2  # input channels per step of a channel-blocked conv's inner loop (unrolled)

    def changed(self) -> dict:
        """The fields that differ from the defaults (what a tuning record stores)."""
        base = ScheduleKnobs()
        return {k: v for k, v in self.__dict__.items() if getattr(base, k) != v}

    @classmethod
    def from_changed(cls, values: dict) -> "ScheduleKnobs":
        """Defaults updated with ``values``; unknown names (a newer release's knobs) are ignored.
        Raises ValueError for a value of the wrong type or a negative one (a damaged record)."""
        base = cls()
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for k, v in known.items():
            if type(v) is not type(getattr(base, k)) or (isinstance(v, int) and v < 0):
                raise ValueError(f"knob {k}={v!r}: expected a non-negative {type(getattr(base, k)).__name__}")
        return replace(base, **known)


# values ``hyperinfer tune`` tries for each knob (one at a time, from the best so far)
KNOB_VALUES: dict[str, tuple] = {
    "unroll": (4, 6, 7, 8, 12, 14),
    "ch_vectors": (1, 2, 3, 4),
    "pix_vectors": (1, 2, 4, 7),
    "pix_acc": (12, 16, 24, 28),
    "pix_chunk_kb": (0, 32, 64, 128, 256),
    "pack_input": (False, True),
    "pix_gemm": (False, True),
    "l2_kb": (512, 1024, 2048, 4096),
    "slice_kb": (0, 8, 16, 32),
    "k_unroll": (1, 2, 4),
}

# the knobs of the function being scheduled (schedule_function sets them; one at a time)
_K = ScheduleKnobs()


@dataclass
class CpuScheduleReport:
    """What the pass did, per function (for logs, tests and the benchmark)."""

    rules: dict[str, str] = field(default_factory=dict)  # function name -> rule used
    fallbacks: list[str] = field(default_factory=list)  # "name: error" for rules that threw

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rules.values():
            out[r] = out.get(r, 0) + 1
        return out


# ---------------------------------------------------------------- IR helpers

def _walk(node, visit) -> None:
    """Pre-order walk over a TIR expression/statement (the Python API has no stmt_functor)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        if isinstance(n, (list, tuple)) or type(n).__name__ == "Array":
            stack.extend(list(n))
            continue
        if visit(n) is False:
            return
        for attr in ("a", "b", "value", "indices", "args", "condition", "true_value", "false_value", "body"):
            try:
                child = getattr(n, attr)
            except Exception:  # noqa: BLE001 - attribute missing on this node type
                continue
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)


def _loads(stmt):
    from tvm import tirx

    import tvm

    load_type = getattr(tvm.ir, "TensorLoad", None) or tirx.BufferLoad
    found = []

    def visit(node):
        if isinstance(node, load_type):
            found.append(node)

    _walk(stmt, visit)
    return found


def _buf(load):
    """The buffer a load reads (``TensorLoad.source`` in TVM 0.27, ``BufferLoad.buffer`` before)."""
    b = getattr(load, "buffer", None)
    return b if b is not None else load.source


def _has(stmt, pred) -> bool:
    hit = []

    def visit(node):
        if pred(node):
            hit.append(node)
            return False
        return True

    _walk(stmt, visit)
    return bool(hit)


_IF_THEN_ELSE = ("prim.if_then_else", "tirx.if_then_else", "tir.if_then_else")
_CHEAP_CALLS = _IF_THEN_ELSE + ("prim.likely", "tirx.likely", "tir.likely")


def _is_call(node, names=None) -> bool:
    import tvm

    if not isinstance(node, tvm.ir.Call):
        return False
    name = getattr(node.op, "name", "")
    if names is None:
        return name not in _CHEAP_CALLS
    return name in names


def _is_pad(block) -> bool:
    return _has(block.body, lambda n: _is_call(n, _IF_THEN_ELSE))


def _is_reduction(block) -> bool:
    from tvm import tirx

    return any(iv.iter_type != tirx.IterVar.DataPar for iv in block.iter_vars)


def _coef(expr, var) -> int | None:
    """Coefficient of ``var`` in ``expr`` if linear with a constant coefficient, else None."""
    from tvm import tirx

    try:
        from tvm.sym.pattern import detect_linear_equation
    except ImportError:  # TVM < 0.27
        from tvm.arith import detect_linear_equation

    if not _has(expr, lambda n: isinstance(n, tirx.Var) and n.same_as(var)):
        return 0
    res = detect_linear_equation(expr, [var])
    if len(res) != 2 or not isinstance(res[0], tirx.IntImm):
        return None
    return int(res[0].value)


def _uses(expr, var) -> bool:
    from tvm import tirx

    return _has(expr, lambda n: isinstance(n, tirx.Var) and n.same_as(var))


def _ext(sch, loop) -> int | None:
    from tvm import tirx

    e = sch.get(loop).extent
    return int(e.value) if isinstance(e, tirx.IntImm) else None


def _vector_factor(extent: int, lanes: int) -> int:
    """Largest good vector length dividing ``extent`` (0: do not vectorize)."""
    if extent <= 1:
        return 0
    for f in (2 * lanes, lanes):
        if extent % f == 0:
            return f
    # a divisor between lanes/2 and 2*lanes (e.g. 20, 24: LLVM splits them into legal vectors)
    for f in range(min(extent, 2 * lanes), max(lanes // 2, 2) - 1, -1):
        if extent % f == 0:
            return f
    return 0


def _unroll_factor(extent: int, limit: int | None = None) -> int:
    for f in range(min(extent, _K.unroll if limit is None else limit), 0, -1):
        if extent % f == 0:
            return f
    return 1


def _root_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _block_loops_vars(sch, block):
    """Loops of ``block`` and, for each, the block iter var it binds directly (or None)."""
    from tvm import tirx

    loops = list(sch.get_loops(block))
    blk = sch.get(block)
    realize = sch.get(loops[-1]).body if loops else None
    values = getattr(realize, "iter_values", None)
    if values is None:
        raise ValueError("block is not directly under its innermost loop")
    by_loop = {}
    for iv, value in zip(blk.iter_vars, values):
        if isinstance(value, tirx.Var):
            by_loop[value] = iv
    out = []
    for lp in loops:
        out.append(by_loop.get(sch.get(lp).loop_var))
    return loops, out


# ---------------------------------------------------------------- rules

def _inline_all(sch) -> None:
    """compute_inline every spatial block that can go (not padding, not outputs)."""
    changed = True
    while changed:
        changed = False
        for block in _root_blocks(sch):
            blk = sch.get(block)
            if _is_reduction(blk) or _is_pad(blk):
                continue
            consumers = sch.get_consumers(block)
            if not consumers:
                continue  # writes a function output
            if len(consumers) > 1 and _has(blk.body, lambda n: _is_call(n)):
                continue  # an exp read twice: compute once
            # a pure copy feeding a padding block is fine to inline; padding itself stays
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # noqa: BLE001 - not inlinable (e.g. multiple writes)
                continue


def _strided_pool_pad(sch, block) -> bool:
    """Is ``block`` the padding of a pooling that reads it with a stride along the row (ResNet's
    3x3/2 max pool)? See :func:`_pool_rows`."""
    consumers = list(sch.get_consumers(block))
    if len(consumers) != 1:
        return False
    cb = sch.get(consumers[0])
    if not _is_reduction(cb) or _is_contraction(cb) or not hasattr(cb.body, "value"):
        return False
    out = sch.get(block).body.buffer
    for ld in _loads(cb.body.value):
        if _buf(ld).same_as(out) and ld.indices:
            if any(_coef(ld.indices[-1], iv.var) not in (0, 1) for iv in cb.iter_vars):
                return True
    return False


def _is_contraction(blk) -> bool:
    from tvm import tirx

    if not _is_reduction(blk):
        return False
    store = blk.body
    if not isinstance(store, tirx.BufferStore):
        return False
    out = store.buffer
    reads = {_buf(ld) for ld in _loads(store.value) if not _buf(ld).same_as(out)}
    return len(reads) >= 2 and _has(store.value, lambda n: isinstance(n, tirx.Mul))


def _parallel_outer(sch, loops, threads_hint: int = 0):
    """Fuse ``loops`` and mark parallel; returns the fused loop."""
    loops = [lp for lp in loops]
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _ext(sch, fused)
    if ext is None or ext > 1:
        sch.parallel(fused)
    return fused


def _schedule_elementwise(sch, block, lanes: int) -> str:
    """Fuse all loops, split off a vector, parallelize the rest.

    Padding keeps its innermost loop (the fused index would cost a div/mod per
    element) and vectorizes it when it divides into vectors.
    """
    loops = list(sch.get_loops(block))
    if not loops:
        return "none"
    total = 1
    for lp in loops:
        total *= _ext(sch, lp) or 1
    blk = sch.get(block)
    last_ext = _ext(sch, loops[-1]) or 0
    if len(loops) > 1 and (_is_pad(blk) or last_ext >= lanes):
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        inner = loops[-1]
        n_in = _ext(sch, inner) or 0
        vec = _vector_factor(n_in, lanes)
        if vec == n_in and vec:
            sch.vectorize(inner)
        elif vec:
            _, vi = sch.split(inner, [None, vec])
            sch.vectorize(vi)
        if total >= _PARALLEL_MIN and (_ext(sch, outer) or 0) > 1:
            sch.parallel(outer)
        return "elementwise"
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    n = _ext(sch, fused) or 0
    vec = _vector_factor(n, lanes)
    if vec:
        outer, inner = sch.split(fused, [None, vec])
        sch.vectorize(inner)
    else:
        outer = fused
    if n >= _PARALLEL_MIN and (_ext(sch, outer) or 0) > 1:
        sch.parallel(outer)
    return "elementwise"


def _schedule_plain_reduction(sch, block) -> str:
    """Parallel over the leading spatial loops (softmax, mean)."""
    from tvm import tirx

    loops, ivs = _block_loops_vars(sch, block)
    spatial = []
    for lp, iv in zip(loops, ivs):
        if iv is None or iv.iter_type != tirx.IterVar.DataPar:
            break
        spatial.append(lp)
    total = 1
    for lp in spatial:
        total *= _ext(sch, lp) or 1
    reduce_total = 1
    for lp in loops[len(spatial):]:
        reduce_total *= _ext(sch, lp) or 1
    if spatial and total > 1 and total * reduce_total >= _PARALLEL_MIN:
        _parallel_outer(sch, spatial)
    return "reduction"


def _store_grid(sch, block, what: str, dims=None, full: bool = False):
    """A block that is one BufferStore over a plain loop grid, split into its spatial and reduction
    loops: ``(blk, store, loops, ivs, spatial, reduce)``, each axis as ``(loop, iter var)``.

    ``dims``: the store's index count must pass it (a conv writes 3 or more, a 2-d conv 4);
    ``full``: every block axis has its own loop. Raises ValueError (``what`` when the store does not
    fit), so the next rule follows.
    """
    from tvm import tirx

    blk = sch.get(block)
    store = blk.body
    if not isinstance(store, tirx.BufferStore) or (dims is not None and not dims(len(store.indices))):
        raise ValueError(what)
    loops, ivs = _block_loops_vars(sch, block)
    if any(iv is None for iv in ivs) or (full and len(loops) != len(blk.iter_vars)):
        raise ValueError("loops are not a plain grid")
    spatial = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type != tirx.IterVar.DataPar]
    return blk, store, loops, ivs, spatial, reduce


def _pool_rows(sch, block, lanes: int, threads: int) -> str:
    """A pooling that reads its padded input with a stride along the row (ResNet's 3x3/2 max
    pool): parallel over output rows; each row's window of the padded input (kernel-height
    rows) is built in a small local buffer under that loop, and the row's pixels are a plain
    loop with the window unrolled, which LLVM vectorizes with interleaved (deinterleaving)
    loads. A padded copy of the whole input was a pass over it (0.96 ms on ResNet-50's), and
    reading through the padding's condition in TVM's vectors became masked gathers
    (0.41-0.46 ms); this is 0.18-0.20 ms, ONNX Runtime 0.21 ms (one thread, alone).

    Raises ValueError when the block does not fit (the next rule follows).
    """
    from tvm import tirx

    producers = list(sch.get_producers(block))
    if len(producers) != 1 or not _is_pad(sch.get(producers[0])) or not _strided_pool_pad(sch, producers[0]):
        raise ValueError("not a strided pooling of a padded input")
    blk, _store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a pooling", full=True)
    if len(spatial) < 2 or not reduce or any(iv.iter_type != tirx.IterVar.DataPar for iv in ivs[:len(spatial)]):
        raise ValueError("not output rows around a window")
    rows = sch.fuse(*[lp for lp, _ in spatial[:-1]])
    if (_ext(sch, rows) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
        sch.parallel(rows)
    sch.compute_at(producers[0], rows, preserve_unit_loops=True)
    sch.set_scope(producers[0], 0, "local")
    for lp, _ in reduce:
        if 1 < (_ext(sch, lp) or 0) <= 7:
            sch.unroll(lp)
    return "pool-rows"


def _pool_blocked(sch, block, lanes: int, threads: int) -> str:
    """A pooling window over the channel-blocked layout (``[n, C/x, h, w, x]``): the channel block
    is the vector, the window unrolled, rows of blocks parallel; the padding is a per-pixel
    condition, the same for every lane, so it folds into the window's loads instead of a padded
    copy of the input (ResNet's 3x3/2 max pool: a 3.3 MB copy)."""
    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a blocked pool",
                                                         dims=lambda n: n == 5, full=True)
    if len(spatial) != 5 or not reduce or int(store.buffer.shape[-1]) % lanes:
        raise ValueError("not a pool over whole channel vectors")
    for producer in sch.get_producers(block):
        if _is_pad(sch.get(producer)):
            sch.compute_inline(producer)
    (lb, _), (lc, _), (ly, _), (lx, _), (lk, _) = spatial
    rl = [lp for lp, _ in reduce]
    sch.reorder(lb, lc, ly, lx, *rl, lk)
    fused = sch.fuse(lb, lc, ly)
    if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN:
        sch.parallel(fused)
    for lp in rl:
        if (_ext(sch, lp) or 0) <= 7:
            sch.unroll(lp)
    k_o, k_i = sch.split(lk, [None, lanes])
    sch.vectorize(k_i)
    _decompose(sch, block, rl[0])
    return "pool-blocked"


def _vector_reduction(sch, block, lanes: int) -> str:
    """A long reduction over a row's contiguous innermost axis (softmax's max and sum, a mean
    over the last axis): ``lanes``-wide partial results (``rfactor``) reduced in vector
    registers, then across the lanes; parallel over the rows.

    Raises ValueError when the block does not fit (the plain rule follows).
    """

    blk, store, loops, ivs, _, red = _store_grid(sch, block, "not a single store")
    if len(red) != 1 or not red[0][0].same_as(loops[-1]):
        raise ValueError("not a single innermost reduction loop")
    rloop, riv = red[0]
    ext = _ext(sch, rloop) or 0
    if ext < 8 * lanes:
        raise ValueError("short reduction")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    if not loads or any(not ld.indices or _coef(ld.indices[-1], riv.var) != 1
                        or any(_uses(ix, riv.var) for ix in ld.indices[:-1]) for ld in loads):
        raise ValueError("reduction axis not contiguous in the input")
    # several vectors of partial results: independent add chains (an add's latency is ~4 cycles)
    vf = next((f for f in range(min(ext, 4 * lanes), max(lanes // 2, 2) - 1, -1) if ext % f == 0), 0)
    if not vf:
        raise ValueError("reduction does not split into vectors")
    spatial = [lp for lp in loops if not lp.same_as(rloop)]
    total = 1
    for lp in spatial:
        total *= _ext(sch, lp) or 1
    _ro, ri = sch.split(rloop, [None, vf])
    rf = sch.rfactor(ri, 0)
    sch.set_scope(rf, 0, "local")
    # rf block: [spatial..., ro, ri] with ri spatial now -> vectorize it
    rf_loops = list(sch.get_loops(rf))
    sch.vectorize(rf_loops[-1])
    if len(spatial) > 1:
        sch.fuse(*rf_loops[:len(spatial)])
    rf_loops = list(sch.get_loops(rf))
    if total > 1 and total * ext >= _PARALLEL_MIN:
        sch.parallel(rf_loops[0])
    fin_loops = list(sch.get_loops(block))
    if len(spatial) > 1:
        sch.fuse(*fin_loops[:len(spatial)])
    return "reduction-vector"


def _work(sch, block) -> int:
    """Iterations of the block (multiply-adds of a contraction)."""
    n = 1
    for lp in sch.get_loops(block):
        n *= _ext(sch, lp) or 1
    return n


def _epilogue_of(sch, block):
    """The single consumer block of ``block`` (its elementwise epilogue), or None."""
    consumers = list(sch.get_consumers(block))
    if len(consumers) != 1:
        return None
    c = consumers[0]
    if _is_reduction(sch.get(c)):
        return None
    return c


def _local_accumulator(sch, block):
    """Accumulate ``block`` in a buffer of its own under the tile (its intermediate buffer, or a
    cache of the function's output it writes directly); returns the block that writes the result
    back (its elementwise epilogue, or the cache's write-back).

    The buffer is "global" scope on purpose: on CPU, TVM turns a "global" allocation of under
    ``_STACK_BYTES`` into a stack alloca, which LLVM promotes to registers, but allocates every
    other scope ("local" included) with ``TVMBackendAllocWorkspace`` plus a memset and a
    write-out per parallel item (measured: 25% of a 64->256 1x1 conv at 56x56)."""
    epi = _epilogue_of(sch, block)
    if epi is None:
        sch.cache_write(block, 0, "global")
        return sch.get_consumers(block)[0]
    sch.set_scope(block, 0, "global")
    return epi


def _stack_vectors(lanes: int) -> int:
    """The most float32 accumulator vectors that stay a stack alloca (see ``_local_accumulator``)."""
    return max(1, (_STACK_BYTES - 1) // (4 * lanes))


def _decompose(sch, block, rloop) -> None:
    """Split the reduction's init off before ``rloop``; vectorize/unroll it like the update."""
    from tvm import tirx

    init = sch.decompose_reduction(block, rloop)
    iloops = list(sch.get_loops(init))
    for lp in iloops:
        if sch.get(lp).kind != tirx.ForKind.SERIAL:
            return  # decompose_reduction kept the update's loop kinds
    if iloops:
        sch.vectorize(iloops[-1])


def _tile_reduction(sch, block, lanes: int, threads: int, allow_strided: bool = False) -> str:
    """Register-tile a reduction block vectorized over its innermost output axis.

    Raises ValueError when the block does not fit (caller tries the next rule).
    """
    from tvm import tirx

    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a single store", full=True)
    if not reduce or not spatial:
        raise ValueError("no reduction or no spatial axis")
    # the vector axis: the var indexing the output's innermost dim
    last = store.indices[-1]
    vec_iv = None
    for _, iv in spatial:
        if _coef(last, iv.var) == 1 and all(not _uses(ix, iv.var) for ix in store.indices[:-1]):
            vec_iv = iv
    if vec_iv is None:
        raise ValueError("innermost output axis is not a plain loop")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    vec_loads = []
    for ld in loads:
        if any(_uses(ix, vec_iv.var) for ix in ld.indices[:-1]):
            raise ValueError("vector axis not innermost in an input")
        if ld.indices and _uses(ld.indices[-1], vec_iv.var):
            c = _coef(ld.indices[-1], vec_iv.var)
            if c != 1 and not (allow_strided and c in (2, 3, 4)):
                raise ValueError("vector axis strided in an input")
            vec_loads.append(ld)
    vec_idx = next(i for i, (_, iv) in enumerate(spatial) if iv.same_as(vec_iv))
    vec_loop = spatial[vec_idx][0]
    vec_ext = _ext(sch, vec_loop) or 0
    vf = _vector_factor(vec_ext, lanes)
    if (not vf or vf % lanes) and vec_ext > 4 * lanes and not allow_strided:
        # an awkward width (e.g. 6625 classes): pad the einsum to whole vectors
        padding = [1] * len(blk.iter_vars)
        padding[list(blk.iter_vars).index(vec_iv)] = lanes
        sch.pad_einsum(block, padding)
        loops, ivs = _block_loops_vars(sch, block)
        spatial = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.DataPar]
        reduce = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type != tirx.IterVar.DataPar]
        blk = sch.get(block)
        vec_loop, vec_iv = spatial[vec_idx]  # pad_einsum keeps the block's iterators in order
        vec_ext = _ext(sch, vec_loop) or 0
        vf = _vector_factor(vec_ext, lanes)
    if not vf:
        raise ValueError(f"innermost extent {vec_ext} does not vectorize")
    # register axis: largest other spatial axis the vectorized operand does not read
    reg = None
    cands = [(lp, iv) for lp, iv in spatial if not iv.same_as(vec_iv) and (_ext(sch, lp) or 1) > 1]
    free = [(lp, iv) for lp, iv in cands if not any(_uses(ix, iv.var) for ld in vec_loads for ix in ld.indices)]
    pool = free or cands
    if not free:
        # depthwise/pooling windows: the output-row axis slides over the input rows together with a
        # reduction axis (``yy + ry``), so a tile of rows re-uses every loaded input row across ``ry``
        window = [(lp, iv) for lp, iv in cands
                  if any(_uses(ix, iv.var) and any(_uses(ix, r.var) and (_ext(sch, rl) or 1) > 1 for rl, r in reduce)
                         for ld in vec_loads for ix in ld.indices[:-1])]
        pool = window or pool
    if pool:
        reg = max(pool, key=lambda t: _ext(sch, t[0]) or 1)
    # accumulate locally: the intermediate conv buffer, or a cache of the output
    epi = _local_accumulator(sch, block)
    vec_o, vec_i = sch.split(vec_loop, [None, vf])
    reg_o = reg_i = None
    # accumulator vectors: 16 of AVX-512's 32 registers, 12 of AVX2's/SSE's 16 (a 6x16 AVX2 tile
    # leaves registers for the two input vectors and a broadcast weight). A full conv whose
    # kernel window is unrolled (3x3) keeps 8 with 16 registers: LLVM hoists the window's
    # loads and a 12-vector tile spills (measured 0.8x on a 3x3 96->24 conv)
    window = any(1 < (_ext(sch, lp) or 1) <= 7 for lp, _ in reduce[1:])
    row_tile = reg is not None and not free
    n_acc = 16 if lanes >= 16 else (8 if window and not row_tile else 12)
    # ... and under the stack limit (15 of AVX-512's vectors: MobileNetV2 1.67 -> 1.35x ORT,
    # PP-OCR det 0.79 -> 0.63x against 16-vector tiles allocated per parallel item)
    n_acc = min(n_acc, _stack_vectors(lanes))
    limit = max(1, n_acc // max(1, (vf + lanes - 1) // lanes))
    packed = False
    if reg is not None:
        uf = _unroll_factor(_ext(sch, reg[0]) or 1, limit)
        if uf > 1:
            packed = _pack_register_operand(sch, block, loads, reg[1], uf, lanes)
            reg_o, reg_i = sch.split(reg[0], [None, uf])
    outer = []
    for lp, iv in spatial:
        if iv.same_as(vec_iv):
            outer.append(vec_o)
        elif reg is not None and iv.same_as(reg[1]):
            continue
        else:
            outer.append(lp)
    # the register axis' outer loop innermost among the tiles: consecutive tiles share the input patch
    if reg is not None:
        outer.append(reg_o if reg_o is not None else reg[0])
    inner = ([reg_i] if reg_i is not None else []) + [vec_i]
    # depthwise convs and pooling read a padded copy of their input plane by plane: pad each
    # plane right before its tiles use it (it stays in L1) instead of the whole tensor up front
    pad, plane = _plane_padding(sch, block, spatial, vec_iv, reg, vec_loads)
    if pad is not None:
        plane_loops = [lp for lp, iv in spatial if any(iv.same_as(p) for p in plane)]
        rest = [lp for lp in outer if not any(lp.same_as(q) for q in plane_loops)]
        outer = plane_loops + rest
    sch.reorder(*outer, *[lp for lp, _ in reduce], *inner)
    if pad is not None:
        par = sch.fuse(*plane_loops) if len(plane_loops) > 1 else plane_loops[0]
        fused = sch.fuse(*rest) if len(rest) > 1 else rest[0]
        n_outer = 2
    else:
        par = fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        n_outer = 1
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    if (_ext(sch, par) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
        sch.parallel(par)
    if pad is not None:
        sch.compute_at(pad, par, preserve_unit_loops=True)
        ploops = list(sch.get_loops(pad))[1:]
        if ploops:
            n_in = _ext(sch, ploops[-1]) or 0
            pv = _vector_factor(n_in, lanes)
            if pv == n_in and pv:
                sch.vectorize(ploops[-1])
            elif pv:
                sch.vectorize(sch.split(ploops[-1], [None, pv])[1])
    # epilogue: vectorize its innermost loop
    eloops = list(sch.get_loops(epi))[n_outer:]
    if eloops:
        einner = eloops[-1]
        e_ext = _ext(sch, einner) or 0
        if e_ext > 1 and e_ext <= 6 * lanes:
            sch.vectorize(einner)
    # small reduction loops (kernel window) unrolled
    rloops = list(sch.get_loops(block))[n_outer:-len(inner)]
    for lp in rloops[1:]:
        e = _ext(sch, lp)
        if e is not None and 1 < e <= 7:
            sch.unroll(lp)
    if reg_i is not None:
        sch.unroll(reg_i)
    sch.vectorize(vec_i)
    # reduction init before the first reduction loop
    _decompose(sch, block, rloops[0])
    return ("tiled" if not allow_strided else "tiled-strided") + ("-packed" if packed else "")


def _pack_register_operand(sch, block, loads, reg_iv, uf: int, lanes: int) -> bool:
    """A constant weight read at ``W[o, ...]`` by the register axis ``o`` (unrolled by ``uf``):
    repack it to ``[O/uf, ..., uf]`` at compile time, so the ``uf`` weights each step broadcasts
    are adjacent (one cache line instead of ``uf`` rows apart)."""
    ws = [ld for ld in loads if ld.indices and _coef(ld.indices[0], reg_iv.var) == 1
          and all(not _uses(ix, reg_iv.var) for ix in ld.indices[1:])]
    if len(ws) != 1 or not _layout_free(sch, _buf(ws[0])):
        return False
    w = ws[0]
    ndim = len(w.indices)
    blk = sch.get(block)
    widx = [i for i, r in enumerate(blk.reads) if _buf(r).same_as(_buf(w))]
    if len(widx) != 1:
        return False
    wcache = sch.cache_read(block, widx[0], "global")
    sch.transform_layout(wcache, ("write", 0),
                         lambda *ax: (ax[0] // uf, *ax[1:], ax[0] % uf) if len(ax) == ndim else ax)
    _schedule_elementwise(sch, wcache, lanes)
    sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
    return True


def _plane_padding(sch, block, spatial, vec_iv, reg, vec_loads):
    """(padding block, plane iter vars) when ``block`` reads a padded input plane by plane.

    A depthwise conv or a pooling reads its padded input at the output's own
    channel (``pad[n, c + rc, y + ry, x + rx]`` with one input channel per
    output channel): the tiles of one (n, c) read only that plane. Returns
    (None, []) otherwise (a full conv reads every input plane from every tile).
    """
    store_buf = sch.get(block).body.buffer
    for ld in vec_loads:
        buf = _buf(ld)
        if buf.same_as(store_buf) or len(ld.indices) < 3:
            continue
        pads = [p for p in sch.get_producers(block)
                if _is_pad(sch.get(p)) and sch.get(p).body.buffer.same_as(buf)]
        if len(pads) != 1 or len(sch.get_consumers(pads[0])) != 1:
            continue
        plane = []
        for _, iv in spatial:
            if iv.same_as(vec_iv) or (reg is not None and iv.same_as(reg[1])):
                continue
            if any(_uses(ix, iv.var) for ix in ld.indices[-2:]):
                return None, []
            if any(_uses(ix, iv.var) for ix in ld.indices[:-2]):
                plane.append(iv)
        # the plane must be all of the leading dims (n, c): one output plane per input plane
        lead_used = all(any(_uses(ix, iv.var) for iv in plane) or _is_const(ix) for ix in ld.indices[:-2])
        if plane and lead_used and len(plane) < len([1 for _, iv in spatial if not iv.same_as(vec_iv)]):
            return pads[0], plane
    return None, []


def _is_const(expr) -> bool:
    from tvm import tirx

    return isinstance(expr, tirx.IntImm)


def _tile_strided(sch, block, lanes: int, threads: int) -> str:
    return _tile_reduction(sch, block, lanes, threads, allow_strided=True)


def _tile_channels(sch, block, lanes: int, threads: int) -> str:
    """Conv-like contraction vectorized over the output channel axis with repacked weights."""
    from tvm import tirx

    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a conv", dims=lambda n: n >= 3)
    # channel axis: output dim 1 (NCHW), read by exactly one input (the weight) at its dim 0
    ch = store.indices[1]
    ch_iv = next((iv for _, iv in spatial if _coef(ch, iv.var) == 1 and _uses(ch, iv.var)), None)
    if ch_iv is None:
        raise ValueError("no channel axis")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    users = [ld for ld in loads if any(_uses(ix, ch_iv.var) for ix in ld.indices)]
    if len(users) != 1:
        raise ValueError("channel axis read by several inputs (depthwise)")
    w = users[0]
    if not (_coef(w.indices[0], ch_iv.var) == 1 and all(not _uses(ix, ch_iv.var) for ix in w.indices[1:])):
        raise ValueError("weight not indexed by channel at dim 0")
    ch_loop = next(lp for lp, iv in spatial if iv.same_as(ch_iv))
    ch_ext = _ext(sch, ch_loop) or 0
    # two vectors of output channels when they divide (a 2x6 tile of AVX2's 16 registers: 12
    # accumulators, two weight vectors, one broadcast input): each broadcast feeds two FMAs
    # (AVX2 and AVX-512; SSE keeps one vector)
    wide = _K.ch_vectors * lanes if lanes >= 8 else lanes
    vf = next((f for f in (wide, lanes, lanes // 2) if f >= 4 and ch_ext % f == 0), 0)
    if not vf:
        raise ValueError(f"{ch_ext} channels do not vectorize")
    # accumulators: unroll x the channel vectors, at most 28 of AVX-512's 32 registers (AVX2's 16: 6 x 2)
    x_limit = _K.unroll if vf <= lanes else min(_K.unroll, 6 if lanes < 16 else 28 * lanes // vf)
    x_limit = min(x_limit, max(1, _stack_vectors(lanes) // max(1, vf // lanes)))  # a stack alloca
    # innermost output axis as the register axis
    last = store.indices[-1]
    x_iv = next((iv for _, iv in spatial if _coef(last, iv.var) == 1 and _uses(last, iv.var)), None)
    widx = [i for i, r in enumerate(blk.reads) if _buf(r).same_as(_buf(w))][0]
    wcache = sch.cache_read(block, widx, "global")
    ndim = len(w.indices)
    sch.transform_layout(
        wcache, ("write", 0),
        lambda *ax: (ax[0] // vf, *ax[1:], ax[0] % vf) if len(ax) == ndim else ax,
    )
    epi = _local_accumulator(sch, block)
    sch.transform_layout(
        block, ("write", 0),
        lambda n, c, *rest: (n, c // vf, *rest, c % vf),
    )
    loops, ivs = _block_loops_vars(sch, block)
    spatial = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [(lp, iv) for lp, iv in zip(loops, ivs) if iv.iter_type != tirx.IterVar.DataPar]
    ch_loop = next(lp for lp, iv in spatial if iv.same_as(ch_iv))
    c_o, c_i = sch.split(ch_loop, [None, vf])
    x_o = x_i = None
    if x_iv is not None:
        x_loop = next(lp for lp, iv in spatial if iv.same_as(x_iv))
        uf = _unroll_factor(_ext(sch, x_loop) or 1, x_limit)
        if uf > 1:
            x_o, x_i = sch.split(x_loop, [None, uf])
    outer = []
    for lp, iv in spatial:
        if iv.same_as(ch_iv):
            outer.append(c_o)
        elif x_iv is not None and iv.same_as(x_iv) and x_o is not None:
            outer.append(x_o)
        else:
            outer.append(lp)
    inner = ([x_i] if x_i is not None else []) + [c_i]
    kblock = 0
    if _pixels_outer(sch, reduce, loads, w):
        outer = [lp for lp in outer if not lp.same_as(c_o)] + [c_o]
    elif (_ext(sch, c_o) or 0) >= max(8, 4 * (threads or os.cpu_count() or 1)):
        # the channel blocks alone are the parallel loop: enough of them for the threads (1024->256
        # at 14x14 has 8: 7% faster so, single thread)
        kblock = _k_block(sch, reduce, vf)
    if kblock:
        at = next(i for i, lp in enumerate(outer) if lp.same_as(c_o)) + 1
        par, rest = outer[:at], outer[at:]
        rc_o, rc_i = sch.split(reduce[0][0], [None, kblock])
        sch.reorder(*par, rc_o, *rest, rc_i, *[lp for lp, _ in reduce[1:]], *inner)
        fused = sch.fuse(*par) if len(par) > 1 else par[0]
        rloops = [rc_o]
    else:
        sch.reorder(*outer, *[lp for lp, _ in reduce], *inner)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
        sch.parallel(fused)
    if not kblock:
        rloops = list(sch.get_loops(block))[1:-len(inner)]
    for lp in rloops[1:]:
        e = _ext(sch, lp)
        if e is not None and 1 < e <= 7:
            sch.unroll(lp)
    if x_i is not None:
        sch.unroll(x_i)
    sch.vectorize(c_i)
    _decompose(sch, block, rloops[0])
    # the epilogue writes the channel-blocked tile back to NCHW: vectorized along the row (the
    # register axis, contiguous in the output), channels unrolled, so LLVM transposes the
    # accumulator registers instead of storing element by element (1.1-1.25x on 1x1 convs)
    eloops = list(sch.get_loops(epi))[1:]
    if x_i is not None and len(eloops) > 2 and (_ext(sch, eloops[-1]) or 0) > 1:
        sch.vectorize(eloops[-1])
        sch.unroll(eloops[1])
    _schedule_elementwise(sch, wcache, lanes)
    if _layout_free(sch, _buf(w)):
        # a constant weight: the repack becomes its own function (SplitLayoutRewritePreproc), which
        # FoldConstant runs once at compile time; the artifact holds the packed weight
        sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        return "tiled-channels-packed"
    # the weight repack runs once per call: parallel copy
    return "tiled-channels"


def _tile_nchwc(sch, block, lanes: int, threads: int) -> str:
    """A conv in the channel-blocked layout (``NCHW[x]c`` data, ``OIHW[x]i[y]o`` weights, written
    ``[n, C/y, h, w, y]``): the output-channel block is contiguous, so it is the vector; the
    register tile is a run of output pixels along the row by a few channel blocks, each step one
    broadcast input value per pixel and one weight vector per block (oneDNN's and ONNX Runtime's
    NCHWc kernels; no transpose on the way out, the epilogue stores whole vectors).

    Raises ValueError when the block does not fit (the next rule follows).
    """
    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not an NCHWc conv",
                                                         dims=lambda n: n == 5, full=True)
    if len(spatial) != 5 or len(reduce) != 4:
        raise ValueError("not an (n, C, y, x, c) x (rc, ry, rx, rc') contraction")
    b_iv, c_iv, y_iv, x_iv, k_iv = [iv for _, iv in spatial]
    if not all(_coef(ix, iv.var) == 1 for ix, iv in zip(store.indices, (b_iv, c_iv, y_iv, x_iv, k_iv))):
        raise ValueError("output not indexed [n, C, y, x, c]")
    vf = int(store.buffer.shape[-1])
    if vf % lanes and lanes % vf:
        raise ValueError("channel block is no whole number of vectors")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    weights = [ld for ld in loads if len(ld.indices) == 6 and _coef(ld.indices[0], c_iv.var) == 1
               and _coef(ld.indices[-1], k_iv.var) == 1]
    data = [ld for ld in loads if len(ld.indices) == 5]
    if len(weights) != 1 or len(data) != 1 or any(_uses(ix, k_iv.var) or _uses(ix, c_iv.var) for ix in data[0].indices):
        raise ValueError("not one blocked weight and one input")
    w = weights[0]
    n_blocks = int(store.buffer.shape[1])
    ow = int(store.buffer.shape[3])
    # register tile: uf pixels along the row x cb channel blocks. Each step loads cb weight
    # vectors (kept in registers across the pixels) and broadcasts one input value per pixel, so
    # accumulators + weight vectors fit AVX-512's 32 registers (AVX2's 16). Measured on ResNet-50
    # (2 threads): 7 pixels x 2 blocks beat the 28-accumulator tiles (14 x 2: 10% slower on the
    # 3x3 convs; 7 x 4 spills)
    vecs = max(1, vf // lanes)
    regs = 32 if lanes >= 16 else 16
    cb = next(c for c in (_K.ch_vectors, 2, 1) if c <= _K.ch_vectors and n_blocks % c == 0)
    uf = _unroll_factor(ow, _K.unroll)
    while cb > 1 and (uf * cb + cb) * vecs > regs - 1:
        cb -= 1
    # ... and the accumulators a stack alloca: 7 x 2 at 56 wide, not 8 x 2 (1 KiB, a workspace
    # per item: 333 vs 242 us on a 64->256 conv at 56x56)
    uf = _unroll_factor(ow, min(_K.unroll, max(1, (regs - 1) // vecs // cb - 1),
                                max(1, _stack_vectors(lanes) // (vecs * cb))))
    epi = _local_accumulator(sch, block)
    packed = False
    if cb > 1 and _layout_free(sch, _buf(w)):
        # the cb blocks' weight vectors of one step adjacent: [C/cb, I/x, ry, rx, x, cb, y]
        widx = [i for i, r in enumerate(blk.reads) if _buf(r).same_as(_buf(w))][0]
        wcache = sch.cache_read(block, widx, "global")
        sch.transform_layout(wcache, ("write", 0),
                             lambda o, i, ky, kx, ii, oo: (o // cb, i, ky, kx, ii, o % cb, oo))
        _schedule_elementwise(sch, wcache, lanes)
        sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        packed = True
    (lb, _), (lc, _), (ly, _), (lx, _), (lk, _) = spatial
    rl = [lp for lp, _ in reduce]
    c_o, c_i = sch.split(lc, [None, cb])
    x_o, x_i = sch.split(lx, [None, uf])
    # channel blocks outermost: one block's weights stay in L1-L2 while its rows of tiles go by
    # (measured on ResNet-50 against a whole row per item, pixels outside the blocks, and the
    # reduction in L1-sized slices: none faster in the network, 1-24% slower)
    (lrc, _), (lry, _), (lrx, _), (lri, _) = reduce
    sch.reorder(lb, c_o, ly, x_o, *rl, x_i, c_i, lk)
    fused = sch.fuse(lb, c_o, ly, x_o)
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
        sch.parallel(fused)
    for lp in (lry, lrx):
        e = _ext(sch, lp)
        if e is not None and 1 < e <= 3:
            sch.unroll(lp)
    ri_ext = _ext(sch, lri) or 1
    if _K.k_unroll > 1 and ri_ext % _K.k_unroll == 0:
        # two input channels per loop step: 1.7% on ResNet-50 (1 thread), 1.5% (2 threads)
        _, ri_i = sch.split(lri, [None, _K.k_unroll])
        sch.unroll(ri_i)
    sch.unroll(c_i)
    sch.unroll(x_i)
    if vf > lanes:
        k_o, lk = sch.split(lk, [None, lanes])
        sch.unroll(k_o)
    sch.vectorize(lk)
    _decompose(sch, block, rl[0])
    eloops = list(sch.get_loops(epi))[1:]
    if eloops and (_ext(sch, eloops[-1]) or 0) > 1:
        sch.vectorize(eloops[-1])
    return "tiled-nchwc" + ("-packed" if packed else "")


def _copy_input_flat(sch, block, load, w: int, at, scope: str, vf: int) -> None:
    """Copy what ``block`` reads of ``load``'s buffer under loop ``at`` into a contiguous
    ``scope`` buffer over the flat pixel index (``y * w + x``), in ``vf``-wide vector moves."""
    didx = [i for i, r in enumerate(sch.get(block).reads) if _buf(r).same_as(_buf(load))]
    if len(didx) != 1:
        raise ValueError("input read twice")
    tile = sch.cache_read(block, didx[0], scope)
    sch.transform_layout(tile, ("write", 0), lambda n, c, y, x: (n, c, y * w + x))
    sch.transform_block_layout(tile, lambda n, c, y, x: (n, c, y * w + x))
    sch.compute_at(tile, at, preserve_unit_loops=True)
    tloops = list(sch.get_loops(tile))[1:]
    ext = (_ext(sch, tloops[-1]) or 0) if tloops else 0
    if ext == vf:
        sch.vectorize(tloops[-1])
    elif ext and ext % vf == 0:
        sch.vectorize(sch.split(tloops[-1], [None, vf])[1])


def _tile_pixels(sch, block, lanes: int, threads: int) -> str:
    """A 1x1 stride-1 conv whose rows do not split into vectors but whose planes do (56x56,
    28x28 with 16 lanes): a GEMM over the flattened plane. The row and column loops are fused
    into one pixel axis (``y * W + x`` is contiguous in the input and the output), vectorized,
    with output channels as the register axis (weights repacked to ``[O/u, I, u]``); the
    accumulator and the epilogue use the same flat pixel index.

    Raises ValueError when the block does not fit (the next rule follows).
    """

    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a 2-d conv", dims=lambda n: n == 4)
    if len(spatial) != 4 or not reduce or any((_ext(sch, lp) or 0) != 1 for lp, _ in reduce[1:]):
        raise ValueError("not a 1x1 conv")
    n_iv, c_iv, y_iv, x_iv = [iv for _, iv in spatial]
    if not all(_coef(ix, iv.var) == 1 for ix, iv in zip(store.indices, (n_iv, c_iv, y_iv, x_iv))):
        raise ValueError("output not indexed [n, c, y, x]")
    h, w = (int(d) for d in store.buffer.shape[2:])
    if w % lanes == 0 or (h * w) % lanes:
        raise ValueError("rows split into vectors, or planes do not")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    data = [ld for ld in loads if _uses(ld.indices[-1], x_iv.var)]
    if len(data) != 1 or len(data[0].indices) != 4:
        raise ValueError("no single input read along the row")
    d = data[0]
    dh, dw = (int(v) for v in _buf(d).shape[2:])
    if (dh, dw) != (h, w) or _coef(d.indices[3], x_iv.var) != 1 or _coef(d.indices[2], y_iv.var) != 1 \
            or any(_uses(d.indices[3], iv.var) for iv in (y_iv, c_iv)) or _uses(d.indices[2], x_iv.var):
        raise ValueError("input plane not read one to one (stride, padding)")
    weights = [ld for ld in loads if ld is not d]
    if len(weights) != 1:
        raise ValueError("not one weight")
    # 16 accumulators: two vectors of pixels by 8 output channels
    n_ch = int(store.buffer.shape[1])
    pv = next(v for v in (_K.pix_vectors, 2, 1) if v <= _K.pix_vectors and (h * w) % (v * lanes) == 0)
    vf = pv * lanes
    uf = _unroll_factor(n_ch, max(1, min(_K.pix_acc, _stack_vectors(lanes)) // pv))  # a stack alloca
    if uf < 2:
        raise ValueError("too few output channels")
    # 8-channel blocks: outermost, each would stream the whole input again, so an input over
    # half an L2 (512->256 at 28x28: 1.6 MB, 1.8x slower so) walks the pixels outside them
    pixels_outer = math.prod(int(v) for v in _buf(d).shape) * 4 > (_K.l2_kb << 10) // 2
    epi = _local_accumulator(sch, block)
    # accumulator and epilogue over the flat pixel index
    sch.transform_layout(block, ("write", 0), lambda n, c, y, x: (n, c, y * w + x))
    sch.transform_block_layout(epi, lambda n, c, y, x: (n, c, y * w + x))
    packed = _pack_register_operand(sch, block, loads, c_iv, uf, lanes)
    if len(reduce) != 3:
        raise ValueError("not an (rc, ry, rx) reduction")
    sch.transform_block_layout(block, lambda n, c, y, x, rc, ry, rx: (n, c, y * w + x, rc, ry, rx))
    loops = list(sch.get_loops(block))
    ln, lc, p = loops[:3]
    rl = loops[3:]
    p_o, p_i = sch.split(p, [None, vf])
    c_o, c_i = sch.split(lc, [None, uf])
    n_in_ch = int(_buf(d).shape[1])
    n_tiles = _ext(sch, p_o) or 1
    tile_bytes = n_in_ch * vf * 4
    chunk_bytes = _K.pix_chunk_kb << 10
    chunk = max((t for t in range(1, n_tiles + 1) if n_tiles % t == 0 and t * tile_bytes <= chunk_bytes), default=0)
    use_chunk = chunk_bytes > 0 and 1 < chunk < n_tiles and n_in_ch < 2 * n_ch
    if _K.pack_input and n_in_ch >= 2 * n_ch:
        # a reduction over at least twice the output channels (ResNet's 512->128, 256->64):
        # pixels outermost (parallel) and the tile's input [I, vf] copied into a contiguous local
        # buffer once, then read from L1 by every output-channel block: read in place, each step
        # of the reduction is a different plane (3 kB apart at 28x28: past the L1 stride
        # prefetcher, a TLB page every step); the weights stream from L2 in order (12-20% on
        # those convs, single thread). With more outputs than inputs, the output tiles scattered
        # over every plane cost more than this saves (64->256 with a residual: 1.5x slower)
        n_blocks = _ext(sch, c_o) or 1
        wbytes = math.prod(int(v) for v in _buf(weights[0]).shape) * 4
        groups = next((g for g in range(1, n_blocks + 1) if n_blocks % g == 0 and wbytes // g <= (_K.l2_kb << 10) // 4),
                      n_blocks)
        if groups > 1:  # a weight over a quarter of L2: channel groups outermost, each one's weights stay in L2
            c_g, c_o = sch.split(c_o, [groups, None])
            sch.reorder(ln, c_g, p_o, c_o, *rl, c_i, p_i)
            fused = sch.fuse(ln, c_g, p_o)
        else:
            sch.reorder(ln, p_o, c_o, *rl, c_i, p_i)
            fused = sch.fuse(ln, p_o)
        sch.reverse_compute_at(epi, c_o, preserve_unit_loops=True)
        _copy_input_flat(sch, block, d, w, fused, "local", vf)
        if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
            sch.parallel(fused)
        n_outer = 2
    else:
        if use_chunk:
            # more outputs than inputs (ResNet's 64->256 at 56x56, 128->512 at 28x28): chunks of
            # pixel tiles outermost, each chunk's input [I, chunk] copied once into a contiguous
            # buffer (a quarter of L1-L2 size), then every output-channel block walks the chunk's
            # tiles in order: the output and the residual are written and read as runs along
            # each plane instead of a few lines of every plane per tile (in the network, one
            # thread: 64->256 2.36-2.48 -> 2.20 ms, 128->512 2.24-2.35 -> 2.11 ms; alone on two
            # threads 64->256 445 -> 282-302 us, where it gained 1.3x from the second thread)
            p_c, p_in = sch.split(p_o, [None, chunk])
            n_blocks = _ext(sch, c_o) or 1
            # enough parallel items for every thread: chunks x groups of channel blocks (each
            # group copies its chunk again, 1/(channels per group) of its multiply-adds)
            want = 2 * (threads or os.cpu_count() or 1)
            groups = next((g for g in range(1, n_blocks + 1) if n_blocks % g == 0 and n_tiles // chunk * g >= want),
                          n_blocks)
            if groups > 1:
                c_g, c_o = sch.split(c_o, [groups, None])
                sch.reorder(ln, p_c, c_g, c_o, p_in, *rl, c_i, p_i)
                fused = sch.fuse(ln, p_c, c_g)
            else:
                sch.reorder(ln, p_c, c_o, p_in, *rl, c_i, p_i)
                fused = sch.fuse(ln, p_c)
            sch.reverse_compute_at(epi, p_in, preserve_unit_loops=True)
            _copy_input_flat(sch, block, d, w, fused, "global", lanes)
            n_outer = 3
        else:
            if pixels_outer:  # a large input: each tile's input stays in L1 across the channel blocks
                sch.reorder(ln, p_o, c_o, *rl, c_i, p_i)
                fused = sch.fuse(ln, p_o, c_o)
            else:
                sch.reorder(ln, c_o, p_o, *rl, c_i, p_i)
                fused = sch.fuse(ln, c_o, p_o)
            sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
            n_outer = 1
        if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
            sch.parallel(fused)
    eloops = list(sch.get_loops(epi))[n_outer:]
    if eloops and (_ext(sch, eloops[-1]) or 0) > 1:
        e = eloops[-1]
        if pv > 2 and (_ext(sch, e) or 0) == vf:
            sch.unroll(sch.split(e, [pv, lanes])[0])
            e = list(sch.get_loops(epi))[-1]
        sch.vectorize(e)
    sch.unroll(c_i)
    if pv > 2:  # whole vectors, unrolled: a pv x 16-lane vector does not vectorize as one
        p_m, p_i = sch.split(p_i, [pv, lanes])
        sch.unroll(p_m)
    sch.vectorize(p_i)
    _decompose(sch, block, rl[0])
    return "tiled-pixels" + ("-packed" if packed else "")


def _tile_gemv(sch, block, lanes: int, threads: int) -> str:
    """A matrix-vector product by a constant weight (a classifier head at batch 1: ``x[1, K] @
    W[K, N]``): no row axis to keep in registers, so the register tile is a few vectors of
    columns, and the weight is repacked at compile time to ``[N/t, K, t]`` so that each tile of
    ``t`` columns streams its weights contiguously (read in place, every step of the reduction
    jumps a whole row of ``W``: 4 kB for 1000 classes, past the prefetchers, and one vector per
    step left the multiply-adds waiting on each other).

    Raises ValueError when the block does not fit (the next rule follows).
    """

    blk, store, loops, ivs, spatial, reduce = _store_grid(sch, block, "not a single store", full=True)
    wide = [(lp, iv) for lp, iv in spatial if (_ext(sch, lp) or 0) > 1]
    if len(wide) != 1 or len(reduce) != 1:
        raise ValueError("not a matrix-vector product")
    n_loop, n_iv = wide[0]
    k_loop, k_iv = reduce[0]
    if not (_coef(store.indices[-1], n_iv.var) == 1 and n_loop.same_as(spatial[-1][0])):
        raise ValueError("columns not the output's innermost axis")
    loads = [ld for ld in _loads(store.value) if not _buf(ld).same_as(store.buffer)]
    ws = [ld for ld in loads if len(ld.indices) == 2 and _coef(ld.indices[1], n_iv.var) == 1
          and _coef(ld.indices[0], k_iv.var) == 1 and not _uses(ld.indices[0], n_iv.var)
          and not _uses(ld.indices[1], k_iv.var)]
    if len(ws) != 1 or len(loads) != 2 or not _layout_free(sch, _buf(ws[0])):
        raise ValueError("no constant weight W[k, n]")
    if any(_uses(ix, n_iv.var) for ld in loads if ld is not ws[0] for ix in ld.indices):
        raise ValueError("the vector operand depends on the column")
    n = _ext(sch, n_loop) or 0
    if n % lanes or n < 4 * lanes:
        raise ValueError("columns do not split into vectors")
    # 2-4 vectors of columns per tile: independent accumulators, and at least 2 tiles per thread
    u = next((f for f in (4, 3, 2) if (n // lanes) % f == 0), 1)
    if u < 2:
        raise ValueError("no tile of several vectors")
    tile = u * lanes
    w = ws[0]
    widx = [i for i, r in enumerate(blk.reads) if _buf(r).same_as(_buf(w))]
    if len(widx) != 1:
        raise ValueError("weight read twice")
    epi = _local_accumulator(sch, block)
    wcache = sch.cache_read(block, widx[0], "global")
    sch.transform_layout(wcache, ("write", 0), lambda k, c: (c // tile, k, c % tile))
    _schedule_elementwise(sch, wcache, lanes)
    sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
    n_o, n_u, n_i = sch.split(n_loop, [None, u, lanes])
    outer = [lp for lp, iv in spatial if not iv.same_as(n_iv)] + [n_o]
    sch.reorder(*outer, k_loop, n_u, n_i)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    if (_ext(sch, fused) or 2) > 1 and _work(sch, block) >= _PARALLEL_MIN_MACS:
        sch.parallel(fused)
    eloops = list(sch.get_loops(epi))[1:]
    if eloops and 1 < (_ext(sch, eloops[-1]) or 0) <= 6 * lanes:
        sch.vectorize(eloops[-1])
    sch.unroll(n_u)
    sch.vectorize(n_i)
    _decompose(sch, block, k_loop)
    return "tiled-gemv-packed"


def _k_block(sch, reduce, vf: int) -> int:
    """Input channels per step of a 1x1 conv whose block of packed weights outgrows half an L1
    (more than 192 input channels by 32 output channels): the whole plane's accumulators of
    one channel block stay local while the weights are consumed in L1-sized slices, instead of
    streaming the block from L2 once per row of pixels (5-7% on ResNet-50's 14x14 and 7x7
    1x1 convs). 0: not."""
    if any((_ext(sch, lp) or 1) > 1 for lp, _ in reduce[1:]):
        return 0
    cin = _ext(sch, reduce[0][0]) or 0
    if cin * vf * 4 <= 24 << 10:
        return 0
    if not _K.slice_kb:
        return 0
    kb = _unroll_factor(cin, max(1, (_K.slice_kb << 10) // (vf * 4)))
    return kb if kb > 1 and kb < cin else 0


def _pixels_outer(sch, reduce, loads, weight) -> bool:
    """Should a 1x1 conv walk the pixels outside its output-channel blocks?

    Output-channel blocks outermost keep one block's weights in L1 and stream
    the whole input once per block; a 1x1 conv over a large input (56x56x256:
    3 MB, more than L2) then reads it from L3 again and again. When the input
    does not fit in half an L2 and is several times the weight, pixels outermost keep each tile's input
    lines in L1 across all channel blocks and stream the (smaller) weight from
    L2 instead (256->64 at 56x56: 1.3x faster; a 3x3 conv or a small input with
    a large weight, 2048->512 at 7x7, is slower so)."""
    if any((_ext(sch, lp) or 1) > 1 for lp, _ in reduce[1:]):
        return False  # a kernel window: each input line is re-used across the window already
    data = [ld for ld in loads if not _buf(ld).same_as(_buf(weight))]
    if len(data) != 1:
        return False

    def size(buf) -> int:
        return math.prod(int(d) for d in buf.shape)

    n_in = size(_buf(data[0]))
    return n_in * 4 > (_K.l2_kb << 10) // 2 and n_in >= 4 * size(_buf(weight))


def _layout_free(sch, buf) -> bool:
    """Is ``buf`` a parameter the Relax caller passes a constant for (``layout_free_buffers``,
    attached by ``AttachAttrLayoutFreeBuffers``)?"""
    if not _PACK_WEIGHTS:
        return False
    func = sch.mod["main"]
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    if not free:
        return False
    bmap = getattr(func, "buffer_map", None)  # TVM < 0.27: params are handles with a buffer map
    for i in free:
        p = func.params[int(i)]
        b = bmap[p] if bmap is not None and p in bmap else p  # TVM 0.27: the param is the buffer
        if b.same_as(buf) or (hasattr(b, "data") and hasattr(buf, "data") and b.data.same_as(buf.data)):
            return True
    return False


def _schedule_func(func, lanes: int, threads: int, report: CpuScheduleReport | None = None, name: str = ""):
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    _inline_all(sch)
    used = []
    heavy = [sch.get(b).name_hint for b in _root_blocks(sch) if _is_reduction(sch.get(b))]
    for bname in heavy:
        block = sch.get_sblock(bname)
        blk = sch.get(block)
        rules = []
        if _is_contraction(blk):
            rules = [_tile_gemv, _tile_reduction, _tile_channels, _tile_strided]
            # strided conv, or rows that do not split into whole vectors: channel vectorization first
            store = blk.body
            if any(_coef(ix, iv.var) not in (0, 1) for ld in _loads(store.value) for ix in ld.indices[-1:]
                   for iv in blk.iter_vars):
                rules = [_tile_channels, _tile_strided]
            elif int(store.buffer.shape[-1]) % lanes:
                rules = [_tile_pixels, _tile_channels, _tile_reduction, _tile_strided][0 if _K.pix_gemm else 1:]
            if len(store.indices) == 5:  # a channel-blocked (NCHWc) conv
                rules = [_tile_nchwc, *rules]
        elif sch.get(block).body is not None:
            rules = [_pool_rows, _tile_reduction, _tile_strided]
            if len(getattr(blk.body, "indices", ())) == 5:  # a channel-blocked (NCHWc) pool
                rules = [_pool_blocked, *rules]
        done = False
        for rule in rules:
            snapshot = sch.copy()
            try:
                used.append(rule(sch, block, lanes, threads))
                done = True
                break
            except Exception as e:  # noqa: BLE001 - the next rule, or the plain one
                if _DEBUG:
                    import traceback

                    traceback.print_exc()
                if report is not None and (_DEBUG or not isinstance(e, ValueError)):
                    report.fallbacks.append(f"{name}/{blk.name_hint}: {rule.__name__}: {_short(e)}")
                sch = snapshot
                block = sch.get_sblock(bname)
        if not done:
            snapshot = sch.copy()
            try:
                used.append(_vector_reduction(sch, block, lanes))
                done = True
            except Exception as e:  # noqa: BLE001 - the plain rule
                if report is not None and (_DEBUG or not isinstance(e, ValueError)):
                    report.fallbacks.append(f"{name}/{blk.name_hint}: _vector_reduction: {_short(e)}")
                sch = snapshot
                block = sch.get_sblock(bname)
        if not done:
            used.append(_schedule_plain_reduction(sch, block))
    # whatever is left at the root and still a plain loop nest
    for block in _root_blocks(sch):
        blk = sch.get(block)
        if _is_reduction(blk):
            continue
        loops = sch.get_loops(block)
        if loops and any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in loops):
            continue  # already scheduled (parallel/vectorized)
        try:
            used.append(_schedule_elementwise(sch, block, lanes))
        except Exception as e:  # noqa: BLE001
            if report is not None:
                report.fallbacks.append(f"{name}/{blk.name_hint}: elementwise: {_short(e)}")
    rule = next((u for u in ("tiled-nchwc-packed", "tiled-nchwc", "tiled-packed", "tiled", "tiled-gemv-packed", "tiled-pixels-packed", "tiled-pixels", "tiled-channels-packed",
                             "tiled-channels", "tiled-strided-packed", "tiled-strided") if u in used),
                used[0] if used else "none")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), rule


def _short(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:160]


def _simple_func(func, lanes: int):
    """The fallback: parallel leading spatial loops, vectorized innermost spatial loop when legal."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block in _root_blocks(sch):
        try:
            blk = sch.get(block)
            if _is_reduction(blk):
                _schedule_plain_reduction(sch, block)
            else:
                _schedule_elementwise(sch, block, lanes)
        except Exception:  # noqa: BLE001 - leave this block as it is
            continue
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_function(func, target: TargetInfo, threads: int = 0, report: CpuScheduleReport | None = None,
                      name: str = "", knobs: ScheduleKnobs | None = None):
    """Schedule one PrimFunc with ``knobs`` (None: the defaults); never raises (falls back to
    simpler schedules)."""
    global _K
    saved, _K = _K, (knobs or ScheduleKnobs())
    try:
        return _schedule_with_fallbacks(func, target, threads, report, name)
    finally:
        _K = saved


def _schedule_with_fallbacks(func, target: TargetInfo, threads: int, report: CpuScheduleReport | None, name: str):
    lanes = max(1, int(target.vector_lanes))
    try:
        out, rule = _schedule_func(func, lanes, threads, report, name)
        if report is not None:
            report.rules[name] = rule
        return out
    except Exception as e:  # noqa: BLE001
        if report is not None:
            report.fallbacks.append(f"{name}: {_short(e)}")
    try:
        out = _simple_func(func, lanes)
        if report is not None:
            report.rules[name] = "simple"
        return out
    except Exception as e:  # noqa: BLE001
        if report is not None:
            report.fallbacks.append(f"{name}: simple: {_short(e)}")
            report.rules[name] = "unscheduled"
        return func


def schedule_pass(target: TargetInfo, report: CpuScheduleReport | None = None, threads: int = 0,
                  knobs_for=None):
    """Module pass scheduling every PrimFunc not yet scheduled (e.g. by a tuning database);
    ``knobs_for(func)``: that function's tuned :class:`ScheduleKnobs` or None (the defaults)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="HyperinferCpuSchedule")
    def apply(mod, _ctx):
        updated = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and func.attrs.get("tirx.is_scheduled", 0) != 1:
                knobs = knobs_for(func) if knobs_for is not None else None
                updated[gv] = schedule_function(func, target, threads, report, gv.name_hint, knobs)
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    return apply

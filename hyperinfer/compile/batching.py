"""Batched artifacts: ``hyperinfer compile --max-batch N``.

The project's CPU schedules pick tiles from static loop extents, so a symbolic
batch dim would fall back to unscheduled loops. Instead the artifact carries one
static entry point per batch size of a ladder (1, 2, 4, ..., N, as Triton's
``preferred_batch_size`` or TensorRT's optimization profiles): ``main`` is the
batch-1 function every node already calls, ``main_b<k>`` runs k requests
stacked along dim 0. A node pads a batch to the next size in the ladder, so
the padding never costs more than the requests themselves.

Each batch size is cleaned and imported from the source ONNX separately (the
clean-up folds shapes, so ``Reshape`` targets follow the batch), and the
functions are merged into one IRModule (kernels renamed per size): one
artifact, one sha256, one attestation identity.

Homogeneous redundancy (design §6) compares digests bit for bit between nodes
running the same artifact, so a request must give the same bits whether it ran
alone or as item j of a batch: :func:`check_bit_identical` runs every entry
point on the reference inputs at every position and refuses the package if any
bit differs.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from hyperinfer.errors import FailedPrecondition, InvalidArgument
from hyperinfer.package import BatchInfo, TensorSpec

MAX_BATCH_LIMIT = 256


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The ladder of compiled batch sizes: powers of two below ``max_batch``, and ``max_batch``."""
    if max_batch < 1 or max_batch > MAX_BATCH_LIMIT:
        raise InvalidArgument(f"--max-batch must be between 1 and {MAX_BATCH_LIMIT}, got {max_batch}")
    sizes = []
    s = 1
    while s < max_batch:
        sizes.append(s)
        s *= 2
    sizes.append(max_batch)
    return tuple(sizes)


def batch_info(max_batch: int) -> BatchInfo:
    return BatchInfo(max_batch, batch_sizes(max_batch), 0)


def batched_shapes(inputs: Sequence[TensorSpec], size: int) -> dict[str, tuple[int, ...]]:
    """Input shapes for batch ``size`` from the batch-1 specs; every input must lead with dim 1."""
    shapes = {}
    for s in inputs:
        if not s.shape or s.shape[0] != 1:
            raise InvalidArgument(
                f"--max-batch needs every input to lead with a batch dim of 1; input {s.name!r} has shape "
                f"{list(s.shape)}" + (" (give --input-shape with batch 1)" if s.shape else ""))
        if s.source_shape is None or isinstance(s.source_shape[0], int):
            raise InvalidArgument(
                f"--max-batch needs a dynamic batch dim, but input {s.name!r} has dim 0 fixed in the model "
                f"(shape {list(s.source_shape or s.shape)})")
        shapes[s.name] = (size, *s.shape[1:])
    return shapes


def check_outputs_follow(batch1: Sequence[TensorSpec], batched: Sequence[TensorSpec], size: int) -> None:
    """Every output at batch ``size`` must be the batch-1 output with dim 0 scaled."""
    for a, b in zip(batch1, batched):
        if not a.shape or a.shape[0] != 1 or tuple(b.shape) != (size, *a.shape[1:]):
            raise FailedPrecondition(
                f"--max-batch: output {a.name!r} does not follow the batch dim (shape {list(a.shape)} at batch 1, "
                f"{list(b.shape)} at batch {size}); this model cannot be batched along dim 0")


def merge_entry_points(modules: Mapping[int, object]):
    """One IRModule with ``main`` (batch 1) and ``main_b<k>`` per other size, kernels renamed per size."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rename(PyExprMutator):
        def __init__(self, mapping):
            super().__init__()
            self.mapping = mapping

        def visit_global_var_(self, op):  # noqa: N802 - TVM's visitor name
            return self.mapping.get(op.name_hint, op)

    bb = relax.BlockBuilder()
    for size in sorted(modules):
        mod = modules[size]
        entry = BatchInfo.entry_point(size)
        suffix = entry[len("main"):]
        mapping = {}
        for gv, func in mod.functions_items():
            if gv.name_hint != "main":
                name = gv.name_hint + suffix
                mapping[gv.name_hint] = bb.add_func(func.with_attr("global_symbol", name), name)
        main = _Rename(mapping).visit_expr(mod["main"])
        bb.add_func(main.with_attr("global_symbol", entry), entry)
    return bb.get()


def check_bit_identical(run_entry: Callable[[int, list[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]],
                        info: BatchInfo, solo: Sequence[dict[str, np.ndarray]],
                        samples: Sequence[Mapping[str, np.ndarray]], label: str) -> int:
    """Run every batched entry point on ``samples`` (each at several positions of the batch)
    and compare each item with its batch-1 result ``solo`` bit for bit; returns items checked.

    ``run_entry(size, items)`` runs ``items`` (len <= size) through the entry point for ``size``.
    """
    n = len(samples)
    checked = 0
    for size in info.sizes[1:]:
        for shift in range(min(n, size)):
            order = [(shift + j) % n for j in range(size)]
            results = run_entry(size, [samples[i] for i in order])
            for pos, (i, got) in enumerate(zip(order, results)):
                for name, want in solo[i].items():
                    have = got[name]
                    if have.shape != want.shape or have.dtype != want.dtype or \
                            have.tobytes() != np.ascontiguousarray(want).tobytes():
                        diff = _max_diff(have, want)
                        raise FailedPrecondition(
                            f"--max-batch: {label}: output {name!r} of reference sample {i} as item {pos} of a "
                            f"batch of {size} differs from batch 1 (max difference {diff}); nodes comparing "
                            "digests of the same artifact would disagree, so this package cannot be batched")
                checked += 1
    return checked


def _max_diff(a: np.ndarray, b: np.ndarray) -> str:
    try:
        return f"{float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))):.3g}"
    except (ValueError, TypeError):
        return "shape or dtype differs"

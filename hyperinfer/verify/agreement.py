"""Numeric agreement of two results (design §4).

Two results agree when their canonical digests are equal, or else when every
output the manifest names matches:

- same shape and dtype;
- integer and bool outputs exactly;
- float outputs elementwise ``|a - b| <= atol + rtol * |ref|`` with the output's
  calibrated tolerance; NaN only where both are NaN, ±inf only where both hold
  the same infinity.

``agree(a, b)`` compares two node results and is symmetric: ``ref`` is
``max(|a|, |b|)`` elementwise, so the order of the two nodes never matters.
``within_tolerance(candidate, reference)`` is the referee comparison, where
``ref`` is the reference (ONNX Runtime) value, exactly as the tolerance was
calibrated at compile time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from hyperinfer import dtypes
from hyperinfer.package import OutputSpec
from hyperinfer.verify.digest import tensors_digest


@dataclass(frozen=True)
class OutputComparison:
    name: str
    ok: bool
    reason: str = ""
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    # max over elements of |a-b| / (atol + rtol*|ref|): <= 1 means within tolerance;
    # how far outside tolerance a result is, comparable across outputs
    tolerance_ratio: float = 0.0


@dataclass(frozen=True)
class AgreementResult:
    agree: bool
    exact: bool  # canonical digests are equal
    failing_output: str | None = None  # first output (manifest order) that does not match
    reason: str = ""
    max_abs_error: float = 0.0  # of the failing output, or the worst over all outputs if they agree
    max_rel_error: float = 0.0
    tolerance_ratio: float = 0.0  # worst over all outputs
    outputs: tuple[OutputComparison, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return self.agree


def agree(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], outputs: Sequence[OutputSpec]) -> AgreementResult:
    """Do two node results agree (digest equal, or within each output's tolerance)?"""
    return _compare(a, b, outputs, symmetric=True)


def within_tolerance(
    candidate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], outputs: Sequence[OutputSpec]
) -> AgreementResult:
    """Is ``candidate`` within tolerance of the referee's ``reference`` outputs?"""
    return _compare(candidate, reference, outputs, symmetric=False)


def _compare(a, b, outputs: Sequence[OutputSpec], symmetric: bool) -> AgreementResult:
    names = [o.name for o in outputs]
    missing = [(n, side) for n in names for side, d in (("first", a), ("second", b)) if n not in d]
    if not missing:
        if tensors_digest(names, a) == tensors_digest(names, b):
            return AgreementResult(
                agree=True, exact=True, reason="digests are equal",
                outputs=tuple(OutputComparison(n, True) for n in names),
            )
    comparisons = []
    for spec in outputs:
        if spec.name not in a or spec.name not in b:
            side = "first" if spec.name not in a else "second"
            comparisons.append(OutputComparison(spec.name, False, f"output {spec.name!r} missing from the {side} result",
                                                math.inf, math.inf, math.inf))
            continue
        comparisons.append(_compare_output(spec, np.asarray(a[spec.name]), np.asarray(b[spec.name]), symmetric))
    worst_ratio = max((c.tolerance_ratio for c in comparisons), default=0.0)
    for c in comparisons:
        if not c.ok:
            return AgreementResult(False, False, c.name, c.reason, c.max_abs_error, c.max_rel_error,
                                   worst_ratio, tuple(comparisons))
    return AgreementResult(
        True, False, None, "every output within tolerance",
        max((c.max_abs_error for c in comparisons), default=0.0),
        max((c.max_rel_error for c in comparisons), default=0.0),
        worst_ratio, tuple(comparisons),
    )


def _compare_output(spec: OutputSpec, a: np.ndarray, b: np.ndarray, symmetric: bool) -> OutputComparison:
    name = spec.name
    if a.shape != b.shape:
        return OutputComparison(name, False, f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}",
                                math.inf, math.inf, math.inf)
    if a.dtype != b.dtype:
        return OutputComparison(name, False, f"output {name!r}: dtype {a.dtype.name} vs {b.dtype.name}",
                                math.inf, math.inf, math.inf)
    exact = not np.issubdtype(a.dtype, np.floating)
    if spec.dtype in dtypes.BY_NAME:
        exact = exact or dtypes.is_exact(spec.dtype)
    if exact:
        diff = a != b
        n = int(np.count_nonzero(diff))
        if n == 0:
            return OutputComparison(name, True)
        if a.dtype == np.bool_:
            err = 1.0
        else:
            # in Python ints: no overflow for int64/uint64 differences
            err = float(max(abs(int(x) - int(y)) for x, y in zip(a[diff].tolist(), b[diff].tolist())))
        return OutputComparison(name, False, f"output {name!r}: {n} of {a.size} elements differ "
                                f"(integer/bool outputs must match exactly)", err, math.inf, math.inf)

    # float64 so that float16 differences do not overflow or round away
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    if not np.array_equal(nan_x, nan_y):
        n = int(np.count_nonzero(nan_x != nan_y))
        return OutputComparison(name, False, f"output {name!r}: NaN in one result but not the other at {n} element(s)",
                                math.inf, math.inf, math.inf)
    inf_x, inf_y = np.isinf(x), np.isinf(y)
    bad_inf = (inf_x | inf_y) & ~(inf_x & inf_y & (x == y))
    if bad_inf.any():
        n = int(np.count_nonzero(bad_inf))
        return OutputComparison(name, False, f"output {name!r}: infinity in one result does not match at {n} element(s)",
                                math.inf, math.inf, math.inf)
    finite = ~(nan_x | inf_x)
    x, y = x[finite], y[finite]
    if x.size == 0:
        return OutputComparison(name, True)
    err = np.abs(x - y)
    ref = np.maximum(np.abs(x), np.abs(y)) if symmetric else np.abs(y)
    atol, rtol = spec.tolerance.atol, spec.tolerance.rtol
    bound = atol + rtol * ref
    max_abs = float(err.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref > 0, err / ref, np.where(err > 0, np.inf, 0.0))
        ratio = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
    max_rel = float(rel.max())
    max_ratio = float(ratio.max())
    over = err > bound
    if over.any():
        n = int(np.count_nonzero(over))
        return OutputComparison(
            name, False,
            f"output {name!r}: {n} of {a.size} elements outside tolerance (atol={atol:g}, rtol={rtol:g}); "
            f"max abs error {max_abs:.3g}, max rel error {max_rel:.3g}",
            max_abs, max_rel, max_ratio,
        )
    return OutputComparison(name, True, "", max_abs, max_rel, max_ratio)

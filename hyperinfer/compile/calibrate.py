"""Per-output tolerances from the error of every runnable artifact against ONNX Runtime.

Honest nodes running different artifacts (vendors, schedules, vector widths)
disagree in the last bits; a cheater's perturbation or a cheaper variant is far
larger. The tolerance is the worst error seen at compile time times a safety
factor, with a floor relative to the output's magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperinfer.errors import FailedPrecondition
from hyperinfer.package import OutputSpec, TensorSpec, Tolerance

SAFETY_FACTOR = 10.0
# floor relative to the output's largest magnitude: float32 error through a deep
# network reaches ~1e-6 of it on inputs unlike the calibration ones (measured:
# PP-OCR cls, 2e-6 on noise after 1.2e-7 on rendered text)
FLOOR_RELATIVE = 1e-5
RTOL = 1e-4
# an artifact this far from ONNX Runtime is broken, not imprecise
BROKEN_RELATIVE = 1e-2


@dataclass
class Calibration:
    outputs: list[OutputSpec]
    warnings: list[str]
    errors: dict[str, dict[str, float]]  # target id -> output -> max abs error


def _max_abs_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & (a64 == b64)
    d = np.abs(a64 - b64)
    d[both_nan | same_inf] = 0.0
    return float(np.max(d)) if d.size else 0.0


def degenerate_outputs(specs: list[TensorSpec], reference: list[dict[str, np.ndarray]]) -> list[str]:
    """Warnings for float outputs that are (near-)constant over all reference samples."""
    warnings = []
    for s in specs:
        if not np.issubdtype(np.dtype(s.dtype), np.floating):
            continue
        vals = np.concatenate([r[s.name].ravel().astype(np.float64) for r in reference])
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            warnings.append(f"reference output {s.name!r} has no finite values")
            continue
        spread = float(vals.max() - vals.min())
        if spread <= 1e-4 * max(1.0, float(np.abs(vals).max())):
            warnings.append(
                f"reference output {s.name!r} is near-constant (range {spread:.2g}): calibration and "
                "checks on it mean little; pass --calibration-data with realistic inputs"
            )
    return warnings


def calibrate(specs: list[TensorSpec], reference: list[dict[str, np.ndarray]],
              by_target: dict[str, list[dict[str, np.ndarray]]], safety: float = SAFETY_FACTOR) -> Calibration:
    warnings = degenerate_outputs(specs, reference)
    errors: dict[str, dict[str, float]] = {t: {} for t in by_target}
    outputs: list[OutputSpec] = []
    for s in specs:
        exact = not np.issubdtype(np.dtype(s.dtype), np.floating)
        scale = max(float(np.nanmax(np.abs(r[s.name].astype(np.float64)), initial=0.0)) for r in reference) if reference else 0.0
        worst_abs, worst_rel = 0.0, 0.0
        for tid, outs in by_target.items():
            e_abs = 0.0
            for got, ref in zip(outs, reference):
                a, b = got[s.name], ref[s.name]
                if a.shape != b.shape:
                    raise FailedPrecondition(f"artifact {tid}: output {s.name!r} has shape {a.shape}, ONNX Runtime {b.shape}")
                if exact:
                    mismatched = int(np.count_nonzero(a != b))
                    if mismatched:
                        warnings.append(f"{tid}: integer output {s.name!r} differs from ONNX Runtime in {mismatched} elements")
                    e_abs = max(e_abs, float(mismatched))
                else:
                    e_abs = max(e_abs, _max_abs_err(a, b))
            errors[tid][s.name] = e_abs
            if not exact and e_abs > BROKEN_RELATIVE * max(1.0, scale):
                raise FailedPrecondition(
                    f"artifact {tid} disagrees with ONNX Runtime on output {s.name!r}: max error {e_abs:.3g} "
                    f"(outputs up to {scale:.3g}); this is a miscompilation, not rounding"
                )
            worst_abs = max(worst_abs, e_abs)
        if exact:
            tol = Tolerance(0.0, 0.0)
        else:
            worst_rel = worst_abs / scale if scale > 0 else 0.0
            atol = max(safety * worst_abs, FLOOR_RELATIVE * max(scale, 1e-6))
            tol = Tolerance(float(atol), RTOL)
        outputs.append(OutputSpec(s.name, s.dtype, s.shape, s.source_shape, tol, float(worst_abs), float(worst_rel)))
    return Calibration(outputs, warnings, errors)

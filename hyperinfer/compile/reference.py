"""Reference inputs for calibration and self-test.

Random inputs can make calibration meaningless (random-normal input drives
PP-OCR detection's sigmoid to about 0 everywhere), so image-like inputs get a
rendered text page, normalized; a publisher can pass real data instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hyperinfer.errors import InvalidArgument, NotFound
from hyperinfer.package import TensorSpec


def is_image_like(spec: TensorSpec) -> bool:
    s = spec.shape
    return (np.issubdtype(np.dtype(spec.dtype), np.floating) and len(s) == 4 and s[1] in (1, 3)
            and s[2] >= 16 and s[3] >= 16)


def default_inputs(specs: list[TensorSpec], n: int, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """n samples; returns (samples, description of how each input was generated)."""
    from hyperinfer.imaging import render_text, to_nchw

    rng = np.random.default_rng(seed)
    how = []
    for s in specs:
        if is_image_like(s):
            how.append(f"{s.name}: rendered text images, ImageNet-normalized" + (" (+1 noise)" if n > 1 else ""))
        elif np.issubdtype(np.dtype(s.dtype), np.floating):
            how.append(f"{s.name}: standard normal")
        elif s.dtype == "bool":
            how.append(f"{s.name}: random bool")
        else:
            how.append(f"{s.name}: random integers in [0, 10)")
    samples = []
    for i in range(n):
        sample = {}
        for s in specs:
            dt = np.dtype(s.dtype)
            # the last of several samples is noise: calibration must also see inputs
            # unlike real images, or tolerances come out too tight for them
            if is_image_like(s) and not (n > 1 and i == n - 1):
                batch = []
                for b in range(s.shape[0]):
                    img, _ = render_text(s.shape[3], s.shape[2], seed=seed * 1000 + i * 10 + b)
                    x = to_nchw(img)
                    if s.shape[1] == 1:
                        x = x.mean(axis=1, keepdims=True)
                    batch.append(x)
                sample[s.name] = np.concatenate(batch).astype(dt)
            elif np.issubdtype(dt, np.floating):
                sample[s.name] = rng.standard_normal(s.shape).astype(dt)
            elif dt == np.bool_:
                sample[s.name] = rng.random(s.shape) > 0.5
            else:
                sample[s.name] = rng.integers(0, 10, size=s.shape).astype(dt)
        samples.append(sample)
    return samples, how


def load_calibration_data(path: str | Path, specs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Samples from an .npz with one array per input name: of the input's shape
    (one sample) or with a leading sample axis (N samples)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"--calibration-data {p}: no such file")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/BadZipFile for non-npz files
        raise InvalidArgument(f"--calibration-data {p}: not a .npz file ({e})") from None
    with z:
        names = list(z.files)
        per_input = {}
        for s in specs:
            if s.name not in names:
                raise InvalidArgument(
                    f"--calibration-data {p}: no array named {s.name!r} (has: {', '.join(names) or 'none'})"
                )
            arr = z[s.name]
            if tuple(arr.shape) == s.shape:
                arr = arr[None]
            elif tuple(arr.shape[1:]) != s.shape:
                if s.shape[0] == 1 and tuple(arr.shape[1:]) == s.shape[1:]:
                    arr = arr[:, None]
                else:
                    raise InvalidArgument(
                        f"--calibration-data {p}: array {s.name!r} has shape {list(arr.shape)}, "
                        f"expected {list(s.shape)} or [N, {', '.join(map(str, s.shape))}]"
                    )
            if arr.dtype != np.dtype(s.dtype):
                if np.can_cast(arr.dtype, s.dtype, casting="same_kind"):
                    arr = arr.astype(s.dtype)
                else:
                    raise InvalidArgument(
                        f"--calibration-data {p}: array {s.name!r} is {arr.dtype}, the input is {s.dtype}"
                    )
            per_input[s.name] = arr
    counts = {len(a) for a in per_input.values()}
    if len(counts) != 1:
        raise InvalidArgument(f"--calibration-data {p}: arrays have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise InvalidArgument(f"--calibration-data {p}: no samples")
    return [{k: np.ascontiguousarray(v[i]) for k, v in per_input.items()} for i in range(n)]

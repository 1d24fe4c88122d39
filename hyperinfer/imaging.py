"""Rendered text images: realistic inputs for OCR and vision models without downloads."""

from __future__ import annotations

import numpy as np

_WORDS = (
    "invoice total amount date order number customer address street city phone email "
    "payment due shipping tax subtotal quantity price item description account bank "
    "hyperinfer verified inference network model node gateway receipt signature sample"
).split()

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def render_text(width: int, height: int, seed: int = 0, lines: list[str] | None = None) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """An RGB uint8 image (H, W, 3) of dark text on a light page.

    Returns the image and the (text, box) of every line drawn, box = (x0, y0, x1, y1).
    Short images (height < 100) get one line filling the height, like a text-line crop.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    drawn = []
    if height < 100:
        size = max(8, int(height * 0.6))
        text = lines[0] if lines else " ".join(rng.choice(_WORDS, 4))
        font = _font(size)
        x, y = int(width * 0.04), (height - size) // 2
        draw.text((x, y), text, fill=tuple(int(v) for v in rng.integers(0, 60, 3)), font=font)
        drawn.append((text, draw.textbbox((x, y), text, font=font)))
    else:
        size = max(10, height // 22)
        font = _font(size)
        y = int(height * 0.06)
        i = 0
        while y + size < height * 0.94:
            text = lines[i] if lines and i < len(lines) else " ".join(rng.choice(_WORDS, int(rng.integers(2, 6))))
            if lines and i >= len(lines):
                break
            x = int(rng.integers(int(width * 0.04), int(width * 0.2)))
            draw.text((x, y), text, fill=tuple(int(v) for v in rng.integers(0, 70, 3)), font=font)
            drawn.append((text, draw.textbbox((x, y), text, font=font)))
            y += int(size * rng.uniform(1.8, 2.6))
            i += 1
    return np.asarray(img, dtype=np.uint8), drawn


def to_nchw(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 HWC RGB -> normalized float32 1xCxHxW."""
    x = image.astype(np.float32) / 255.0
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

"""Image folders for tests: scikit-learn's real handwritten digits written as image files
of mixed formats, sizes and modes (PNG grey, PNG RGBA, palette PNG, JPEG colour), plus
files that are not images or are cut short, in torchvision's ImageFolder layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CORRUPT = ("three/truncated.png", "five/not-an-image.jpg")


def digit_image(pixels: np.ndarray, i: int) -> tuple[str, bytes]:
    """One 8x8 digit (0..16) as a file: its extension and bytes; format, size and mode vary with i."""
    from PIL import Image

    grey = Image.fromarray((pixels * 15.9375).astype(np.uint8), "L")
    image = grey.resize((8 + 4 * (i % 6), 8 + 4 * (i % 6)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    kind = i % 4
    if kind == 0:
        image.save(buffer, "PNG")
    elif kind == 1:
        image.convert("RGB").save(buffer, "JPEG", quality=90)
    elif kind == 2:
        image.convert("RGBA").save(buffer, "PNG")
    else:
        image.convert("P").save(buffer, "PNG")
    return (".jpg" if kind == 1 else ".png"), buffer.getvalue()


def write_digit_folder(root: Path, per_class: int = 20, start: int = 0, corrupt: bool = True) -> list[Path]:
    """`per_class` digits of each class (from the `start`-th of each) under root/<name>/; the files written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = []
    for label, name in enumerate(NAMES):
        picked = np.flatnonzero(digits.target == label)[start : start + per_class]
        for i, index in enumerate(picked, start=start):
            ext, data = digit_image(digits.images[index], i)
            path = root / name / f"{i:04d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    if corrupt:
        truncated = root / CORRUPT[0]
        whole = digit_image(digits.images[0], 4)[1]
        truncated.write_bytes(whole[: len(whole) // 2])  # a PNG cut off in its image data
        (root / CORRUPT[1]).write_bytes(b"this is not a JPEG\n")
        written += [truncated, root / CORRUPT[1]]
    return written

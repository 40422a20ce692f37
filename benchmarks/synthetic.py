"""MNIST-format files made from scikit-learn's handwritten digits, for offline benchmarks.

Real MNIST cannot be downloaded here. scikit-learn ships 1,797 real 8x8 digits; each
synthetic sample is one of them upscaled to 20x20 (MNIST centres its digits in a
20x20 box), shifted by up to 3 pixels inside the 28x28 frame, with random contrast
and a little noise, so that 60,000 training images are not 60,000 copies of 1,797.
Test images are drawn from digits the training images never used, so test accuracy
measures generalisation. The files are the raw IDX files torchvision's MNIST reads.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def has_mnist(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / name).exists() for name in FILES)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An array in the IDX format MNIST ships in: unsigned bytes, big-endian dimensions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _upscale(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) in 0..16 -> (N, 20, 20) in 0..1, bilinear."""
    from scipy.ndimage import zoom

    return np.clip(zoom(images / 16.0, (1, 2.5, 2.5), order=1), 0, 1)


def _jitter(sources: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images, each a random source digit shifted, re-contrasted and noised. Returns (images, source index)."""
    pick = rng.integers(0, len(sources), n)
    out = np.zeros((n, 28, 28), dtype=np.float32)
    dy, dx = rng.integers(-3, 4, n), rng.integers(-3, 4, n)
    for shift_y in range(-3, 4):
        for shift_x in range(-3, 4):
            sel = np.flatnonzero((dy == shift_y) & (dx == shift_x))
            top, left = 4 + shift_y, 4 + shift_x
            out[sel, top : top + 20, left : left + 20] = sources[pick[sel]]
    out *= rng.uniform(0.7, 1.0, (n, 1, 1)).astype(np.float32)
    out += rng.normal(0, 0.05, out.shape).astype(np.float32)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8), pick


def write_synthetic_mnist(root: Path, n_train: int = 60_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write MNIST's four raw files under root/MNIST/raw; returns root."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    sources, labels = _upscale(digits.images), digits.target
    held_out = len(labels) // 5  # the last fifth of the digits only ever appears in the test set
    rng = np.random.default_rng(seed)
    train_x, train_pick = _jitter(sources[:-held_out], n_train, rng)
    test_x, test_pick = _jitter(sources[-held_out:], n_test, rng)
    raw = root / "MNIST" / "raw"
    write_idx(raw / FILES[0], train_x)
    write_idx(raw / FILES[1], labels[:-held_out][train_pick])
    write_idx(raw / FILES[2], test_x)
    write_idx(raw / FILES[3], labels[-held_out:][test_pick])
    return root

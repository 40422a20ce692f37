"""Data augmentation on the training device: random horizontal flips, random crops with
padding and small translations of a uint8 image batch, vectorised (no per-sample Python).

The draws are a function of (seed, step) for the whole global batch, made on the CPU:
every process of a group draws the same ones and keeps its share's rows, a resumed run
draws what an uninterrupted one drew, and a GPU and a CPU run see the same images. So
exact resume and world-size independence hold with augmentation on.

A crop with padding and a translation are both a shift of the image with zeros coming in
at the edges: a random crop of size (H, W) from the image padded by p is a shift by up to p
pixels each way. With both listed the shifts add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a batch is augmented: the spec reads AUGMENTATIONS without it
    import torch

# The CIFAR recipe: pad by 4, crop back to 32 x 32, flip half the images (He et al. 2016,
# "Deep Residual Learning for Image Recognition", section 4.2).
CROP_PADDING = 4
# A small translation: a stroke moved by up to 2 pixels stays the same digit at 28 x 28.
TRANSLATE_PIXELS = 2
AUGMENTATIONS = ("flip", "crop", "translate")  # what [data] augment may list


def draws_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s augmentation draws (pure, 63 bits; not the seed of the
    step's dropout, so turning augmentation on does not change the masks)."""
    digest = hashlib.blake2b(f"augment/{seed}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def augment(
    x: torch.Tensor, names: Sequence[str], seed: int, step: int, offset: int = 0, total: int | None = None
) -> torch.Tensor:
    """`x` (uint8, (n, C, H, W), rows offset .. offset + n of a global batch of `total`)
    augmented as `names` says, on x's device. Returns a new tensor of x's shape and dtype."""
    import torch

    n, total = len(x), len(x) if total is None else total
    if not names or n == 0:
        return x
    generator = torch.Generator().manual_seed(draws_seed(seed, step))
    # Drawn for the whole global batch, in a fixed order, whatever `names` holds: the draws
    # of one augmentation do not depend on which others are on.
    flips = torch.rand(total, generator=generator) < 0.5
    crops = torch.randint(-CROP_PADDING, CROP_PADDING + 1, (total, 2), generator=generator)
    moves = torch.randint(-TRANSLATE_PIXELS, TRANSLATE_PIXELS + 1, (total, 2), generator=generator)
    mine = slice(offset, offset + n)
    shifts = torch.zeros(n, 2, dtype=torch.int64)
    if "crop" in names:
        shifts += crops[mine]
    if "translate" in names:
        shifts += moves[mine]
    if shifts.any():
        x = shift(x, shifts.to(x.device))
    if "flip" in names:
        x = torch.where(flips[mine].to(x.device)[:, None, None, None], x.flip(-1), x)
    return x


def shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each image of `x` ((n, C, H, W)) moved by `shifts` ((n, 2) int64: rows down, columns
    right; negative: up, left), zeros coming in at the edges. One gather for the batch."""
    import torch

    n, c, h, w = x.shape
    margin = int(shifts.abs().max())
    padded = torch.nn.functional.pad(x, (margin, margin, margin, margin))
    rows = torch.arange(h, device=x.device) + margin - shifts[:, :1]  # (n, h): output row r is input row r - dy
    cols = torch.arange(w, device=x.device) + margin - shifts[:, 1:]  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]

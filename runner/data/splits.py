"""What a data set's loader gives: uint8 splits in memory, and what only the data can say.

Its own module so that loaders (datasets.py's, imagefolder.py) and the registry share
the types without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from runner.data.fingerprint import Fingerprint


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, (N, C, H, W)
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Options:
    """What a loader of files of the user's own (dataset = "imagefolder") is told besides the
    root; the built-in data sets take none of it. See the README, "Bringing your own data"."""

    image_size: tuple[int, int] | None = None  # (H, W)
    channels: int = 3
    strict: bool = False  # refuse unreadable images instead of skipping them
    test_fraction: float = 0.2  # of a single folder (no train/ and test/ in it)
    cache: str = ""  # where remote files are copied; "" = ~/.cache/runner/data


@dataclass(frozen=True)
class Loaded:
    """What a loader gives: the splits, and what only the data itself can say."""

    train: Split
    test: Split
    val: Split | None = None  # the data's own validation split; None: drawn from train by seed
    classes: tuple[str, ...] = ()  # () : the registry entry's
    fingerprint: Fingerprint | None = None  # None: computed from the tensors
    notes: tuple[str, ...] = ()  # lines for the run's log: downloads, skipped files

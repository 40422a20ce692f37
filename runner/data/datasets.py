"""Dataset registry and loading: every dataset becomes uint8 tensors held in memory.

Images stay uint8 (N, C, H, W) until a batch is normalised on the training device,
which is four times less memory and host-to-device traffic than float32. Adding a
dataset is one entry in DATASETS; what a model trained on it is fed is its
`preprocessing` (data/preprocessing.py). torch and torchvision are imported only when data
is loaded, so validating a spec stays fast.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.data.preprocessing import Preprocessing
from runner.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, (N, C, H, W)
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)


Loader = Callable[[str, bool], tuple[Split, Split]]  # (root, download) -> (train, test)


@dataclass(frozen=True)
class DatasetInfo:
    shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    load: Loader

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.shape, self.classes, self.mean, self.std)


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: Split
    val: Split  # empty when data.val_fraction = 0
    test: Split


def _torchvision(cls_name: str, expected: str) -> Loader:
    """A loader through torchvision's own dataset class (its parser, layout and download)."""

    def load(root: str, download: bool) -> tuple[Split, Split]:
        import torch
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        # A download logs to stdout and stderr as it goes (progress bars; older torchvision
        # "Downloading ..." and "Failed to download (trying next)" lines): kept off the
        # terminal, and dropped, so that a failed one ends in the one line below.
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                parts = [cls(root, train=train, download=download) for train in (True, False)]
        except (RuntimeError, OSError) as e:  # not found, corrupt, or offline download
            how = "or check your network" if download else "or set data.download = true"
            reason = " ".join(str(e).split())  # torchvision's download errors span lines
            raise UserError(
                f"data: {cls_name} not found under {root}/{expected} ({reason}); put the raw files "
                f"there (set data.root to their parent) {how} to download them"
            ) from None
        splits = []
        for part in parts:
            x = torch.as_tensor(part.data)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            splits.append(Split(x.contiguous(), torch.as_tensor(part.targets, dtype=torch.int64)))
        return splits[0], splits[1]

    return load


def _load_digits(root: str, download: bool) -> tuple[Split, Split]:
    """scikit-learn's 1,797 real 8x8 handwritten digits, shaped like MNIST.

    Each digit is upscaled to 20x20 and padded to 28x28, as MNIST centres its digits
    in a 20x20 box. The test split is a fixed 20% (drawn with seed 0) so test accuracy
    is comparable across runs of any seed. Ships with scikit-learn: works offline.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))
    x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test])


DIGIT_CLASSES = tuple(str(d) for d in range(10))

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo((1, 28, 28), DIGIT_CLASSES, (0.1307,), (0.3081,), _torchvision("MNIST", "MNIST/raw")),
    "fashion-mnist": DatasetInfo(
        (1, 28, 28),
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"),
        (0.2860,),
        (0.3530,),
        _torchvision("FashionMNIST", "FashionMNIST/raw"),
    ),  # fmt: skip
    "cifar10": DatasetInfo(
        (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        _torchvision("CIFAR10", "cifar-10-batches-py"),
    ),  # fmt: skip
    "digits": DatasetInfo((1, 28, 28), DIGIT_CLASSES, (0.1559,), (0.2774,), _load_digits),
}


def load_dataset(name: str, root: str, download: bool, val_fraction: float, seed: int) -> Dataset:
    """Load a registered dataset and split its training set into train/val by `seed`."""
    import torch

    info = DATASETS[name]
    train, test = info.load(root, download)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(train) * val_fraction)
    if n_val >= len(train):
        raise UserError(f"data.val_fraction: {val_fraction} leaves no training samples")
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Dataset(info, Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx]), test)

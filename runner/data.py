"""Dataset registry and loading: every dataset becomes uint8 tensors held in memory.

Images stay uint8 (N, C, H, W) until a batch is normalised on the training device,
which is four times less memory and host-to-device traffic than float32. Adding a
dataset is one entry in DATASETS. torch is imported only when data is loaded, so
validating a spec stays fast; torchvision only for what needs it (CIFAR-10, downloads).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

        parts = _torchvision_parts(cls_name, expected, root, download)
        splits = []
        for part in parts:
            x = torch.as_tensor(part.data)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            splits.append(Split(x.contiguous(), torch.as_tensor(part.targets, dtype=torch.int64)))
        return splits[0], splits[1]

    return load


def _torchvision_parts(cls_name: str, expected: str, root: str, download: bool) -> list[Any]:
    """torchvision's train and test datasets, or a user error saying where the files go."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return [cls(root, train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as e:  # not found, corrupt, or offline download
        raise _not_found(cls_name, root, expected, download, str(e)) from None


def _not_found(cls_name: str, root: str, expected: str, download: bool, why: str) -> UserError:
    how = "or check your network" if download else "or set data.download = true"
    return UserError(
        f"data: {cls_name} not found under {root}/{expected} ({why}); put the raw files "
        f"there (set data.root to their parent) {how} to download them"
    )


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx(cls_name: str) -> Loader:
    """MNIST-format datasets (MNIST, Fashion-MNIST): their raw IDX files, read here.

    The files are a header and bytes; reading them without torchvision keeps its
    import (about 1.4 s: it pulls in torch._dynamo) out of every job's start, and
    so out of every resume after a preemption. torchvision only downloads them, into
    the same <root>/<cls_name>/raw/ it would read them from. Gzipped copies (as the
    mirrors serve them) are read too.
    """
    expected = f"{cls_name}/raw"

    def load(root: str, download: bool) -> tuple[Split, Split]:
        raw = os.path.join(root, cls_name, "raw")
        found = {name: _idx_path(raw, name) for pair in IDX_FILES.values() for name in pair}
        if download and None in found.values():
            _torchvision_parts(cls_name, expected, root, download=True)
            found = {name: _idx_path(raw, name) for name in found}
        if missing := [name for name, path in found.items() if path is None]:
            raise _not_found(cls_name, root, expected, download, f"no {', '.join(missing)}")
        train, test = (_idx_split(str(found[images]), str(found[labels])) for images, labels in IDX_FILES.values())
        return train, test

    return load


def _idx_path(raw: str, name: str) -> str | None:
    for path in (os.path.join(raw, name), os.path.join(raw, f"{name}.gz")):
        if os.path.isfile(path):
            return path
    return None


def _idx_split(images: str, labels: str) -> Split:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise UserError(
            f"data: {images} and {labels} do not pair up (images {tuple(x.shape)}, labels {tuple(y.shape)}); "
            "replace them with the dataset's original files"
        )
    return Split(x.unsqueeze(1), y.long())


def read_idx(path: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (the format MNIST ships in) as a uint8 tensor."""
    import gzip

    import numpy as np
    import torch

    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3] if len(data) >= 4 else 0
    shape = struct.unpack_from(f">{ndim}I", data, 4) if len(data) >= 4 + 4 * ndim else ()
    offset = 4 + 4 * ndim
    if data[:3] != b"\x00\x00\x08" or not shape or len(data) != offset + math.prod(shape):
        raise UserError(
            f"data: {path} is not an IDX file of unsigned bytes as MNIST ships them (wrong header or length); "
            "replace it with the dataset's original file"
        )
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy())


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
    "mnist": DatasetInfo((1, 28, 28), DIGIT_CLASSES, (0.1307,), (0.3081,), _idx("MNIST")),
    "fashion-mnist": DatasetInfo(
        (1, 28, 28),
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"),
        (0.2860,),
        (0.3530,),
        _idx("FashionMNIST"),
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

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
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from runner.data.preprocessing import Preprocessing
from runner.data.splits import Loaded, Options, Split
from runner.errors import UserError

if TYPE_CHECKING:
    import torch

    from runner.data.fingerprint import Fingerprint


Loader = Callable[[str, bool, int, Options], Loaded]  # (root, download, seed, options)


@dataclass(frozen=True)
class DatasetInfo:
    """A data set: its loader and what is known of it before loading. For a built-in one,
    the facts are fixed (mean and std as published); for files of the user's own they come
    from the data (`Dataset.info` has them filled in)."""

    load: Loader
    shape: tuple[int, int, int] = (0, 0, 0)  # (C, H, W); zeros: from the data
    classes: tuple[str, ...] = ()  # () : from the data (class folders)
    mean: tuple[float, ...] = ()  # per channel, on the 0..1 scale; () : from the training split
    std: tuple[float, ...] = ()
    framing: str = "fit"  # how its pictures are framed (data/pixels.FRAMINGS): predict frames a user's so

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.shape, self.classes, self.mean, self.std, self.framing)


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo  # with every fact filled in
    train: Split
    val: Split  # empty when data.val_fraction = 0
    test: Split
    fingerprint: Fingerprint
    notes: tuple[str, ...] = ()


def _torchvision(cls_name: str, expected: str) -> Loader:
    """A loader through torchvision's own dataset class (its parser, layout and download)."""

    def load(root: str, download: bool, seed: int, options: Options) -> Loaded:
        import torch
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        # A download logs to stdout and stderr as it goes (progress bars; older torchvision
        # "Downloading ..." and "Failed to download (trying next)" lines): kept off the
        # terminal, and dropped, so that a failed one ends in the one line below.
        log = io.StringIO()
        existed = _existing_dirs(root)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                parts = [cls(root, train=train, download=download) for train in (True, False)]
        except (RuntimeError, OSError) as e:  # not found, corrupt, or offline download
            _remove_empty_dirs_since(root, existed)  # a failed download leaves nothing behind
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
        return Loaded(splits[0], splits[1])

    return load


def _existing_dirs(root: str) -> set[str]:
    return {path for path, _, _ in os.walk(root)} if os.path.isdir(root) else set()


def _remove_empty_dirs_since(root: str, existed: set[str]) -> None:
    """Remove the directories under (and including) `root` made since `existed` was taken, if
    empty: torchvision makes data/MNIST/raw before its download fails."""
    if not os.path.isdir(root):
        return
    for path, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):  # deepest first
        if path not in existed:
            with contextlib.suppress(OSError):  # not empty: something was written, keep it
                os.rmdir(path)


def _load_digits(root: str, download: bool, seed: int, options: Options) -> Loaded:
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
    return Loaded(Split(x[train], y[train]), Split(x[test], y[test]))


def _load_image_folder(root: str, download: bool, seed: int, options: Options) -> Loaded:
    from runner.data.imagefolder import load

    return load(root, seed, options)


DIGIT_CLASSES = tuple(str(d) for d in range(10))

DATASETS: dict[str, DatasetInfo] = {
    # MNIST's digits are fitted into a 20x20 box centred in 28x28 ("mnist" framing); digits is made so.
    "mnist": DatasetInfo(_torchvision("MNIST", "MNIST/raw"), (1, 28, 28), DIGIT_CLASSES, (0.1307,), (0.3081,), "mnist"),
    "fashion-mnist": DatasetInfo(
        _torchvision("FashionMNIST", "FashionMNIST/raw"),
        (1, 28, 28),
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"),
        (0.2860,),
        (0.3530,),
    ),  # fmt: skip
    "cifar10": DatasetInfo(
        _torchvision("CIFAR10", "cifar-10-batches-py"),
        (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),  # fmt: skip
    "digits": DatasetInfo(_load_digits, (1, 28, 28), DIGIT_CLASSES, (0.1559,), (0.2774,), "mnist"),
    # Files of the user's own, one folder per class (data/imagefolder.py): the facts come from them.
    "imagefolder": DatasetInfo(_load_image_folder),
}

# The data sets whose files the user brings: they take [data] image_size, channels, ...
OWN_FILES = ("imagefolder",)


def load_dataset(
    name: str, root: str, download: bool, val_fraction: float, seed: int, options: Options = Options()
) -> Dataset:
    """Load a registered dataset and split its training set into train/val by `seed` (unless the
    data has its own val split). Raises UserError for data that cannot be used."""
    import torch

    from runner.data import fingerprint

    info = DATASETS[name]
    loaded = info.load(root, download, seed, options)
    train, val = loaded.train, loaded.val
    if val is None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        n_val = round(len(train) * val_fraction)
        if n_val >= len(train):
            raise UserError(f"data.val_fraction: {val_fraction} leaves no training samples")
        if n_val == 0 and val_fraction > 0:  # asked for, and every epoch's val_acc would be missing
            raise UserError(
                f"data: the validation split of {root} is empty ({len(train)} training images, data.val_fraction "
                f"{val_fraction}): add images, raise data.val_fraction, or set it to 0 to train without one"
            )
        val_idx, train_idx = order[:n_val], order[n_val:]
        train, val = Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])
    classes = info.classes or loaded.classes
    _check_every_class_trains(root, classes, train, val, loaded.test)
    mean, std = (info.mean, info.std) if info.mean else channel_stats(train.x)
    info = replace(info, shape=tuple(train.x.shape[1:]), classes=classes, mean=mean, std=std)
    print_ = loaded.fingerprint or fingerprint.of_tensors(
        torch.cat([loaded.train.x, loaded.test.x]), torch.cat([loaded.train.y, loaded.test.y]), classes
    )
    return Dataset(info, train, val, loaded.test, print_, loaded.notes)


def _check_every_class_trains(root: str, classes: tuple[str, ...], train: Split, val: Split, test: Split) -> None:
    """UserError if a class has no training sample (a small class whose images the seeded split
    put all in test or val, or whose files are all unreadable): the model would have an output
    it never learnt, and a test_acc that cannot be reached."""
    import torch

    def counts(split: Split) -> list[int]:
        return torch.bincount(split.y, minlength=len(classes)).tolist()

    missing = [i for i, n in enumerate(counts(train)) if n == 0]
    if not missing:
        return
    n_val, n_test = counts(val), counts(test)
    said = ", ".join(f"{classes[i]!r} ({n_test[i]} in test, {n_val[i]} in val)" for i in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise UserError(
        f"data: {len(missing)} class(es) of {root} have no training image after the split: {said}{more}; "
        "add images of them, or lower data.test_fraction or data.val_fraction"
    )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 pixels x (N, C, H, W), on the 0..1 scale.

    From exact integer sums (int64), so the same pixels give the same numbers to the last bit,
    whatever the order or machine: a resumed run normalises as the interrupted one did.
    """
    import torch

    c = x.shape[1]
    count = x.numel() // c if c else 0
    if not count:
        return (0.0,) * c, (1.0,) * c
    sums, squares = torch.zeros(c, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)
    for i in range(0, len(x), 4096):  # int64 copies of a slice at a time, not of the whole set
        part = x[i : i + 4096].to(torch.int64).transpose(0, 1).reshape(c, -1)
        sums += part.sum(1)
        squares += (part * part).sum(1)
    mean = [s / count / 255 for s in sums.tolist()]
    var = [max(q / count / 255**2 - m * m, 0.0) for q, m in zip(squares.tolist(), mean, strict=True)]
    # A channel of one value everywhere would divide by zero: 1 leaves it centred, unscaled.
    return tuple(mean), tuple(v**0.5 if v > 0 else 1.0 for v in var)

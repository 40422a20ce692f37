from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from runner.data import DATASETS, load_dataset
from runner.errors import UserError
from tests.helpers import write_idx, write_mnist


def test_mnist_raw_idx_files_load_as_uint8_splits(mnist_root: Path) -> None:
    data = load_dataset("mnist", str(mnist_root), download=False, val_fraction=0.1, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (540, 60, 200)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.train.y.dtype == torch.int64
    raw = (mnist_root / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:]
    expected = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28).copy())
    assert torch.equal(data.test.x, expected)  # the test split is the file, in order


def test_idx_files_read_exactly_as_torchvision_reads_them(mnist_root: Path) -> None:
    import torchvision

    train, test = DATASETS["mnist"].load(str(mnist_root), False)
    for ours, split in ((train, True), (test, False)):
        theirs = torchvision.datasets.MNIST(str(mnist_root), train=split, download=False)
        assert torch.equal(ours.x, theirs.data.unsqueeze(1)) and torch.equal(ours.y, theirs.targets)


def test_gzipped_idx_files_as_the_mirrors_serve_them(mnist_root: Path, tmp_path: Path) -> None:
    raw = mnist_root / "MNIST/raw"
    zipped = tmp_path / "zipped" / "MNIST/raw"
    zipped.mkdir(parents=True)
    for path in raw.iterdir():
        (zipped / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    plain, packed = (DATASETS["mnist"].load(str(root), False) for root in (mnist_root, tmp_path / "zipped"))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(plain, packed, strict=True))


def test_loading_mnist_leaves_torchvision_unimported(mnist_root: Path) -> None:
    # torchvision's import costs ~1.4 s of every job start and every resume; download = true
    # with the files present must not reach for it either.
    code = (
        "import sys; from runner.data import load_dataset; "
        f"load_dataset('mnist', {str(mnist_root)!r}, True, 0.1, 0); "
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-5], "is not an IDX file of unsigned bytes"),  # cut short
        (lambda b: b[:2] + b"\x0d" + b[3:], "is not an IDX file of unsigned bytes"),  # floats, not bytes
        (lambda b: b"", "is not an IDX file of unsigned bytes"),
    ],
)
def test_a_damaged_idx_file_is_named(mnist_root: Path, damage: Any, message: str) -> None:
    path = mnist_root / "MNIST/raw/train-labels-idx1-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=f"data: {path} {message}"):
        load_dataset("mnist", str(mnist_root), download=False, val_fraction=0.1, seed=0)


def test_images_and_labels_that_do_not_pair_up(mnist_root: Path) -> None:
    labels = mnist_root / "MNIST/raw/t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(7))
    with pytest.raises(UserError, match=r"do not pair up \(images \(200, 28, 28\), labels \(7,\)\)"):
        load_dataset("mnist", str(mnist_root), download=False, val_fraction=0.1, seed=0)


def test_one_missing_file_is_named(mnist_root: Path) -> None:
    (mnist_root / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="not found under .*MNIST/raw \\(no t10k-labels-idx1-ubyte\\)"):
        load_dataset("mnist", str(mnist_root), download=False, val_fraction=0.1, seed=0)


def test_fashion_mnist_uses_its_own_folder(tmp_path: Path) -> None:
    write_mnist(tmp_path, folder="FashionMNIST", n_train=50, n_test=10)
    data = load_dataset("fashion-mnist", str(tmp_path), download=False, val_fraction=0, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 0, 10)
    assert data.info.classes[-1] == "ankle-boot"


def test_the_validation_split_follows_the_seed(mnist_root: Path) -> None:
    def val_labels(seed: int) -> torch.Tensor:
        return load_dataset("mnist", str(mnist_root), False, 0.2, seed).val.y

    assert torch.equal(val_labels(1), val_labels(1))
    assert not torch.equal(val_labels(1), val_labels(2))


@pytest.mark.parametrize(("name", "where"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_files_without_download_name_both_remedies(tmp_path: Path, name: str, where: str) -> None:
    with pytest.raises(UserError, match=f"under {tmp_path}/{where}.*set data.download = true"):
        load_dataset(name, str(tmp_path), download=False, val_fraction=0.1, seed=0)


def test_digits_ship_offline_shaped_like_mnist() -> None:
    data = load_dataset("digits", "unused", download=False, val_fraction=0.1, seed=0)
    assert (len(data.train) + len(data.val), len(data.test)) == (1438, 359)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.train.x[:, :, :4].max() == 0  # MNIST-style empty border
    assert data.train.x.max() == 255
    assert set(data.test.y.tolist()) == set(range(10))
    other = load_dataset("digits", "unused", download=False, val_fraction=0.1, seed=5)
    assert torch.equal(data.test.x, other.test.x)  # a fixed test split, whatever the seed


def test_registry_shapes_match_what_loads(mnist_root: Path) -> None:
    data = load_dataset("mnist", str(mnist_root), False, 0.1, 0)
    assert tuple(data.train.x.shape[1:]) == DATASETS["mnist"].shape

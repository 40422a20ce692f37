from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runner.data.datasets import DATASETS, load_dataset
from runner.errors import UserError
from tests.helpers import write_mnist


def test_mnist_raw_idx_files_are_read_through_torchvision(mnist_root: Path) -> None:
    data = load_dataset("mnist", str(mnist_root), download=False, val_fraction=0.1, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (540, 60, 200)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.train.y.dtype == torch.int64
    raw = (mnist_root / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:]
    expected = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28).copy())
    assert torch.equal(data.test.x, expected)  # the test split is the file, in order


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

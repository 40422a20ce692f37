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


# Offline downloads: every URL torchvision would fetch points at a port where nothing
# listens (9, discard), so the attempt is refused at once, as with no network.
UNREACHABLE = "http://127.0.0.1:9/"
TORCHVISION = [
    ("mnist", "MNIST", "mirrors", [UNREACHABLE], "MNIST/raw"),
    ("fashion-mnist", "FashionMNIST", "mirrors", [UNREACHABLE], "FashionMNIST/raw"),
    ("cifar10", "CIFAR10", "url", UNREACHABLE + "cifar-10-python.tar.gz", "cifar-10-batches-py"),
]


def _offline(monkeypatch: pytest.MonkeyPatch, cls_name: str, attr: str, value: object) -> type:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    monkeypatch.setattr(cls, attr, value)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # straight to the port
        monkeypatch.delenv(proxy, raising=False)
    return cls


def _chatty(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    """cls.download logs as older torchvision's did (print, to stdout) and as a progress bar would (stderr)."""
    download = cls.download

    def logged(self) -> None:
        import sys

        print(f"Downloading {UNREACHABLE}train-images-idx3-ubyte.gz")
        print("Failed to download (trying next):\n<urlopen error [Errno 111] Connection refused>\n")
        print("  0%|          | 0/9912422 [00:00<?, ?it/s]", file=sys.stderr)
        download(self)

    monkeypatch.setattr(cls, "download", logged)


@pytest.mark.parametrize("chatty", [False, True], ids=["torchvision", "chatty-torchvision"])
@pytest.mark.parametrize(("name", "cls_name", "attr", "value", "where"), TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_a_failed_download_is_one_line_and_nothing_else(
    name: str, cls_name: str, attr: str, value: object, where: str, chatty: bool,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Mutations: without the redirect around the dataset's construction the chatty cases
    print; without flattening torchvision's message every case's error spans lines."""
    cls = _offline(monkeypatch, cls_name, attr, value)
    if chatty:
        _chatty(monkeypatch, cls)
    with pytest.raises(UserError) as raised:
        load_dataset(name, str(tmp_path), download=True, val_fraction=0.1, seed=0)
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(f"data: {cls_name} not found under {tmp_path}/{where} (")
    assert "Connection refused" in message and message.endswith("or check your network to download them")
    assert capfd.readouterr() == ("", "")  # torchvision's own log stayed off the terminal


def test_a_download_that_is_not_needed_prints_nothing(
    mnist_root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # What the download logged is dropped when it succeeds too (here: the files are there).
    _chatty(monkeypatch, _offline(monkeypatch, "MNIST", "mirrors", [UNREACHABLE]))
    data = load_dataset("mnist", str(mnist_root), download=True, val_fraction=0.1, seed=0)
    assert len(data.test) == 200
    assert capfd.readouterr() == ("", "")

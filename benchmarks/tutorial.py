"""The tutorials' own training loop, written plainly: the baseline runner is measured against.

This is the loop of the PyTorch MNIST tutorials and Colab notebooks: torchvision's
MNIST with a ToTensor transform, a shuffling DataLoader, and zero_grad / forward /
backward / step, summing `loss.item()` for the printout as they do. It reads the
same files, seeds the same way, uses the same optimizer and learning rate, and the
same thread count as the runner side. It runs in its own process (one per
measurement, so peak memory is its own) and prints one JSON line:
samples/s in the training loop, the test accuracy, and the seconds it spent.

    python benchmarks/tutorial.py --model mlp --epochs 3 --data-root DIR
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models
from torchvision.transforms import ToTensor


class MLP(nn.Module):
    """784-64-64-64-10, ReLU (MNIST-shaped input)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 64), nn.ReLU(),
            nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """pytorch/examples' MNIST net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


def resnet18(in_channels: int) -> nn.Module:
    """torchvision's resnet18, untrained; for 1-channel images its first convolution takes one."""
    model = models.resnet18(num_classes=10)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


MODELS = {"mlp": lambda channels: MLP(), "cnn": lambda channels: CNN(), "resnet18": resnet18}
DATASETS = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: str) -> float:
    """One epoch; returns the seconds it took (data loading included, as it is in the loop)."""
    model.train()
    started = time.perf_counter()
    running_loss = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # the tutorials' printout; a host sync per step on a GPU
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


@torch.no_grad()
def test_accuracy(model: nn.Module, loader: DataLoader, device: str) -> float:
    model.eval()
    correct = 0
    for images, labels in loader:
        correct += (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
    return correct / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dataset = DATASETS[args.dataset]
    train_set = dataset(args.data_root, train=True, transform=ToTensor())
    test_set = dataset(args.data_root, train=False, transform=ToTensor())
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = MODELS[args.model](train_set[0][0].shape[0]).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    seconds = [train_epoch(model, train_loader, optimizer, args.device) for _ in range(args.epochs)]
    result = {
        "samples": len(train_set) * args.epochs,
        "train_s": sum(seconds),
        "samples_per_s": len(train_set) * args.epochs / sum(seconds),
        "test_acc": test_accuracy(model, test_loader, args.device),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

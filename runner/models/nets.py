"""The networks of the seed tutorials, sized for any (C, H, W) input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from runner.models.options import CNN3Options, CNNOptions, MLPOptions


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    # A dry forward pass on zeros sizes the first linear layer for any input shape.
    # `features` holds no dropout, so this draws nothing from the RNG and the weights
    # stay identical for a given seed.
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).numel()


# Which rows of the global batch this process's batch is, while a distributed step runs:
# (offset, global batch size). Set by the training loop (`batch_share`).
_SHARE: ContextVar[tuple[int, int] | None] = ContextVar("batch_share", default=None)


@contextmanager
def batch_share(offset: int, total: int) -> Iterator[None]:
    """While a step runs on rows offset .. offset + len(x) of a global batch of `total`
    samples, `Dropout` draws its mask for the whole global batch and keeps those rows: a
    sample's mask depends on its place in the global batch, not on how many processes share
    it (every process seeds its generators alike for a step: engine.step_seed)."""
    token = _SHARE.set((offset, total))
    try:
        yield
    finally:
        _SHARE.reset(token)


class Dropout(nn.Dropout):
    """nn.Dropout, with its mask drawn three times faster on a CPU, and independent of the
    world size in a distributed run (see `batch_share`).

    On a CPU torch draws the mask with bernoulli_: one Mersenne Twister draw per element,
    in a serial loop, at about 10 ns each. After the convolutions that was the largest
    cost of the MNIST CNN's step (11% on 2 cores). Comparing uniform draws with p gives
    the same mask distribution (keep with probability 1 - p, scaled by 1 / (1 - p)) and
    draws from the same generator, so runs stay deterministic. Outside a training step
    on a GPU (CUDA's fused kernel) and in evaluation this is nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        share = _SHARE.get()
        if not self.training or not 0 < self.p < 1 or self.inplace or (x.device.type != "cpu" and share is None):
            return super().forward(x)
        offset, total = share or (0, len(x))
        # Drawn in fp32 whatever x is: bf16's coarse steps would bias the keep probability.
        draws = torch.empty((total, *x.shape[1:]), dtype=torch.float32, device=x.device).uniform_()
        keep = draws[offset : offset + len(x)].ge_(self.p)
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))


class MLP(nn.Module):
    def __init__(self, opts: MLPOptions, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_shape[0] * in_shape[1] * in_shape[2]
        for hidden in opts.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if opts.dropout:
                layers.append(Dropout(opts.dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# The tutorials apply ReLU and then max-pool; the CNNs here pool first. The two are the
# same function with the same gradients: ReLU is monotonic, so it commutes with max (the
# same element wins each window), and a window whose maximum is <= 0 passes no gradient
# either way. Pooling first runs ReLU and its backward on a quarter of the elements.
# Weights keep their names: both orders put the convolutions at the same indices.


class TutorialCNN(nn.Module):
    """pytorch/examples' MNIST net: conv32-conv64-maxpool-dropout-fc128-dropout-fc."""

    def __init__(self, opts: CNNOptions, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c1, c2 = opts.channels
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], c1, 3), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True),  # pool first: see above
        )  # fmt: skip
        self.head = nn.Sequential(
            Dropout(opts.dropout[0]), nn.Flatten(),
            nn.Linear(_flat_size(self.features, in_shape), opts.hidden), nn.ReLU(inplace=True),
            Dropout(opts.dropout[1]),
            nn.Linear(opts.hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class KerasCNN(nn.Module):
    """The TensorFlow/Keras tutorial CNN: conv-pool-conv-pool-conv, dense, dense."""

    def __init__(self, opts: CNN3Options, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c1, c2, c3 = opts.channels
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], c1, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True),  # pool first: see above
            nn.Conv2d(c1, c2, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(_flat_size(self.features, in_shape), opts.hidden), nn.ReLU(inplace=True),
            nn.Linear(opts.hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

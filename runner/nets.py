"""The networks of the seed tutorials, sized for any (C, H, W) input, and torchvision adapters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.errors import UserError
from runner.models import CNN3Options, CNNOptions, MLPOptions, torchvision_models


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    # A dry forward pass on zeros sizes the first linear layer for any input shape.
    # `features` holds no dropout, so this draws nothing from the RNG and the weights
    # stay identical for a given seed.
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).numel()


class Dropout(nn.Dropout):
    """nn.Dropout, with its mask drawn three times faster on a CPU.

    On a CPU torch draws the mask with bernoulli_: one Mersenne Twister draw per element,
    in a serial loop, at about 10 ns each. After the convolutions that was the largest
    cost of the MNIST CNN's step (11% on 2 cores). Comparing uniform draws with p gives
    the same mask distribution (keep with probability 1 - p, scaled by 1 / (1 - p)) and
    draws from the same generator, so runs stay deterministic. Elsewhere (CUDA's fused
    kernel) and in evaluation this is nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        # Drawn in fp32 whatever x is: bf16's coarse steps would bias the keep probability.
        keep = torch.empty_like(x, dtype=torch.float32).uniform_().ge_(self.p)
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


def torchvision_classifier(
    name: str, kwargs: dict[str, Any], in_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """A torchvision classifier, untrained, with its stem adapted to `in_shape[0]` channels."""
    import torchvision

    if name not in torchvision_models():  # in models.TORCHVISION_CLASSIFIERS, not in an older torchvision
        raise UserError(
            f"model: torchvision {torchvision.__version__} has no classifier '{name}'; "
            "upgrade torchvision or choose another model"
        )
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"model_options: torchvision's {name} rejects them: {e}") from None
    if in_shape[0] != 3:
        _adapt_stem(model, in_shape[0])
    # Fail now, with the reason, rather than at the first training step: some models
    # need a minimum input size (alexnet: 63x63), vision transformers an exact one.
    # Eval mode draws no randomness and leaves batch-norm statistics untouched.
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *in_shape))
    except (RuntimeError, AssertionError) as e:
        first = str(e).splitlines()[0]
        raise UserError(f"model: {name} cannot take inputs of shape {in_shape}: {first}") from None
    return model.train()


def _adapt_stem(model: nn.Module, channels: int) -> None:
    """Replace the first convolution with one taking `channels` input channels."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise UserError("model: found no Conv2d to adapt to the dataset's channels")
    parent_name, _, attr = name.rpartition(".")
    old = model.get_submodule(name)
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    setattr(model.get_submodule(parent_name), attr, new)

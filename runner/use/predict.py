"""Classifying image files with a run's model: the top classes, with probabilities.

The images become the model's input as use/images.py says (upright, transparency
flattened, framed in the input size as the training data were, inverted when the model learnt light strokes
on a dark ground), then go through the model in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from runner.use import images as images_
from runner.use.trained import Trained

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Prediction:
    image: str
    inverted: bool
    top: list[tuple[str, float]]  # (class, probability), most likely first

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "inverted": self.inverted,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


def prepare(trained: Trained, image: Image.Image, invert: str = "auto") -> tuple[torch.Tensor, bool]:
    """An image as `trained`'s input: uint8 pixels (C, H, W), and whether it was inverted.
    The one path from an image to the model, for `runner predict` and `runner serve` alike."""
    pre = trained.preprocessing
    return images_.to_pixels(image, trained.input_shape, invert, pre.light_on_dark, pre.framing)


def top_classes(classes: Sequence[str], probabilities: torch.Tensor, top: int) -> list[list[tuple[str, float]]]:
    """Each row of `probabilities` (N, classes) as its `top` most likely (class, probability)."""
    values, indices = probabilities.topk(min(top, len(classes)), dim=1)
    return [
        [(classes[i], p) for i, p in zip(idx.tolist(), vals.tolist(), strict=True)]
        for vals, idx in zip(values, indices, strict=True)
    ]


def probabilities(trained: Trained, pixels: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, classes) of pixels (N, C, H, W) on the 0..255 scale."""
    with torch.inference_mode():
        return torch.softmax(trained.model(pixels), dim=1)


def predict(trained: Trained, images: Sequence[str], top: int = 3, invert: str = "auto") -> list[Prediction]:
    """The `top` most likely classes of each image file, with their probabilities."""
    prepared = [prepare(trained, images_.read_image(url), invert) for url in images]
    tops = top_classes(trained.classes, probabilities(trained, torch.stack([p for p, _ in prepared])), top)
    return [Prediction(url, inverted, best) for url, (_, inverted), best in zip(images, prepared, tops, strict=True)]

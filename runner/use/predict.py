"""Classifying image files with a run's model: the top classes, with probabilities.

The images become the model's input as use/images.py says (upright, transparency
flattened, fitted into the input size, inverted when the model learnt light strokes
on a dark ground), then go through the model in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.use import images as images_
from runner.use.trained import Trained


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


@torch.no_grad()
def predict(trained: Trained, images: Sequence[str], top: int = 3, invert: str = "auto") -> list[Prediction]:
    """The `top` most likely classes of each image file, with their probabilities."""
    dark = trained.preprocessing.light_on_dark
    prepared = [images_.to_pixels(images_.read_image(url), trained.input_shape, invert, dark) for url in images]
    probabilities = torch.softmax(trained.model(torch.stack([pixels for pixels, _ in prepared])), dim=1)
    values, indices = probabilities.topk(min(top, len(trained.classes)), dim=1)
    return [
        Prediction(url, inverted, [(trained.classes[i], p) for i, p in zip(idx.tolist(), vals.tolist(), strict=True)])
        for url, (_, inverted), vals, idx in zip(images, prepared, values, indices, strict=True)
    ]

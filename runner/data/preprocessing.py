"""What a model is fed: the input shape, the classes, the per-channel normalisation, and how a
picture is framed in the input (as the training data were).

Both sides import this: training normalises each batch with it, and whatever uses a
trained model (eval, predict, export, a server) feeds pixels through the very same
function, to the last bit. A run records its `Preprocessing` in every checkpoint and
in its final weights' metadata, so using a model never needs the dataset's code.
No torch at import: the functions take and give tensors but need no module of torch's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner import strict_json

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Preprocessing:
    input_shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]  # class names, by label index
    mean: tuple[float, ...]  # per channel, on the 0..1 pixel scale
    std: tuple[float, ...]
    # How a picture is framed in the input's H x W, as the training data were (data/pixels.FRAMINGS):
    # "fit" the whole picture; "mnist" its ink in a centred 20/28 box. A run recorded before
    # framing was: "fit", as everything was then fed.
    framing: str = "fit"

    @property
    def light_on_dark(self) -> bool:
        """Whether the training images show light strokes on a dark ground: grey data sets
        that are mostly dark (MNIST, Fashion-MNIST, digits: mean brightness 13-29%)."""
        return len(self.mean) == 1 and self.mean[0] < 0.5

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and strings: what a checkpoint payload holds (loads with weights_only)."""
        return {
            "input_shape": list(self.input_shape),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "framing": self.framing,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """From `to_dict()`'s output, or from weights metadata (whose values are JSON strings)."""

        def value(key: str) -> Any:
            v = d[key]
            return json.loads(v) if isinstance(v, str) else v

        shape = tuple(int(n) for n in value("input_shape"))
        return cls(
            shape,  # type: ignore[arg-type]
            tuple(str(c) for c in value("classes")),
            tuple(float(m) for m in value("mean")),
            tuple(float(s) for s in value("std")),
            _text(d.get("framing", "fit")),
        )

    def to_metadata(self) -> dict[str, str]:
        """As safetensors metadata (str -> str): each value JSON."""
        return {key: strict_json.dumps(value) for key, value in self.to_dict().items()}


def _text(v: str) -> str:
    """A string as to_dict() gives it, or as metadata holds it (a JSON string: quoted)."""
    return str(json.loads(v)) if v.startswith('"') else v


def normalisation(mean: Sequence[float], std: Sequence[float], device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) for `normalise`, per channel, shaped (1, C, 1, 1) to broadcast over (N, C, H, W)."""
    import torch

    std_ = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_), torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_


def normalise(pixels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(x/255 - mean) / std for pixels (N, C, H, W) on the 0..255 scale (uint8 or float),
    given scale = 1/(255 std) and shift = mean/std: float32 out, the input untouched.

    What every model is fed, in training and after it. In place on a fresh float copy:
    on a CPU twice as fast as one addcmul.
    """
    return pixels.to(dtype=scale.dtype, copy=True).mul_(scale).sub_(shift)

"""Model registry: every model a spec may name, with the options it accepts.

Adding a model is one entry in MODELS: an options type (validated when the spec
loads, so typos fail before anything runs) and the import path of its nn.Module,
which is imported only when a model is built (torch stays out of `runner validate`).
Any torchvision classifier can be named too (e.g. `resnet18`); its options are
passed to the torchvision constructor.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

if TYPE_CHECKING:
    from torch import nn


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Dropout = Field(ge=0, lt=1)


class MLPOptions(ModelOptions):
    """784-64-64-64-10 by default; `hidden = [32]` gives the tutorials' 784-32-10."""

    hidden: list[PositiveInt] = [64, 64, 64]
    dropout: Annotated[float, Dropout] = 0.0


class CNNOptions(ModelOptions):
    """The classic PyTorch MNIST CNN: two convs, relu, maxpool, dropout, two linears."""

    channels: tuple[PositiveInt, PositiveInt] = (32, 64)
    hidden: PositiveInt = 128
    dropout: tuple[Annotated[float, Dropout], Annotated[float, Dropout]] = (0.25, 0.5)


class CNN3Options(ModelOptions):
    """The Keras/TensorFlow tutorial CNN: three 3x3 convs, then dense layers."""

    channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 64)
    hidden: PositiveInt = 64


class TorchvisionOptions(ModelOptions):
    """Keyword arguments for a torchvision.models constructor (checked when built)."""

    model_config = ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True)
class ModelEntry:
    options: type[ModelOptions]
    module: str  # "package.module:Class"; the class takes (options, in_shape, num_classes)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLPOptions, "runner.nets:MLP"),
    "cnn": ModelEntry(CNNOptions, "runner.nets:TutorialCNN"),
    "cnn3": ModelEntry(CNN3Options, "runner.nets:KerasCNN"),
}


@cache
def torchvision_models() -> tuple[str, ...]:
    """The classifiers torchvision offers (imports torchvision: call only when needed)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def known_model(name: str) -> bool:
    return name in MODELS or name in torchvision_models()


def options_type(name: str) -> type[ModelOptions]:
    entry = MODELS.get(name)
    return entry.options if entry else TorchvisionOptions


def build_model(name: str, options: dict[str, Any], in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a fresh model for inputs of shape (C, H, W); weights come from torch's RNG."""
    opts = options_type(name).model_validate(options)
    entry = MODELS.get(name)
    if entry is None:
        from runner.nets import torchvision_classifier

        return torchvision_classifier(name, dict(opts.model_extra or {}), in_shape, num_classes)
    module_name, cls_name = entry.module.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(opts, in_shape, num_classes)

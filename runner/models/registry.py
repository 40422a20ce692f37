"""Model registry: every model a spec may name, with the options it accepts.

Adding a model is one entry in MODELS: an options type (models/options.py, validated
when the spec loads, so typos fail before anything runs) and the import path of its
nn.Module, which is imported only when a model is built (torch stays out of `runner
validate`). Any torchvision classifier can be named too (e.g. `resnet18`, see
models/vision.py); its options are passed to the torchvision constructor. A name
with ':' is the user's own `module:factory` (models/user.py), its options free-form.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.models.options import (
    CNN3Options,
    CNNOptions,
    MLPOptions,
    ModelOptions,
    TorchvisionOptions,
    UserModelOptions,
)
from runner.models.user import is_user_model
from runner.models.vision import TORCHVISION_CLASSIFIERS, torchvision_models

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    options: type[ModelOptions]
    module: str  # "package.module:Class"; the class takes (options, in_shape, num_classes)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLPOptions, "runner.models.nets:MLP"),
    "cnn": ModelEntry(CNNOptions, "runner.models.nets:TutorialCNN"),
    "cnn3": ModelEntry(CNN3Options, "runner.models.nets:KerasCNN"),
}


def known_model(name: str) -> bool:
    return name in MODELS or name in TORCHVISION_CLASSIFIERS or name in torchvision_models()


def options_type(name: str) -> type[ModelOptions]:
    entry = MODELS.get(name)
    return entry.options if entry else UserModelOptions if is_user_model(name) else TorchvisionOptions


def build_model(
    name: str,
    options: dict[str, Any],
    in_shape: tuple[int, int, int],
    num_classes: int,
    code: Sequence[str] = (),
) -> nn.Module:
    """Build a fresh model for inputs of shape (C, H, W); weights come from torch's RNG.
    `code`: the files and packages of a user model (absolute paths; models/user.py).

    Raises UserError for options or an input shape the model cannot take, and for user
    code that cannot be imported or does not build a model.
    """
    if is_user_model(name):
        from runner.models.user import build_user_model

        return build_user_model(name, options, in_shape, num_classes, code)
    opts = options_type(name).model_validate(options)
    entry = MODELS.get(name)
    if entry is None:
        from runner.models.vision import torchvision_classifier

        return torchvision_classifier(name, dict(opts.model_extra or {}), in_shape, num_classes)
    module_name, cls_name = entry.module.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(opts, in_shape, num_classes)

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


# torchvision's classifiers as of 0.29 (`list_models(module=torchvision.models)`), so that
# validating a spec that names one does not import torch: `runner validate` took 4.4 s for
# resnet18, now 0.3 s. A name not listed is looked up in the installed torchvision: a newer
# model still works, only slower to check.
_TORCHVISION_NAMES = """
    alexnet convnext_base convnext_large convnext_small convnext_tiny densenet121 densenet161
    densenet169 densenet201 efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3
    efficientnet_b4 efficientnet_b5 efficientnet_b6 efficientnet_b7 efficientnet_v2_l
    efficientnet_v2_m efficientnet_v2_s googlenet inception_v3 maxvit_t mnasnet0_5 mnasnet0_75
    mnasnet1_0 mnasnet1_3 mobilenet_v2 mobilenet_v3_large mobilenet_v3_small regnet_x_16gf
    regnet_x_1_6gf regnet_x_32gf regnet_x_3_2gf regnet_x_400mf regnet_x_800mf regnet_x_8gf
    regnet_y_128gf regnet_y_16gf regnet_y_1_6gf regnet_y_32gf regnet_y_3_2gf regnet_y_400mf
    regnet_y_800mf regnet_y_8gf resnet101 resnet152 resnet18 resnet34 resnet50 resnext101_32x8d
    resnext101_64x4d resnext50_32x4d shufflenet_v2_x0_5 shufflenet_v2_x1_0 shufflenet_v2_x1_5
    shufflenet_v2_x2_0 squeezenet1_0 squeezenet1_1 swin_b swin_s swin_t swin_v2_b swin_v2_s
    swin_v2_t vgg11 vgg11_bn vgg13 vgg13_bn vgg16 vgg16_bn vgg19 vgg19_bn vit_b_16 vit_b_32 vit_h_14
    vit_l_16 vit_l_32 wide_resnet101_2 wide_resnet50_2
"""
TORCHVISION_CLASSIFIERS = frozenset(_TORCHVISION_NAMES.split())


@cache
def torchvision_models() -> tuple[str, ...]:
    """The classifiers torchvision offers (imports torchvision: call only when needed)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def known_model(name: str) -> bool:
    return name in MODELS or name in TORCHVISION_CLASSIFIERS or name in torchvision_models()


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

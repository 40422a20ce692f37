"""The options each built-in model accepts: validated when the spec loads, so a typo
fails before anything runs. Pydantic only: no torch at import."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


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


class UserModelOptions(ModelOptions):
    """A user model's `model_options`: any table, passed to its factory as keyword arguments
    (checked by the factory when it is called)."""

    model_config = ConfigDict(extra="allow", frozen=True)

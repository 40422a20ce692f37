from __future__ import annotations

import pytest
import torch

from runner.errors import UserError
from runner.models.registry import build_model
from runner.models.vision import TORCHVISION_CLASSIFIERS, torchvision_models


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ([64, 64, 64], (784 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 10 + 10)),  # 784-64-64-64-10
        ([32], (784 * 32 + 32) + (32 * 10 + 10)),  # 784-32-10
    ],
)
def test_mlp_variants_of_the_tutorials(hidden: list[int], expected: int) -> None:
    model = build_model("mlp", {"hidden": hidden}, (1, 28, 28), 10)
    assert n_params(model) == expected
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn3", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_kind_of_model_fits_every_dataset_shape(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, {}, shape, 7)
    assert model(torch.zeros(4, *shape)).shape == (4, 7)


def test_classic_cnn_has_the_tutorial_layers() -> None:
    model = build_model("cnn", {}, (1, 28, 28), 10)
    kinds = [type(m).__name__ for m in model.modules()]
    for layer in ("Conv2d", "ReLU", "MaxPool2d", "Dropout", "Linear"):
        assert layer in kinds
    assert model.head[2].in_features == 12 * 12 * 64  # 28 -> 26 -> 24 -> pooled 12


def test_keras_cnn_has_three_convolutions() -> None:
    model = build_model("cnn3", {}, (1, 28, 28), 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 3


def test_torchvision_stem_takes_the_datasets_channels() -> None:
    model = build_model("resnet18", {}, (1, 28, 28), 10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10


def test_same_seed_same_initial_weights() -> None:
    def weights() -> list[torch.Tensor]:
        torch.manual_seed(3)
        return list(build_model("cnn", {}, (1, 28, 28), 10).state_dict().values())

    assert all(torch.equal(a, b) for a, b in zip(weights(), weights(), strict=True))


def test_runners_list_of_torchvision_classifiers_names_only_real_ones() -> None:
    # The list lets a spec naming one be validated without importing torch.
    assert TORCHVISION_CLASSIFIERS <= set(torchvision_models())


def test_a_classifier_this_torchvision_lacks_fails_in_one_line() -> None:
    with pytest.raises(UserError, match=r"^model: torchvision \S+ has no classifier 'resnet2000'; upgrade"):
        build_model("resnet2000", {}, (1, 28, 28), 10)

"""Any torchvision classifier as a model: its name checked without torch, the model
built untrained with its stem adapted to the data's channels."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from torch import nn

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


def torchvision_classifier(
    name: str, kwargs: dict[str, Any], in_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """A torchvision classifier, untrained, with its stem adapted to `in_shape[0]` channels."""
    import torch
    import torchvision

    if name not in torchvision_models():  # in TORCHVISION_CLASSIFIERS, not in an older torchvision
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
    from torch import nn

    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise UserError("model: found no Conv2d to adapt to the dataset's channels")
    parent_name, _, attr = name.rpartition(".")
    old = model.get_submodule(name)
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    setattr(model.get_submodule(parent_name), attr, new)

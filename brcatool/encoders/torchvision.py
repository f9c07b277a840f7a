"""torchvision classifiers as encoders: the registered specs, head stripping, any other by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brcatool.encoders.spec import EncoderSpec
from brcatool.errors import InputError

if TYPE_CHECKING:
    from torch import nn


def strip_head(net: nn.Module) -> nn.Module:
    """Replace the final Linear of a torchvision classifier by Identity (pooled features out)."""
    from torch import nn

    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net
        if isinstance(head, nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linear:
                head[linear[-1]] = nn.Identity()
                return net
    raise InputError(f"cannot find a Linear classification head on {type(net).__name__}",
                     fix="pick one of the registered encoders (`brcatool embed --help`)")


def resnet_trunk(net: nn.Module) -> nn.Module:
    """ResNet through layer3 + global average pooling: the usual 1024-d pathology baseline."""
    from torch import nn

    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


SPECS: list[EncoderSpec] = [
    EncoderSpec("resnet50", "resnet50", 2048, weights_enum="IMAGENET1K_V1"),
    EncoderSpec("resnet50-trunc", "resnet50", 1024, weights_enum="IMAGENET1K_V1", extract=resnet_trunk),
    *(EncoderSpec(name, name, dim) for name, dim in (
        ("resnet18", 512), ("resnet34", 512), ("efficientnet_b0", 1280), ("mobilenet_v3_large", 1280))),
]


def lookup(name: str) -> EncoderSpec | None:
    """Any torchvision classification model with a Linear head, by its torchvision name."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models) and not name.startswith(
            ("inception", "googlenet", "squeezenet", "maxvit")):
        from torch import nn

        net = torchvision.models.get_model(name, weights=None)
        linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if linear:  # the head strip_head removes; its input is the feature
            return EncoderSpec(name, name, int(linear[-1].in_features),
                               fixed_input=getattr(net, "image_size", None))
    return None

"""The encoder registry: name -> EncoderSpec, one entry per encoder; lookup of unregistered names."""

from __future__ import annotations

from brcatool.encoders import foundation
from brcatool.encoders import torchvision as tv
from brcatool.encoders.spec import EncoderSpec
from brcatool.errors import InputError

REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> EncoderSpec:
    REGISTRY[spec.name] = spec
    return spec


for _spec in (*tv.SPECS, *foundation.SPECS):
    register(_spec)


def get_encoder(name: str) -> EncoderSpec:
    """The registered spec, ``timm:<model-name>``, or any torchvision classifier with a Linear head."""
    if name in REGISTRY:
        return REGISTRY[name]
    spec = foundation.lookup(name) or tv.lookup(name)
    if spec is not None:
        return spec
    raise InputError(f"unknown encoder {name!r}",
                     fix=f"use one of: {', '.join(REGISTRY)}, timm:<model-name> (any timm model), "
                     "or another torchvision classification model name, e.g. resnet101")

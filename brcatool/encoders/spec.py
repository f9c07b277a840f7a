"""What an encoder is: how to build it, what it expects and what it returns (one frozen record)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and what it expects and returns."""

    name: str
    arch: str  # torchvision model name whose weights it loads
    dim: int
    fixed_input: int | None = None  # models that only accept one size (ViT)
    weights_enum: str = "DEFAULT"  # member of torchvision's weights enum for `imagenet`
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extract: Callable[[Any], Any] | None = None  # full classifier -> feature extractor

"""What an encoder is: how to build it, what it expects and what it returns (one frozen record)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and what it expects and returns.

    ``family`` says who builds the network: ``torchvision`` (``arch`` is a torchvision model name,
    the classification head is stripped), ``timm`` (``timm.create_model(arch, **timm_kwargs)``) or
    ``custom`` (``make(spec)`` returns any module mapping (B, 3, H, W) to (B, dim)).
    Input: patches are resized (short side to ``resize``, ``interpolation``) and/or centre-cropped
    to ``crop`` as the model card says; torchvision models resize to the patch size or
    ``--input-size`` (``fixed_input`` for models that accept one size only).
    """

    name: str
    arch: str  # torchvision or timm model name
    dim: int
    fixed_input: int | None = None  # models that only accept one size (ViT)
    weights_enum: str = "DEFAULT"  # member of torchvision's weights enum for `imagenet`
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extract: Callable[[Any], Any] | None = None  # built network -> feature extractor
    family: str = "torchvision"  # torchvision | timm | custom
    make: Callable[[EncoderSpec], Any] | None = None  # custom family: spec -> network
    timm_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    resize: int | None = None  # timm family: short side resized to this first (None: no resize)
    crop: int | None = None  # timm family: then centre-cropped to this (None: no crop)
    interpolation: str = "bilinear"  # bilinear | bicubic (antialiased)
    output: str = "pooled"  # what the features are: pooled | cls+mean-patch (see foundation.py)
    hf_repo: str | None = None  # Hugging Face repository of the published weights
    hf_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")  # tried in order
    batch_size: tuple[int, int] | None = None  # default (CUDA, CPU) batch; None: 256 / 32
    big: bool = False  # hundreds of millions of parameters: estimate CPU time before starting
    card: str = ""  # model card URL
    access: str = ""  # licence / access note for the README table

"""Encoders for the embed stage: registry, torchvision and timm/foundation models, weights
(TORCH_HOME, Hugging Face cache, local files), input preprocessing and stain/augment transforms.

Add one with ``register(EncoderSpec(...))``; ``get_encoder(name)`` also finds ``timm:<model>``
and any torchvision classifier by name.
"""

from brcatool.encoders.registry import REGISTRY, get_encoder, register
from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.weights import Weights, build_encoder, resolve_weights

__all__ = ["REGISTRY", "EncoderSpec", "Weights", "build_encoder", "get_encoder", "register",
           "resolve_weights"]

"""Encoders for the embed stage: registry, torchvision models, weights, stain/augment transforms.

Add one with ``register(EncoderSpec(...))``; ``get_encoder(name)`` finds registered and
unregistered (any torchvision classifier) names.
"""

from brcatool.encoders.registry import REGISTRY, get_encoder, register
from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.weights import Weights, build_encoder, resolve_weights

__all__ = ["REGISTRY", "EncoderSpec", "Weights", "build_encoder", "get_encoder", "register",
           "resolve_weights"]

"""Models: aggregators (mean, abmil) and fusions (gene, image, concat, late, xattn), by registry."""

from brcatool.models.aggregators import AGGREGATORS
from brcatool.models.fusion import FUSIONS, ModelConfig, build_model
from brcatool.models.registry import Registry

__all__ = ["AGGREGATORS", "FUSIONS", "ModelConfig", "Registry", "build_model"]

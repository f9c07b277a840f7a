"""From stored patches to the encoder's input: resize and/or centre crop as its model card says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brcatool.encoders.spec import EncoderSpec
from brcatool.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InputPlan:
    """Resize (square, to ``resize`` px; None: none) then centre-crop (to ``crop``; None: none)."""

    resize: int | None
    crop: int | None
    interpolation: str
    size: int  # what the encoder sees

    def describe(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation}


def plan_input(spec: EncoderSpec, patch_size: int, requested: int | None) -> InputPlan:
    """The input recipe for ``spec`` on square patches of ``patch_size`` px.

    torchvision encoders resize to ``requested`` (``--input-size``) or keep the patch size
    (``fixed_input`` wins for models that accept one size); timm/foundation encoders follow their
    card (``spec.resize``/``spec.crop``), growing patches smaller than the crop first.
    """
    if spec.family == "torchvision":
        size = spec.fixed_input or requested or patch_size
        return InputPlan(size, None, "bilinear", size)
    if requested is not None and requested != spec.fixed_input:
        raise InputError(f"{spec.name} takes {spec.fixed_input} px inputs (its model card), not "
                         f"--input-size {requested}", fix="drop --input-size for this encoder")
    resize, crop = spec.resize, spec.crop
    if crop and (resize or patch_size) < crop:
        resize = crop
    return InputPlan(resize, crop, spec.interpolation, crop or resize or patch_size)


def fit_input(x: torch.Tensor, plan: InputPlan) -> torch.Tensor:
    """Apply ``plan`` to a [0, 1] float batch (B, 3, H, W) (antialiased, clamped like uint8 images)."""
    import torch.nn.functional as F

    if plan.resize and x.shape[-1] != plan.resize:
        x = F.interpolate(x, size=(plan.resize, plan.resize), mode=plan.interpolation, antialias=True,
                          align_corners=False)
        if plan.interpolation == "bicubic":  # bicubic overshoots; PIL on uint8 clamps
            x = x.clamp_(0, 1)
    if plan.crop and x.shape[-1] > plan.crop:
        top = int(round((x.shape[-2] - plan.crop) / 2.0))  # torchvision CenterCrop's rounding
        left = int(round((x.shape[-1] - plan.crop) / 2.0))
        x = x[..., top:top + plan.crop, left:left + plan.crop]
    return x


class Preprocess:
    """[0, 1] patches (B, 3, H, W) on ``device`` -> the encoder's input: ``plan``, then its
    normalisation (mean/std), channels_last. One object per run; the stage loop calls it per view."""

    def __init__(self, spec: EncoderSpec, plan: InputPlan, device: str):
        import torch

        self.plan = plan
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        x = fit_input(x, self.plan)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

"""Pathology foundation models built with timm, and ``timm:<model-name>`` for any timm model.

Every fact below (timm architecture and arguments, input size, resize/crop, normalisation, which
tokens make the feature) is copied from the model's Hugging Face card, or from the timm
``config.json`` the card loads through ``hf-hub:``; the comment above each entry names the source.
TRIDENT (mahmoodlab/TRIDENT, ``trident/patch_encoder_models/load.py``) builds the same
architectures from local checkpoints with the same arguments. The networks are only built when
``embed`` runs (timm is imported then), so listing the registry stays cheap.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING, Any

from brcatool.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from brcatool.errors import InputError

if TYPE_CHECKING:
    from torch import nn

#: Layer names timm needs as classes; kept as strings so the registry imports without timm.
_LAYERS = {"swiglu_packed": ("timm.layers", "SwiGLUPacked")}
BIG_BATCH = (128, 4)  # (CUDA, CPU) default batch for ViT-H/-g sized encoders


def _layer(value: Any) -> Any:
    if isinstance(value, str) and value in _LAYERS:
        import importlib

        module, attr = _LAYERS[value]
        return getattr(importlib.import_module(module), attr)
    return value


def timm_module() -> Any:
    """timm, or a one-line error naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise InputError("foundation encoders need timm, which is not installed",
                         fix="pip install 'brcatool[foundation]'") from None
    return timm


def create(spec: EncoderSpec) -> nn.Module:
    """The timm network of ``spec`` with its published arguments and no classifier (random init)."""
    timm = timm_module()
    kwargs = {k: _layer(v) for k, v in spec.timm_kwargs.items()}
    return timm.create_model(spec.arch, pretrained=False, **{"num_classes": 0, **kwargs})


@cache
def _cls_mean_patch_class() -> type:
    from torch import nn

    class ClsMeanPatch(nn.Module):
        """Class token concatenated with the mean of the patch tokens, prefix (class + register)
        tokens excluded: Virchow/Virchow2's embedding. ``model`` returns all tokens (global_pool="")."""

        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model
            self.skip = int(model.num_prefix_tokens)

        def forward(self, x):
            import torch

            tokens = self.model(x)
            return torch.cat([tokens[:, 0], tokens[:, self.skip:].mean(1)], dim=-1)

    return ClsMeanPatch


def cls_mean_patch(net: nn.Module) -> nn.Module:
    return _cls_mean_patch_class()(net)


def _vit(name: str, arch: str, dim: int, **kw: Any) -> EncoderSpec:
    return EncoderSpec(name, arch, dim, fixed_input=224, family="timm", big=True, **kw)


SPECS: list[EncoderSpec] = [
    # UNI (ViT-L/16, 1024-d). https://huggingface.co/MahmoodLab/UNI model card:
    # timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
    # num_classes=0, dynamic_img_size=True); load pytorch_model.bin strict; transforms Resize(224),
    # ToTensor, Normalize(ImageNet mean/std); the feature is the model output (class token).
    _vit("uni", "vit_large_patch16_224", 1024,
         timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
         resize=224, interpolation="bilinear", hf_repo="MahmoodLab/UNI", hf_files=("pytorch_model.bin",),
         batch_size=(256, 8), card="https://huggingface.co/MahmoodLab/UNI",
         access="CC-BY-NC-ND 4.0, gated: request access on the model page"),
    # UNI2-h (ViT-H/14 with SwiGLU and 8 register tokens, 1536-d). https://huggingface.co/MahmoodLab/UNI2-h
    # model card: timm.create_model("vit_giant_patch14_224", pretrained=False, img_size=224,
    # patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667*2,
    # num_classes=0, no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
    # reg_tokens=8, dynamic_img_size=True); pytorch_model.bin; Resize(224), ImageNet mean/std;
    # the feature is the model output (class token).
    _vit("uni2-h", "vit_giant_patch14_224", 1536,
         timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                      "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
                      "mlp_layer": "swiglu_packed", "act_layer": "silu", "reg_tokens": 8,
                      "dynamic_img_size": True},
         resize=224, interpolation="bilinear", hf_repo="MahmoodLab/UNI2-h", hf_files=("pytorch_model.bin",),
         batch_size=BIG_BATCH, card="https://huggingface.co/MahmoodLab/UNI2-h",
         access="CC-BY-NC-ND 4.0, gated: request access on the model page"),
    # Virchow2 (ViT-H/14, 4 register tokens, 2560-d). https://huggingface.co/paige-ai/Virchow2 model
    # card: timm.create_model("hf-hub:paige-ai/Virchow2", pretrained=True,
    # mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU); its config.json: architecture
    # vit_huge_patch14_224, img_size 224, init_values 1e-5, num_classes 0, reg_tokens 4,
    # mlp_ratio 5.3375, global_pool "", dynamic_img_size true; pretrained_cfg: ImageNet mean/std,
    # bicubic, crop_pct 1.0 (timm's eval transform: Resize(224, bicubic) + CenterCrop(224)).
    # Output 1 x 261 x 1280: class_token = output[:, 0]; patch_tokens = output[:, 5:] (tokens 1-4 are
    # registers); embedding = cat([class_token, patch_tokens.mean(1)]) -> 2560.
    _vit("virchow2", "vit_huge_patch14_224", 2560,
         timm_kwargs={"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375,
                      "global_pool": "", "dynamic_img_size": True, "mlp_layer": "swiglu_packed",
                      "act_layer": "silu"},
         resize=224, crop=224, interpolation="bicubic", extract=cls_mean_patch, output="cls+mean-patch",
         hf_repo="paige-ai/Virchow2", batch_size=BIG_BATCH, card="https://huggingface.co/paige-ai/Virchow2",
         access="CC-BY-NC-ND 4.0, gated: request access on the model page"),
    # H-optimus-0 (ViT-g/14, 4 register tokens, 1536-d). https://huggingface.co/bioptimus/H-optimus-0
    # model card: timm.create_model("hf-hub:bioptimus/H-optimus-0", pretrained=True,
    # init_values=1e-5, dynamic_img_size=False); "expects images of size 224x224 that were extracted
    # at 0.5 microns per pixel"; transforms ToTensor + Normalize(mean=(0.707223, 0.578729, 0.703617),
    # std=(0.211883, 0.230117, 0.177517)) (no resize). config.json: architecture
    # vit_giant_patch14_reg4_dinov2, num_classes 0, global_pool "token", input_size 224.
    # 256-px patches are centre-cropped to 224 (no resize keeps the card's 0.5 um/px).
    _vit("h-optimus-0", "vit_giant_patch14_reg4_dinov2", 1536,
         timm_kwargs={"img_size": 224, "global_pool": "token", "init_values": 1e-5,
                      "dynamic_img_size": False},
         crop=224, mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
         hf_repo="bioptimus/H-optimus-0", hf_files=("pytorch_model.bin",), batch_size=BIG_BATCH,
         card="https://huggingface.co/bioptimus/H-optimus-0",
         access="Apache-2.0, gated: accept the conditions on the model page"),
    # Prov-GigaPath tile encoder (ViT-g, 1536-d). https://huggingface.co/prov-gigapath/prov-gigapath
    # model card: timm.create_model("hf_hub:prov-gigapath/prov-gigapath", pretrained=True); transforms
    # Resize(256, BICUBIC), CenterCrop(224), ToTensor, Normalize(ImageNet mean/std). Its config.json:
    # architecture vit_giant_patch14_dinov2 with img_size 224, in_chans 3, patch_size 16 (sic: the
    # "ViT-g/14" is 16x16 patches here), embed_dim 1536, depth 40, num_heads 24, init_values 1e-5,
    # mlp_ratio 5.33334, num_classes 0 (SwiGLU from timm's dinov2 giant definition).
    _vit("prov-gigapath", "vit_giant_patch14_dinov2", 1536,
         timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                      "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334},
         resize=256, crop=224, interpolation="bicubic", hf_repo="prov-gigapath/prov-gigapath",
         hf_files=("pytorch_model.bin",), batch_size=BIG_BATCH,
         card="https://huggingface.co/prov-gigapath/prov-gigapath",
         access="Apache-2.0 (research use), gated: accept the conditions on the model page"),
]

PREFIX = "timm:"


def lookup(name: str) -> EncoderSpec | None:
    """``timm:<model-name>[.<tag>]``: any timm model, input recipe from its pretrained config."""
    if not name.startswith(PREFIX):
        return None
    arch = name[len(PREFIX):]
    timm = timm_module()
    if not timm.is_model(arch.split(".")[0]):
        close = ", ".join(timm.list_models(f"*{arch.split('.')[0][:12]}*")[:5]) or "vit_small_patch16_224"
        raise InputError(f"timm has no model {arch!r}",
                         fix=f"pick a name from timm.list_models(), e.g. {close}")
    import torch

    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = dict(net.pretrained_cfg)
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    try:  # the pooled output's size; some layers have no meta kernel: then timm's own count
        dim = int(net(torch.empty(1, 3, size, size, device="meta")).shape[-1])
    except (RuntimeError, NotImplementedError):
        dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    big = sum(p.numel() for p in net.parameters()) > 100e6
    # timm's eval transform: Resize(floor(size / crop_pct), interpolation) then CenterCrop(size)
    return EncoderSpec(
        name, arch, dim, fixed_input=size, family="timm", resize=math.floor(size / cfg.get("crop_pct", 1.0)),
        crop=size, interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
        hf_repo=cfg.get("hf_hub_id"), batch_size=BIG_BATCH if big else None, big=big,
        card=f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else "")

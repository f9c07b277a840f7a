"""Synthetic checkpoints: the key/shape layout a published ViT checkpoint has, written from the
model card's numbers (not from timm), and a Hugging Face cache folder laid out as the hub lays it
out, so weights loading is tested offline without downloading anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from brcatool.outputs import file_digest


def vit_layout(*, dim: int, depth: int, patch: int, img: int = 224, reg_tokens: int = 0,
               no_embed_class: bool = False, mlp_hidden: int, swiglu: bool = False,
               layer_scale: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a timm VisionTransformer checkpoint (class token, qkv bias, final norm,
    no classifier). ``mlp_hidden`` is the MLP width; SwiGLU packs gate and value into ``fc1``
    (2 x hidden rows) and ``fc2`` reads ``hidden``."""
    grid = (img // patch) ** 2
    out: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    if reg_tokens:
        out["reg_token"] = (1, reg_tokens, dim)
    out["pos_embed"] = (1, grid + (0 if no_embed_class else 1 + reg_tokens), dim)
    out["patch_embed.proj.weight"] = (dim, 3, patch, patch)
    out["patch_embed.proj.bias"] = (dim,)
    fc1 = 2 * mlp_hidden if swiglu else mlp_hidden
    for i in range(depth):
        b = f"blocks.{i}."
        out.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (fc1, dim), b + "mlp.fc1.bias": (fc1,),
            b + "mlp.fc2.weight": (dim, mlp_hidden), b + "mlp.fc2.bias": (dim,),
        })
        if layer_scale:
            out.update({b + "ls1.gamma": (dim,), b + "ls2.gamma": (dim,)})
    out.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return out


def hf_cache_file(hub_cache: str | Path, repo: str, filename: str, source: str | Path, *,
                  revision: str = "0" * 40) -> Path:
    """Put ``source`` into a Hugging Face hub cache as ``repo``'s ``filename`` and return its path.

    The layout the hub writes: ``models--ORG--NAME/blobs/<sha256>`` holds the bytes,
    ``snapshots/<revision>/<filename>`` is a relative symlink to it, ``refs/main`` names the revision.
    """
    repo_dir = Path(hub_cache) / f"models--{repo.replace('/', '--')}"
    blob = repo_dir / "blobs" / file_digest(source)
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = repo_dir / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return link

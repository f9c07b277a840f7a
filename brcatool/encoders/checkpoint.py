"""Checkpoint files: read a state_dict and check its names and shapes against a network.

Checkpoints are ``.bin``/``.pth``/``.pt`` (torch pickles, read with ``weights_only``) or
``.safetensors``; a wrapping dict (``state_dict``/``model``) and common key prefixes
(``module.`` from DataParallel, ``model.``/``backbone.``/``encoder.`` from training wrappers) are
removed. Missing, unexpected or mis-shaped keys are one error that names a few of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brcatool.encoders.spec import EncoderSpec
from brcatool.errors import InputError

if TYPE_CHECKING:
    from torch import nn

#: Keys of a classification head: torchvision's are stripped after loading, timm's never built.
HEAD_KEYS = ("fc.", "classifier.", "head.", "heads.")
PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a checkpoint file, unwrapped and with common key prefixes removed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            import torch

            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"cannot read weights ({type(exc).__name__}: {exc})", path=path,
                         fix="pass a .safetensors or a torch.save(model.state_dict(), PATH) file") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise InputError("does not hold a state_dict", path=path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    while (p := next((p for p in PREFIXES if all(k.startswith(p) for k in sd)), None)) is not None:
        sd = {k.removeprefix(p): v for k, v in sd.items()}
    return sd


def layout(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state_dict (works on meta tensors)."""
    return {k: tuple(v.shape) for k, v in tensors.items()}


def layout_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], *,
                    ignore: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Missing, unexpected and mis-shaped keys of ``found`` against ``expected`` (empty lists: a match)."""
    missing = [k for k in expected if k not in found and not k.startswith(ignore)]
    unexpected = [k for k in found if k not in expected and not k.startswith(ignore)]
    shapes = [f"{k} {list(found[k])} vs {list(expected[k])}" for k in expected
              if k in found and tuple(found[k]) != tuple(expected[k])]
    return {"missing": missing, "unexpected": unexpected, "shape": shapes}


def check_layout(net: nn.Module, sd: Mapping[str, Any], *, spec: EncoderSpec, path: Path | None) -> None:
    problems = layout_problems(layout(net.state_dict()), layout(sd), ignore=HEAD_KEYS)
    if any(problems.values()):
        detail = "; ".join(f"{kind} {len(keys)} (e.g. {', '.join(keys[:3])})"
                           for kind, keys in problems.items() if keys)
        raise InputError(f"does not match the {spec.name} architecture ({spec.arch}): {detail}",
                         path=path, fix=f"pass the checkpoint published for {spec.name}"
                         + (f" (hf:{spec.hf_repo})" if spec.hf_repo else "") + ", or pick its --encoder")

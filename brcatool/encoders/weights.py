"""Where an encoder's weights come from and their identity; loading them into the network.

Weights come from torchvision's ImageNet cache (TORCH_HOME), a local state_dict or a seeded random
init; their identity (name + sha256) goes into the feature manifest so `train` can refuse to mix
features.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.torchvision import strip_head
from brcatool.errors import InputError, OfflineError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Weights:
    """Where weights come from and their identity; ``file`` is None for a random init."""

    identity: str  # "random:<seed>" or "<name> sha256:<hex>"
    source: str  # imagenet | path | random
    file: Path | None = None
    sha256: str | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def imagenet_cache_file(spec: EncoderSpec, variant: str | None = None) -> tuple[str, str, Path]:
    """(enum name, url, file in the TORCH_HOME cache) of the encoder's ImageNet weights."""
    import torch
    import torchvision

    enum = torchvision.models.get_model_weights(spec.arch)
    member = variant or spec.weights_enum
    try:
        w = enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise InputError(f"no weights {member!r} for {spec.arch}",
                         fix=f"use one of: {', '.join(m.name for m in enum)}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url.split("?")[0])
    return f"{type(w).__name__}.{w.name}", w.url, path


def resolve_weights(spec: EncoderSpec, weights: str, *, seed: int) -> Weights:
    """Find (or download once) the weights file and fingerprint it; no model is built here."""
    if weights == "random":
        return Weights(f"random:{seed}", "random")
    if weights == "imagenet" or weights.startswith("imagenet:"):
        import torch

        name, url, path = imagenet_cache_file(spec, weights.partition(":")[2] or None)
        if not path.is_file():
            try:
                torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True,
                                                   progress=False)
            except Exception as exc:  # noqa: BLE001 - any network/IO failure means offline
                raise OfflineError(
                    f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
                    f"({type(exc).__name__})", path=path,
                    fix=f"copy {url} to that path (or set TORCH_HOME), or pass --weights PATH "
                    "to a state_dict file, or --weights random for a test run") from None
        digest = sha256_file(path)
        return Weights(f"{name} sha256:{digest}", "imagenet", path, digest)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError("weights file not found", path=path,
                         fix="pass --weights imagenet, random, or the path of a state_dict file")
    digest = sha256_file(path)
    return Weights(f"{path.name} sha256:{digest}", "path", path, digest)


def _load_state_dict(net: nn.Module, weights: Weights) -> None:
    """Load a torchvision-style state_dict; only the classification head may be missing."""
    import torch

    try:
        sd = torch.load(weights.file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read weights ({type(exc).__name__}: {exc})", path=weights.file,
                         fix="pass a file saved with torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise InputError("does not hold a state_dict", path=weights.file)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    head = ("fc.", "classifier.", "head.", "heads.")
    missing = [k for k in missing if not k.startswith(head)]
    unexpected = [k for k in unexpected if not k.startswith(head)]
    if missing or unexpected:
        raise InputError(
            f"does not match the {type(net).__name__} architecture (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})", path=weights.file,
            fix="pass the state_dict of the torchvision model named by --encoder")


def build_encoder(spec: EncoderSpec, weights: Weights, *, seed: int = 0) -> nn.Module:
    """The feature extractor in eval mode: (B, 3, H, W) float -> (B, spec.dim)."""
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.get_model(spec.arch, weights=None)
    if weights.file is not None:
        _load_state_dict(net, weights)
    net = spec.extract(net) if spec.extract else strip_head(net)
    return net.eval()

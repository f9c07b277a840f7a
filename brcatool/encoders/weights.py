"""An encoder's weights: where they come from, their identity, and the network built with them.

Weights come from torchvision's ImageNet cache (TORCH_HOME), the Hugging Face cache or Hub
(``hf:ORG/NAME``), a local state_dict file or a seeded random init; their identity
(name + sha256) goes into the feature manifest so `train` can refuse to mix features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brcatool.encoders import foundation, hub
from brcatool.encoders.checkpoint import check_layout, read_state_dict
from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.torchvision import strip_head
from brcatool.errors import InputError, OfflineError
from brcatool.outputs import file_digest as sha256_file

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Weights:
    """Where weights come from and their identity; ``file`` is None for a random init."""

    identity: str  # "random:<seed>" or "<name> sha256:<hex>"
    source: str  # imagenet | hf | path | random
    file: Path | None = None
    sha256: str | None = None


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
    if weights.startswith(hub.PREFIX):
        repo, file = hub.parse(weights)
        path, file = hub.resolve(repo, (file,) if file else spec.hf_files)
        digest = sha256_file(path)
        return Weights(f"hf:{repo}/{file} sha256:{digest}", "hf", path, digest)
    if (weights == "imagenet" or weights.startswith("imagenet:")) and spec.family != "torchvision":
        hint = f"--weights hf:{spec.hf_repo}" if spec.hf_repo else "--weights hf:ORG/NAME"
        raise InputError(f"{spec.name} has no torchvision ImageNet weights",
                         fix=f"pass {hint} (Hugging Face cache or download), --weights PATH to its "
                         "checkpoint, or --weights random for a test run")
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
                         fix="pass --weights imagenet, hf:ORG/NAME, random, or the path of a state_dict file")
    digest = sha256_file(path)
    return Weights(f"{path.name} sha256:{digest}", "path", path, digest)


def architecture(spec: EncoderSpec) -> nn.Module:
    """The bare network of ``spec`` with a random init (on the current default device)."""
    if spec.family == "timm":
        return foundation.create(spec)
    if spec.family == "custom" and spec.make is not None:
        return spec.make(spec)
    import torchvision

    return torchvision.models.get_model(spec.arch, weights=None)


def _finish(spec: EncoderSpec, net: nn.Module) -> nn.Module:
    if spec.extract is not None:
        net = spec.extract(net)
    elif spec.family == "torchvision":
        net = strip_head(net)
    return net.eval()


def _on_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in (*net.parameters(), *net.buffers()))


def build_encoder(spec: EncoderSpec, weights: Weights, *, seed: int = 0) -> nn.Module:
    """The feature extractor in eval mode: (B, 3, H, W) float -> (B, spec.dim).

    With a weights file, a timm network is built on the ``meta`` device and the checkpoint's
    tensors are assigned to it (no random init of a billion parameters first).
    """
    import torch

    sd = read_state_dict(weights.file) if weights.file is not None else None
    if sd is not None and spec.family == "timm":
        with torch.device("meta"):
            net = architecture(spec)
        check_layout(net, sd, spec=spec, path=weights.file)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                            strict=False, assign=True)
        if not _on_meta(net):
            return _finish(spec, net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = architecture(spec)
    if sd is not None:
        check_layout(net, sd, spec=spec, path=weights.file)
        net.load_state_dict(sd, strict=False)
    return _finish(spec, net)


def meta_encoder(spec: EncoderSpec) -> nn.Module:
    """``spec``'s feature extractor on the meta device: names, shapes and output size, no memory."""
    import torch

    with torch.device("meta"):
        return _finish(spec, architecture(spec))

"""How an encoder runs: default batch per model size and device, and a CPU time estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brcatool.encoders.spec import EncoderSpec

if TYPE_CHECKING:
    from torch import nn

DEFAULT_BATCH = (256, 32)  # (CUDA, CPU) for CNNs and small ViTs


def default_batch(spec: EncoderSpec | None, device: str) -> int:
    """Patches per forward pass when ``--batch-size`` is not given."""
    cuda, cpu = (spec.batch_size if spec is not None and spec.batch_size else DEFAULT_BATCH)
    return cuda if device == "cuda" else cpu


def seconds_per_image(model: nn.Module, size: int, *, batch: int = 1, autocast: object = None) -> float:
    """Measured CPU seconds per image of ``model`` at ``size`` px (best of two timed batches)."""
    import contextlib
    import time

    import torch

    x = torch.rand(batch, 3, size, size)
    best = float("inf")
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for _ in range(2):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return best / batch


def cpu_estimate(spec: EncoderSpec, patches: int, views: int, per_image: float) -> str:
    """One line: patches x views x measured seconds per image, as a duration."""
    total = patches * views * per_image
    hours, rest = divmod(int(total), 3600)
    span = f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
    return (f"{spec.name} on CPU: {patches:,} patches x {views} view(s) x {per_image:.2f} s/img "
            f"(measured) = about {span}; a CUDA GPU is 100x faster or more (--device cuda)")

"""Device and precision choice shared by the stages that run torch (embed, train)."""

from __future__ import annotations

from typing import Any

from brcatool.errors import InputError


def torch_device(name: str) -> Any:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    A CUDA device without a visible GPU, or a name torch does not know, is an input error.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}", fix="use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA GPU is visible to torch",
                         fix="use --device cpu or auto")
    return dev


def resolve_device(name: str) -> str:
    """The device type (``cpu`` or ``cuda``) for stages that run on one default device (embed)."""
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {name!r}", fix="use auto, cpu or cuda")
    return torch_device(name).type


def cpu_has_bf16() -> bool:
    """Native bf16 (AVX512-BF16 or AMX); without it bf16 autocast is slower than fp32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(name: str, device: str) -> str:
    """``auto`` -> bf16 where the GPU/CPU has it natively, fp16 on older GPUs, else fp32."""
    import torch

    if name == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise InputError(f"unknown precision {name!r}", fix="use auto, fp32, bf16 or fp16")
    return name

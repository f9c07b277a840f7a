"""Device and precision choice shared by the stages that run torch (embed, train)."""

from __future__ import annotations

from brcatool.errors import InputError


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an input error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch",
                         fix="use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}", fix="use auto, cpu or cuda")
    return name


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

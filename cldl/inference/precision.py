"""Which reduced precision a device runs natively."""

from __future__ import annotations

import functools

import torch

from ..defaults import PRECISIONS


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN detects them); False elsewhere."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for inference (None: float32).

    ``auto``: bf16 (fp16 where bf16 is missing) on CUDA, bf16 on CPUs with native bf16, float32 on other CPUs;
    ``fp32``: float32; ``bf16``: bf16 everywhere it runs (slow on CPUs without native support).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None

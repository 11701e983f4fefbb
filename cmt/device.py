"""Device choice and mixed precision, shared by training and evaluation."""

from __future__ import annotations

import contextlib

import torch


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device='cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast: about 2x the fp32 matmul rate on CPUs with AVX512-BF16 (more with AMX),
    and native on recent GPUs."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

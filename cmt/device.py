"""Device choice and mixed precision, shared by training and evaluation."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

JAX_CPU_ENV = {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
"""How SMAX's jax runs here: on the CPU (PyTorch owns any accelerator), one XLA compute
thread, so that jax does not take every core from the torch and SB3 code beside it."""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ("unknown" elsewhere): every measurement names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def jax_on_cpu() -> None:
    """Set :data:`JAX_CPU_ENV` where not set already; jax reads it once, when it starts its
    backend, so call this before SMAX is first used (before importing ``cmt.envs.smax``).
    Entry points and the SMAX benchmark call it; importing a module never does."""
    for name, value in JAX_CPU_ENV.items():
        os.environ.setdefault(name, value)


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device='cuda' but no CUDA device is available")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it, bf16
    matmuls are emulated: measured 10x slower than fp32 on an AVX2-only EPYC."""
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not supported:
        log.warning(
            "this CPU has no native bfloat16 (capability %s): bf16 settings run in fp32",
            torch.backends.cpu.get_cpu_capability(),
        )
    return supported


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast: about 2x the fp32 matmul rate on CPUs with AVX512-BF16 (more with AMX),
    and native on recent GPUs. On a CPU without native bf16 it is off (fp32), since emulated
    bf16 is far slower than fp32."""
    if not enabled or (device.type == "cpu" and not cpu_has_bf16()):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

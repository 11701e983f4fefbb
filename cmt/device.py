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


CPU_EXTENSIONS = (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"))
"""The /proc/cpuinfo flags a CPU name lists: they decide fp32 and bf16 speed here."""


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model with its family, model number and vector extensions, from the first
    processor of ``cpuinfo`` ("unknown" without one). Cloud CPUs share model names across
    generations ("AMD EPYC" was a Zen 4 on one machine and a Zen 5 on the next, 1.5x apart),
    so every measurement records all of them."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return "unknown"
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return "unknown"
    flags = set(fields.get("flags", "").split())
    extensions = [name for flag, name in CPU_EXTENSIONS if flag in flags]
    if not extensions and "avx2" in flags:
        extensions = ["AVX2"]
    numbers = (("cpu family", "family"), ("model", "model"))
    detail = [f"{label} {fields[key]}" for key, label in numbers if key in fields] + extensions
    return f"{fields['model name']} ({', '.join(detail)})" if detail else fields["model name"]


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

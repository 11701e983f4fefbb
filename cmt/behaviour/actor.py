"""The saved form of every SAC behaviour policy: a squashed-Gaussian MLP as plain arrays.

SB3's SAC (torch) and SBX's SAC and TQC (JAX) share one actor: ReLU hidden layers, a mean head
and a log-std head clipped to [-20, 2], actions ``tanh(mean + std * noise)``. Stored as
``hidden.<i>.weight`` / ``.bias``, ``mean.*`` and ``log_std.*`` with torch's (out, in) weight
layout, a policy runs in NumPy and loads without the library that trained it, so a fresh
clone rolls committed policies out without JAX or SB3 in the loop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

ActorWeights = dict[str, np.ndarray]
"""``hidden.<i>.weight`` (out, in), ``hidden.<i>.bias``, ``mean.*``, ``log_std.*``."""

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # both libraries clip the log-std to this range


def from_sb3(state: Mapping[str, torch.Tensor]) -> ActorWeights:
    """An SB3 SAC actor's ``state_dict`` (``latent_pi.<2i>``, ``mu``, ``log_std``)."""
    out: ActorWeights = {}
    for key, value in state.items():
        arr = value.detach().cpu().numpy().astype(np.float32)
        match = re.fullmatch(r"latent_pi\.(\d+)\.(weight|bias)", key)
        if match:
            out[f"hidden.{int(match[1]) // 2}.{match[2]}"] = arr
        elif key.startswith(("mu.", "log_std.")):
            out[key.replace("mu.", "mean.")] = arr
        else:
            raise ValueError(f"unexpected SB3 actor parameter {key!r}")
    return check_actor(out)


def from_sbx(params: Mapping[str, Any]) -> ActorWeights:
    """SBX's ``actor_state.params``: ``Dense_0`` .. ``Dense_{n-1}`` hidden, then the mean and
    the log-std heads (flax kernels are (in, out))."""
    layers = params["params"]
    n = len(layers) - 2
    out: ActorWeights = {}
    for i in range(n + 2):
        dense = layers[f"Dense_{i}"]
        name = f"hidden.{i}" if i < n else ("mean" if i == n else "log_std")
        out[f"{name}.weight"] = np.asarray(dense["kernel"], dtype=np.float32).T.copy()
        out[f"{name}.bias"] = np.asarray(dense["bias"], dtype=np.float32).copy()
    return check_actor(out)


def hidden_layers(weights: ActorWeights) -> int:
    return sum(1 for key in weights if key.startswith("hidden.") and key.endswith(".weight"))


def check_actor(weights: ActorWeights) -> ActorWeights:
    """``weights`` if its layers chain (each input width the previous output), else ValueError."""
    n = hidden_layers(weights)
    names = [f"hidden.{i}" for i in range(n)] + ["mean", "log_std"]
    missing = [f"{n}.{p}" for n in names for p in ("weight", "bias") if f"{n}.{p}" not in weights]
    if missing or len(weights) != 2 * len(names):
        raise ValueError(f"actor weights: missing {missing} or unexpected keys {sorted(weights)}")
    width = weights["hidden.0.weight"].shape[1] if n else weights["mean.weight"].shape[1]
    for name in names:
        w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise ValueError(f"actor weights: {name} has shape {w.shape} / {b.shape}")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError(f"actor weights: {name} holds a non-finite value")
        if name.startswith("hidden."):
            width = w.shape[0]
    return weights


def act(weights: ActorWeights, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Actions for the batch ``x`` (B, in): the mean action, or a sample with noise from
    ``rng``; float32 in [-1, 1]."""
    h = np.asarray(x, dtype=np.float32)
    for i in range(hidden_layers(weights)):
        h = np.maximum(h @ weights[f"hidden.{i}.weight"].T + weights[f"hidden.{i}.bias"], 0.0)
    pre = (h @ weights["mean.weight"].T + weights["mean.bias"]).astype(np.float64)
    if rng is not None:
        log_std = h @ weights["log_std.weight"].T + weights["log_std.bias"]
        log_std = np.clip(log_std.astype(np.float64), LOG_STD_MIN, LOG_STD_MAX)
        pre = pre + np.exp(log_std) * rng.standard_normal(pre.shape)
    return np.tanh(pre).astype(np.float32)


def to_tensors(weights: ActorWeights) -> dict[str, torch.Tensor]:
    """For the sealed torch files (``torch.load(weights_only=True)`` reads them back)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}


def from_tensors(state: Mapping[str, torch.Tensor]) -> ActorWeights:
    return check_actor({k: v.detach().cpu().numpy() for k, v in state.items()})

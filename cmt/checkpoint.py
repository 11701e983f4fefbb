"""Checkpoints and prompt artifacts: plain tensors and JSON strings, loaded with
``torch.load(weights_only=True)`` so no file is ever unpickled into arbitrary objects.
Every write goes to a temporary file first and is renamed into place (atomic on POSIX)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cmt.atomic import atomic_path
from cmt.config import ModelConfig
from cmt.data.dataset import Normalizer
from cmt.models.policy import SequencePolicy

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or prompt file that cannot be used; the message names the file."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, disallowed type...
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a CMT file of format {FORMAT_VERSION}")
    return obj


def policy_state(model: SequencePolicy, norm: Normalizer, meta: dict[str, Any]) -> dict:
    """Everything evaluation needs: weights, model config, dims, normalisation, metadata."""
    return {
        "format": FORMAT_VERSION,
        "kind": "policy",
        "model_config": model.cfg.model_dump_json(),
        "obs_dim": model.obs_dim,
        "act_dim": model.act_dim,
        "discrete": model.discrete,
        "num_agents": model.num_agents,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalizer": norm.to_tensors(),
        "meta": json.dumps(meta),
    }


def save_policy(path: str | Path, model: SequencePolicy, norm: Normalizer, meta: dict) -> None:
    atomic_torch_save(policy_state(model, norm, meta), path)


def load_policy(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SequencePolicy, Normalizer, dict[str, Any]]:
    """Rebuild a policy from a checkpoint written by :func:`save_policy` (or a training one)."""
    obj = safe_load(path, map_location)
    if obj.get("kind") not in ("policy", "resume"):
        raise CheckpointError(f"{path}: not a policy checkpoint (kind={obj.get('kind')!r})")
    try:
        cfg = ModelConfig.model_validate_json(obj["model_config"])
        model = SequencePolicy(
            cfg,
            int(obj["obs_dim"]),
            int(obj["act_dim"]),
            bool(obj.get("discrete", False)),  # absent from single-agent checkpoints of before
            int(obj.get("num_agents", 1)),
        )
        model.load_state_dict(obj["state_dict"])
        norm = Normalizer.from_tensors(obj["normalizer"])
        meta = json.loads(obj["meta"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: inconsistent checkpoint: {err}") from None
    model.eval()
    return model, norm, meta


def save_prompt(path: str | Path, prompt: torch.Tensor, meta: dict[str, Any]) -> None:
    """A tuned prompt: an (m, d) tensor and its metadata. Kilobytes, one file per task."""
    atomic_torch_save(
        {
            "format": FORMAT_VERSION,
            "kind": "prompt",
            "prompt": prompt.detach().cpu().float(),
            "meta": json.dumps(meta),
        },
        path,
    )


def load_prompt(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    obj = safe_load(path)
    if obj.get("kind") != "prompt":
        raise CheckpointError(f"{path}: not a prompt file (kind={obj.get('kind')!r})")
    return obj["prompt"], json.loads(obj["meta"])

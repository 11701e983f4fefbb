"""Checkpoints and prompt artifacts: plain tensors and JSON strings, loaded with
``torch.load(weights_only=True)`` so no file is ever unpickled into arbitrary objects.

Every file records the SHA-256 of its content (:mod:`cmt.integrity`), checked on every load,
and is serialised in memory, then written to a temporary file and renamed into place (atomic
on POSIX): the same content always gives the same bytes (``torch.save`` to a path would
record the temporary file's name in the archive)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from cmt.atomic import write_bytes
from cmt.config import ModelConfig
from cmt.data.dataset import Normalizer
from cmt.integrity import ArtifactError, IntegrityError, seal, verify
from cmt.models.policy import SequencePolicy

FORMAT_VERSION = 1
POLICY_KEYS = ("model_config", "obs_dim", "act_dim", "state_dict", "normalizer", "meta")


class CheckpointError(ArtifactError):
    """A checkpoint or prompt file that cannot be used; the message names the file."""


def atomic_torch_save(obj: dict[str, Any], path: str | Path) -> None:
    """Save ``obj`` with its content hash, byte-reproducibly and atomically."""
    buf = io.BytesIO()
    torch.save(seal(obj), buf)
    write_bytes(path, buf.getvalue())


def load_sealed(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A dict written by :func:`atomic_torch_save`, its content hash checked."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, disallowed type...
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from None
    try:
        return verify(obj, path)
    except IntegrityError as err:
        raise CheckpointError(str(err)) from None


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A CMT file (checkpoint, prompt, prompt set), its content hash and format checked."""
    obj = load_sealed(path, map_location)
    if obj.get("format") != FORMAT_VERSION:
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
    missing = [k for k in POLICY_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    bad = [k for k, v in obj["state_dict"].items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {bad[:5]}")
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
    missing = [k for k in ("prompt", "meta") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    return obj["prompt"], json.loads(obj["meta"])

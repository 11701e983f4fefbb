"""Checkpoints and prompt artifacts: plain tensors and JSON strings, loaded with
``torch.load(weights_only=True)`` so no file is ever unpickled into arbitrary objects.

Every file records the SHA-256 of its content (:mod:`cmt.integrity`), checked on every load,
and is serialised in memory, then written to a temporary file and renamed into place (atomic
on POSIX): the same content always gives the same bytes (``torch.save`` to a path would
record the temporary file's name in the archive)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cmt.atomic import write_bytes
from cmt.data.dataset import Normalizer
from cmt.integrity import ArtifactError, IntegrityError, seal, verify
from cmt.models.policy import SequencePolicy
from cmt.sections import ModelConfig

FORMAT_VERSION = 1
POLICY_KEYS = ("model_config", "obs_dim", "act_dim", "state_dict", "normalizer", "meta")
NORMALIZER_DIVISORS = ("state_std", "reward_scale", "return_scale")


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
        raise CheckpointError(
            f"{path}: cannot be loaded ({type(err).__name__}: {_load_failure(err)})"
        ) from None
    try:
        return verify(obj, path)
    except IntegrityError as err:
        raise CheckpointError(str(err)) from None


def _load_failure(err: Exception) -> str:
    """torch's reason in one sentence, without its advice: retrying with ``weights_only``
    off would run whatever code the file holds, and allowlisting its classes likewise."""
    text = str(err)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    if marker:  # the reason follows torch's paragraph of advice
        text = rest
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    reason = re.split(r"(?<=\.)\s", first, maxsplit=1)[0].rstrip(".")
    if not reason or "weights_only" in reason:
        return "not a file of tensors and plain values"
    return reason


def check_tensors(
    path: str | Path, what: str, tensors: Any, positive: tuple[str, ...] = ()
) -> None:
    """Every entry of ``tensors`` a finite tensor, and those named in ``positive`` (which must
    be there) > 0; the error names the entry, the index and the value."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{path}: {what} is a {type(tensors).__name__}, expected a dict")
    missing = [name for name in positive if name not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {what} is missing {missing}")
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {what} {name!r} is a {type(value).__name__}")
        flat = value.detach().reshape(-1)
        bad, problem = ~torch.isfinite(flat), "non-finite"
        if name in positive and not bool(bad.any()):
            bad, problem = flat <= 0, "non-positive"
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise CheckpointError(
                f"{path}: {problem} {what} {name!r} ({int(bad.sum())} values, first at index "
                f"{i}: {flat[i].item()})"
            )


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
    check_tensors(path, "weights", obj["state_dict"])
    # The statistics are divided by at every step: zero is as broken as inf.
    check_tensors(path, "normaliser", obj["normalizer"], NORMALIZER_DIVISORS)
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
    check_tensors(path, "prompt", {"prompt": obj["prompt"]})
    return obj["prompt"], json.loads(obj["meta"])

"""Content hashes of the artifacts the pipeline writes, checked before every use.

Every artifact records a SHA-256 of its content when it is written, inside the file itself,
so a copied or moved file stays checkable:

* torch files (checkpoints, prompts, prompt sets, SAC state): the saved dict's key
  ``sha256``, a digest of every other entry (:func:`digest`);
* HDF5 datasets: the file attribute ``sha256``, a digest of every dataset's path, dtype,
  shape and values (:func:`hdf5_digest`);
* JSON files (``references.json``): the key ``sha256``, a digest of the other keys.

A flipped byte anywhere either breaks the container (zip, HDF5, JSON: rejected by name) or
changes the content, and then the recomputed digest differs from the recorded one.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HASH_KEY = "sha256"


class ArtifactError(ValueError):
    """A file a stage consumes cannot be used; the message names the file and the problem."""


class IntegrityError(ArtifactError):
    """A file's content does not match the hash recorded when it was written."""


class NonFiniteError(ValueError):
    """A loss, gradient or metric is NaN or infinite; the message says where."""


# ------------------------------------------------------------------ nested values


def _update(h: Any, obj: Any) -> None:
    """Feed a nested value into ``h``: type-tagged, so that ``1``, ``1.0`` and ``"1"`` differ."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.dtype != object else json.dumps(a.tolist()).encode())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _update(h, key)
            _update(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    elif isinstance(obj, bool | int | str | bytes) or obj is None:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    else:
        raise TypeError(f"cannot hash a {type(obj).__name__}")


def digest(obj: Any) -> str:
    """SHA-256 of a nested value of dicts, lists, tensors, arrays and scalars."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def seal(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with its digest under ``sha256``."""
    body = {k: v for k, v in obj.items() if k != HASH_KEY}
    return {**body, HASH_KEY: digest(body)}


def verify(obj: Any, source: str | Path) -> dict[str, Any]:
    """Check a sealed dict read from ``source``; returns it without its hash."""
    if not isinstance(obj, dict):
        raise IntegrityError(f"{source}: expected a dict, got {type(obj).__name__}")
    if HASH_KEY not in obj:
        raise IntegrityError(f"{source}: no content hash recorded (key '{HASH_KEY}' missing)")
    body = {k: v for k, v in obj.items() if k != HASH_KEY}
    if digest(body) != obj[HASH_KEY]:
        raise IntegrityError(f"{source}: content does not match its recorded sha256 (corrupted)")
    return body


# ------------------------------------------------------------------ JSON


def sealed_json(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object with the digest of its canonical text under ``sha256``."""
    # As it will read back: string keys, lists for tuples.
    body = json.loads(json.dumps({k: v for k, v in payload.items() if k != HASH_KEY}))
    text = json.dumps(body, sort_keys=True)
    return {**body, HASH_KEY: hashlib.sha256(text.encode()).hexdigest()}


def read_json(path: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """Read a JSON object written with :func:`sealed_json`, check its hash and that every
    ``required`` key is present; returns it without the hash."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise IntegrityError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if HASH_KEY not in raw:
        raise IntegrityError(f"{path}: no content hash recorded (key '{HASH_KEY}' missing)")
    if sealed_json(raw)[HASH_KEY] != raw[HASH_KEY]:
        raise IntegrityError(f"{path}: content does not match its recorded sha256 (corrupted)")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ArtifactError(f"{path}: missing keys {missing}")
    return {k: v for k, v in raw.items() if k != HASH_KEY}


# ------------------------------------------------------------------ HDF5


def hdf5_digest(f: Any) -> str:
    """SHA-256 of every dataset of an open ``h5py.File``: path, dtype, shape and values,
    read one dataset at a time."""
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    h = hashlib.sha256()
    for name in sorted(names):
        ds = f[name]
        h.update(f"{name}\0{ds.dtype.str}\0{ds.shape}\0".encode())
        if h5py.check_string_dtype(ds.dtype) is not None:
            value = ds.asstr()[()]
            h.update(
                json.dumps(value.tolist() if isinstance(value, np.ndarray) else value).encode()
            )
        else:
            h.update(np.ascontiguousarray(ds[()]).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ numbers


def check_finite(values: Mapping[str, Any], where: str) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` and every key whose value is missing
    (None), NaN or infinite."""
    bad = {
        k: v
        for k, v in values.items()
        if v is None or (isinstance(v, int | float | np.floating) and not math.isfinite(v))
    }
    if bad:
        raise NonFiniteError(f"{where}: non-finite or missing values {bad}")

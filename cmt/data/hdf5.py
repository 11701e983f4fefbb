"""Read and write offline datasets in D4RL's HDF5 layout, extended with ``task_id`` and, for
multi-agent data, an agent axis.

On disk (one file, N transitions, episodes back to back)::

    observations       (N, obs_dim) float32
    actions            (N, act_dim) float32
    rewards            (N,)         float32
    terminals          (N,)         bool     termination (no bootstrap)
    timeouts           (N,)         bool     truncation (time limit, end of data)
    next_observations  (N, obs_dim) float32  optional on read, always written
    task_id            (N,)         int64    optional on read with ``default_task_id``
    infos/<name>       (N, ...)              free-form per-step extras
    metadata/<name>    scalars, strings, 1-D arrays; ``metadata/schema_version`` on write

Multi-agent files (SMAX; A agents, n discrete actions each) differ in::

    observations       (N, A, obs_dim) float32  per agent; next_observations likewise
    actions            (N, A)          int64    in [0, n), and available (below)
    avail_actions      (N, A, n)       bool     which actions each agent could take
    infos/won          (N,)            bool     optional; true only at an episode's end

Everything is checked on load and before writing; bad input raises :class:`DatasetError`
naming the file, the key and what is wrong. Files written here carry the SHA-256 of their
content as the file attribute ``sha256`` (:func:`cmt.integrity.hdf5_digest`), checked on
every read, and no timestamps, so the same data always gives the same bytes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from cmt.atomic import atomic_path
from cmt.data.schema import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, TransitionData
from cmt.integrity import HASH_KEY, ArtifactError, hdf5_digest

T = TypeVar("T")

__all__ = [
    "MAX_ABS_VALUE",
    "DatasetError",
    "as_flags",
    "check_float_values",
    "episode_bounds",
    "read_hdf5",
    "validate",
    "verify_hdf5",
    "write_hdf5",
]

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")
FLAG_KEYS = ("terminals", "timeouts")

# Largest magnitude any stored float may have. Positions, velocities (MuJoCo's are clipped to
# +-10 or stay within a few tens), actions in [-1, 1] and per-step rewards (a few units) are
# all far below it, and so is every feature of the point-robot and SMAX data; a float32 whose
# high exponent bit flipped (x * 2**64, x * 2**128) lands far above it.
MAX_ABS_VALUE = 1e6

# TransitionData field -> on-disk key (only task ids differ). Messages always use the disk key.
_FIELD_TO_KEY = {
    "observations": "observations",
    "actions": "actions",
    "rewards": "rewards",
    "terminals": "terminals",
    "timeouts": "timeouts",
    "next_observations": "next_observations",
    "task_ids": "task_id",
    "avail_actions": "avail_actions",
}
_DTYPES = {
    "observations": np.dtype(np.float32),
    "actions": np.dtype(np.float32),
    "rewards": np.dtype(np.float32),
    "terminals": np.dtype(np.bool_),
    "timeouts": np.dtype(np.bool_),
    "next_observations": np.dtype(np.float32),
    "task_id": np.dtype(np.int64),
    "avail_actions": np.dtype(np.bool_),
}
_NDIMS = {
    "observations": 2,
    "actions": 2,
    "rewards": 1,
    "terminals": 1,
    "timeouts": 1,
    "next_observations": 2,
    "task_id": 1,
}
# Multi-agent data: the agent axis after N, integer actions.
_MA_DTYPES = {**_DTYPES, "actions": np.dtype(np.int64)}
_MA_NDIMS = {**_NDIMS, "observations": 3, "next_observations": 3, "avail_actions": 3}


# What h5py raises on a corrupt file: OSError mostly, KeyError or ValueError for a damaged
# object header, RuntimeError from a failed filter.
_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)


class DatasetError(ArtifactError):
    """A dataset file or in-memory dataset is malformed; the message names file and key."""


def _err(source: str, key: str | None, what: str) -> DatasetError:
    if key is None:
        return DatasetError(f"{source}: {what}")
    return DatasetError(f"{source}: key '{key}': {what}")


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(starts, lengths)`` (int64) of the episodes in a flat transition array.

    An episode ends at every index where ``terminals`` or ``timeouts`` is true. Transitions
    after the last end (an unfinished tail) form a final episode too, so the lengths always
    sum to N; :func:`validate` guarantees there is no such tail in validated data.
    """
    ends = np.asarray(terminals, dtype=bool) | np.asarray(timeouts, dtype=bool)
    n = ends.shape[0]
    stops = np.flatnonzero(ends) + 1  # exclusive end of each episode
    if n and (stops.size == 0 or stops[-1] != n):
        stops = np.append(stops, n)
    starts = np.concatenate(([0], stops[:-1])).astype(np.int64)[: stops.size]
    return starts, (stops - starts).astype(np.int64)


# --------------------------------------------------------------------------- validation


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    """Count of true entries and the first flat (row, for 2-D) index where one is true."""
    mask = np.atleast_1d(mask)
    count = int(np.count_nonzero(mask))
    first = int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]) if count else -1
    return count, first


def _first_cell(mask: np.ndarray) -> tuple[int, int, int]:
    """Count of true entries of a (N, A) mask and the (index, agent) of the first one."""
    i, a = np.argwhere(mask)[0]
    return int(np.count_nonzero(mask)), int(i), int(a)


def _first_value(arr: np.ndarray, mask: np.ndarray) -> tuple[int, str]:
    """Row of the first true cell of ``mask`` and ``"<value> in column <c>"`` (agent and
    column for 3-D data; the value alone for 1-D)."""
    cell = np.unravel_index(int(np.argmax(mask)), mask.shape)
    value = f"{arr[cell]:.6g}" if arr.dtype.kind == "f" else str(arr[cell])
    names = ("column",) if arr.ndim == 2 else ("agent", "column")  # (N, D) or (N, A, D)
    where = ", ".join(f"{name} {int(i)}" for name, i in zip(names, cell[1:], strict=False))
    return int(cell[0]), f"{value} in {where}" if where else value


def check_float_values(source: str, key: str, arr: np.ndarray) -> None:
    """Every value finite and at most :data:`MAX_ABS_VALUE` in magnitude; the error names the
    first bad value, its index and (for 2-D data) its column."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row, value = _first_value(arr, bad)
        raise _err(
            source, key, f"{int(bad.sum())} non-finite values (first at index {row}): {value}"
        )
    huge = np.abs(arr) > MAX_ABS_VALUE
    if huge.any():
        row, value = _first_value(arr, huge)
        raise _err(
            source,
            key,
            f"{int(huge.sum())} values with |value| > {MAX_ABS_VALUE:g} (first at index {row}): "
            f"{value}; no quantity of these environments comes near that, a corrupted value",
        )


def validate(data: TransitionData, source: str) -> None:
    """Check dtypes, shapes, values, episode boundaries and task ids of ``data``.

    ``source`` (a file name, or a description for in-memory data) prefixes every message.
    Dtypes must already be the canonical ones (float32 / bool / int64); bools must hold the
    bytes 0 or 1, floats be finite and at most :data:`MAX_ABS_VALUE` in magnitude. The last
    transition must end an episode. Multi-agent data (``avail_actions`` set) must also agree
    on the agent axis and take only available actions. Raises :class:`DatasetError` on the
    first problem found.
    """
    multi = data.avail_actions is not None
    arrays = _canonical_arrays(data, source, multi)
    n = check_shapes(arrays, _MA_NDIMS if multi else _NDIMS, source)
    for key, arr in arrays.items():
        if arr.dtype == np.bool_:  # a bool made from raw bytes (a view) may hold 0xFF
            as_flags(source, key, arr)
    _check_widths(arrays, multi, source)
    _check_infos(data.infos, n, source)
    for key in FLOAT_KEYS:
        if not (multi and key == "actions"):
            check_float_values(source, key, arrays[key])
    if multi:
        _check_actions(source, arrays["actions"], arrays["avail_actions"])
    ends = arrays["terminals"] | arrays["timeouts"]
    if not ends[-1]:
        raise _err(
            source,
            "timeouts",
            f"last transition (index {n - 1}) ends no episode: neither terminal nor timeout",
        )
    if multi:
        _check_wins(data.infos.get("won"), ends, source)
    _check_task_ids(arrays["task_id"], ends, data.metadata, source)
    version = data.metadata.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _err(
            source,
            "metadata/schema_version",
            f"schema version {version!r}, expected {SCHEMA_VERSION}",
        )


def _canonical_arrays(data: TransitionData, source: str, multi: bool) -> dict[str, np.ndarray]:
    """The arrays of ``data`` by on-disk key, each a numpy array of its canonical dtype."""
    dtypes = _MA_DTYPES if multi else _DTYPES
    arrays: dict[str, np.ndarray] = {}
    for field, key in _FIELD_TO_KEY.items():
        arr = getattr(data, field)
        if field == "avail_actions" and not multi:
            continue
        if not isinstance(arr, np.ndarray):
            raise _err(source, key, f"expected a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtypes[key]:
            raise _err(source, key, f"dtype {arr.dtype}, expected {dtypes[key]}")
        arrays[key] = arr
    return arrays


def check_shapes(arrays: dict[str, np.ndarray], ndims: dict[str, int], source: str) -> int:
    """Every array of its expected rank and of one length N >= 1; returns N."""
    for key, arr in arrays.items():
        if arr.ndim != ndims[key]:
            raise _err(source, key, f"expected {ndims[key]}-D array, got shape {arr.shape}")
    n = arrays["observations"].shape[0]
    for key, arr in arrays.items():
        if arr.shape[0] != n:
            raise _err(source, key, f"length {arr.shape[0]} does not match observations length {n}")
    if n < 1:
        raise _err(source, "observations", "dataset is empty (N = 0)")
    return n


def _check_widths(arrays: dict[str, np.ndarray], multi: bool, source: str) -> None:
    """One agent axis (multi-agent data) and one observation width throughout."""
    if multi:
        agents = arrays["observations"].shape[1]
        for key in ("next_observations", "actions", "avail_actions"):
            if arrays[key].shape[1] != agents:
                raise _err(
                    source,
                    key,
                    f"agent axis of size {arrays[key].shape[1]} does not match observations' "
                    f"{agents} agents (shape {arrays[key].shape})",
                )
    obs_dim = arrays["observations"].shape[-1]
    if arrays["next_observations"].shape[-1] != obs_dim:
        raise _err(
            source,
            "next_observations",
            f"width {arrays['next_observations'].shape[-1]} does not match observations "
            f"width {obs_dim}",
        )


def _check_infos(infos: dict[str, Any], n: int, source: str) -> None:
    for name, arr in infos.items():
        key = f"infos/{name}"
        if not isinstance(arr, np.ndarray):
            raise _err(source, key, f"expected a numpy array, got {type(arr).__name__}")
        if arr.ndim < 1 or arr.shape[0] != n:
            raise _err(source, key, f"shape {arr.shape}, expected first dimension {n}")


def _check_wins(won: np.ndarray | None, ends: np.ndarray, source: str) -> None:
    """``infos/won`` of multi-agent data: bool, and true only where an episode ends."""
    if won is None:
        return
    if won.dtype != np.bool_ or won.ndim != 1:
        raise _err(source, "infos/won", f"{won.dtype} {won.shape}, expected bool ({ends.size},)")
    early = won & ~ends
    if early.any():
        count, first = _first_bad(early)
        raise _err(
            source, "infos/won", f"{count} wins at steps that end no episode (first {first})"
        )


def _check_task_ids(
    task: np.ndarray, ends: np.ndarray, metadata: dict[str, Any], source: str
) -> None:
    """Task ids constant within an episode, non-negative, below ``metadata/num_tasks``."""
    # A task id may only change right after an episode end.
    changes = np.flatnonzero((task[1:] != task[:-1]) & ~ends[:-1]) + 1
    if changes.size:
        i = int(changes[0])
        raise _err(
            source,
            "task_id",
            f"task id changes within an episode at index {i} ({task[i - 1]} -> {task[i]})",
        )
    negative = task < 0
    if negative.any():
        count, first = _first_bad(negative)
        raise _err(
            source, "task_id", f"{count} negative task ids (first at index {first}: {task[first]})"
        )
    if "num_tasks" not in metadata:
        return
    num_tasks = metadata["num_tasks"]
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int | np.integer):
        raise _err(source, "metadata/num_tasks", f"expected an integer, got {num_tasks!r}")
    too_big = task >= num_tasks
    if too_big.any():
        count, first = _first_bad(too_big)
        raise _err(
            source,
            "task_id",
            f"{count} task ids >= metadata num_tasks={int(num_tasks)} "
            f"(first at index {first}: {task[first]})",
        )


def _check_actions(source: str, actions: np.ndarray, avail: np.ndarray) -> None:
    """Every action in [0, num_actions) and available to its agent at its step."""
    num_actions = avail.shape[2]
    outside = (actions < 0) | (actions >= num_actions)
    if outside.any():
        count, i, a = _first_cell(outside)
        raise _err(
            source,
            "actions",
            f"{count} actions outside [0, {num_actions}) (first at index {i}, agent {a}: "
            f"{actions[i, a]})",
        )
    taken = np.take_along_axis(avail, actions[..., None], axis=2)[..., 0]  # (N, A)
    if not taken.all():
        count, i, a = _first_cell(~taken)
        raise _err(
            source,
            "actions",
            f"{count} actions that were not available (first at index {i}, agent {a}: action "
            f"{actions[i, a]}, avail_actions {avail[i, a].astype(int).tolist()})",
        )


# --------------------------------------------------------------------------- writing


def _metadata_value(source: str, name: str, value: Any) -> Any:
    """Turn a metadata value into something h5py stores as a scalar or 1-D dataset."""
    key = f"metadata/{name}"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.ndim == 1 and (arr.dtype.kind in "biuf" or arr.size == 0):
            return arr
        if arr.ndim == 1 and arr.dtype.kind == "U":
            return arr.astype(object).astype(h5py.string_dtype())
        raise _err(
            source, key, f"lists must be 1-D numbers or strings, got {arr.dtype} {arr.shape}"
        )
    raise _err(source, key, f"unsupported metadata type {type(value).__name__}")


def write_hdf5(path: str | Path, data: TransitionData) -> None:
    """Validate ``data`` and write it to ``path`` atomically (temp file + ``os.replace``).

    A failed or killed write never leaves a partial file under ``path``, and an existing
    file there is only replaced once the new one is complete.
    """
    path = Path(path)
    source = str(path)
    validate(data, source)
    meta = {
        name: _metadata_value(source, name, value)
        for name, value in data.metadata.items()
        if name != "schema_version"
    }

    with atomic_path(path) as tmp:
        # No modification times in object headers: equal data, equal bytes (DVC hashes).
        with h5py.File(tmp, "w") as f:
            for field, key in _FIELD_TO_KEY.items():
                if getattr(data, field) is not None:  # avail_actions: multi-agent only
                    f.create_dataset(key, data=getattr(data, field), track_times=False)
            for name, arr in data.infos.items():
                f.create_dataset(f"infos/{name}", data=arr, track_times=False)
            for name, value in meta.items():
                f.create_dataset(f"metadata/{name}", data=value, track_times=False)
            f.create_dataset("metadata/schema_version", data=SCHEMA_VERSION, track_times=False)
            f.attrs[HASH_KEY] = hdf5_digest(f)
        # Make the bytes durable before the rename makes them visible.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- reading


def _collect(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """All datasets below ``group``, keyed by their path relative to it (nested with '/')."""
    out: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj

    group.visititems(visit)
    return out


def _read_metadata_value(ds: h5py.Dataset) -> Any:
    """Plain Python value of a metadata dataset: str, bool, int, float or (nested) list."""
    if h5py.check_string_dtype(ds.dtype) is not None:
        value = ds.asstr()[()]
        return value.tolist() if isinstance(value, np.ndarray) else str(value)
    value = ds[()]
    if isinstance(value, bytes):  # fixed-length byte strings written by other tools
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            return [v.decode("utf-8", errors="replace") for v in value.ravel()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataset(source: str, f: h5py.File, key: str) -> h5py.Dataset:
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise _err(source, key, "is a group, expected a dataset")
    return obj


def _as_float(source: str, key: str, arr: np.ndarray) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.floating):
        raise _err(source, key, f"dtype {arr.dtype}, expected a floating dtype")
    return arr.astype(np.float32, copy=False)


def as_flags(source: str, key: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as bool, refused unless every stored value is 0 or 1.

    A bool array is checked on its bytes: numpy (and h5py's bool enum) read any non-zero byte
    as True, so a corrupted 0xFF would otherwise pass as a real episode end.
    """
    if arr.dtype == np.bool_:
        stored = arr.view(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        stored = arr
    else:
        raise _err(source, key, f"dtype {arr.dtype}, expected bool or integer 0/1")
    bad = (stored != 0) & (stored != 1)
    if bad.any():
        count, first = _first_bad(bad)
        value = stored[bad][0]
        shown = f"stored byte {int(value):#04x}" if arr.dtype == np.bool_ else str(value)
        raise _err(source, key, f"{count} values not 0/1 (first at index {first}: {shown})")
    return arr.astype(np.bool_)


def _derive_next_observations(
    obs: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray
) -> np.ndarray:
    """next_obs[i] = obs[i + 1] within an episode; obs[i] itself at an episode's last step.

    D4RL's own ``qlearning_dataset`` drops those last steps because their true next
    observation was never recorded. We keep them (their reward and flags are real data) and
    put obs[i] there as a placeholder: a terminal step is never bootstrapped from, and a
    timeout step ends the stored episode, so consumers never use that value.
    """
    nxt = np.empty_like(obs)
    nxt[:-1] = obs[1:]
    last = terminals | timeouts
    last[-1] = True
    nxt[last] = obs[last]
    return nxt


def read_hdf5(path: str | Path, *, default_task_id: int | None = None) -> TransitionData:
    """Read and validate a D4RL-layout HDF5 file.

    Files without ``task_id`` (real single-task D4RL files) need ``default_task_id``. A file
    whose last transition ends no episode (D4RL files stop mid-episode) gets that transition
    marked as a timeout, with a warning.
    """
    return _with_checked_file(path, lambda f: _read_open(f, str(path), default_task_id))


def _check_digest(f: h5py.File, source: str) -> None:
    """Files written by :func:`write_hdf5` (they have a schema version) must match their
    recorded content hash; foreign files (D4RL's, with neither) are only validated."""
    recorded = f.attrs.get(HASH_KEY)
    if recorded is None:
        if "metadata/schema_version" in f:
            raise _err(source, None, f"no content hash recorded (attribute '{HASH_KEY}' missing)")
        return
    if isinstance(recorded, bytes):
        recorded = recorded.decode("utf-8", errors="replace")
    if hdf5_digest(f) != recorded:
        raise _err(source, None, "content does not match its recorded sha256 (corrupted)")


def verify_hdf5(path: str | Path) -> None:
    """Check a dataset file's content hash without loading it into memory."""
    _with_checked_file(path, lambda f: None)


def _with_checked_file(path: str | Path, use: Callable[[h5py.File], T]) -> T:
    """``use(f)`` on the open file once its content hash checks out; every failure to open
    or read it becomes a :class:`DatasetError` naming the file."""
    source = str(path)
    if not Path(path).exists():
        raise _err(source, None, "no such file")
    try:
        with h5py.File(path, "r") as f:
            _check_digest(f, source)
            return use(f)
    except DatasetError:
        raise
    except _H5_ERRORS as exc:  # not HDF5, truncated or corrupt
        raise _err(source, None, f"cannot read as HDF5 ({type(exc).__name__}: {exc})") from exc


def _read_metadata(f: h5py.File, source: str, multi: bool) -> dict[str, Any]:
    """``metadata/*`` as plain values, its schema version checked and removed.

    A file we wrote always has ``schema_version``; a foreign D4RL file has none and is
    accepted."""
    meta_ds = _collect(f["metadata"]) if isinstance(f.get("metadata"), h5py.Group) else {}
    metadata = {name: _read_metadata_value(ds) for name, ds in meta_ds.items()}
    if "schema_version" in metadata:
        version = metadata.pop("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise _err(
                source,
                "metadata/schema_version",
                f"schema version {version!r}, expected {SCHEMA_VERSION} "
                f"(readable: {list(READABLE_SCHEMA_VERSIONS)})",
            )
        if multi and version < 2:
            raise _err(
                source,
                "metadata/schema_version",
                f"schema version {version} has no agent axis, but the file has avail_actions",
            )
    return metadata


def _read_arrays(
    f: h5py.File, source: str, multi: bool, default_task_id: int | None
) -> dict[str, np.ndarray]:
    """The datasets of the file cast to their canonical dtypes, refusing anything that is
    not the right kind (shapes are checked by the caller)."""
    for key in REQUIRED_KEYS:
        if key not in f:
            raise _err(source, key, "missing required dataset")
    if "task_id" not in f and default_task_id is None:
        raise _err(source, "task_id", "missing; pass default_task_id for single-task D4RL files")
    raw = {key: _dataset(source, f, key)[()] for key in REQUIRED_KEYS}
    for key in ("next_observations", "task_id", "avail_actions"):
        if key in f:
            raw[key] = _dataset(source, f, key)[()]
    arrays: dict[str, np.ndarray] = {}
    for key in FLOAT_KEYS:
        if key in raw and not (multi and key == "actions"):
            arrays[key] = _as_float(source, key, np.asarray(raw[key]))
    for key in (*FLAG_KEYS, "avail_actions") if multi else FLAG_KEYS:
        arrays[key] = as_flags(source, key, np.asarray(raw[key]))
    integer_keys = ("actions", "task_id") if multi else ("task_id",)
    for key in integer_keys:
        if key in raw:
            arr = np.asarray(raw[key])
            if not np.issubdtype(arr.dtype, np.integer):
                raise _err(source, key, f"dtype {arr.dtype}, expected an integer dtype")
            arrays[key] = arr.astype(np.int64, copy=False)
    return arrays


def _read_open(f: h5py.File, source: str, default_task_id: int | None) -> TransitionData:
    multi = "avail_actions" in f
    metadata = _read_metadata(f, source, multi)
    arrays = _read_arrays(f, source, multi, default_task_id)
    # shapes: check what the derivations below rely on before deriving anything.
    n = check_shapes(arrays, _MA_NDIMS if multi else _NDIMS, source)
    if "task_id" not in arrays:
        arrays["task_id"] = np.full(n, default_task_id, dtype=np.int64)
    terminals, timeouts = arrays["terminals"], arrays["timeouts"]
    if not (terminals[-1] or timeouts[-1]):
        # Real D4RL files stop mid-episode: the cut is a truncation, not a termination.
        timeouts = timeouts.copy()
        timeouts[-1] = True
        arrays["timeouts"] = timeouts
        warnings.warn(
            f"{source}: last transition (index {n - 1}) ends no episode; "
            "marking it as a timeout (truncation)",
            UserWarning,
            stacklevel=3,
        )
    if "next_observations" not in arrays:
        arrays["next_observations"] = _derive_next_observations(
            arrays["observations"], terminals, timeouts
        )
    infos: dict[str, np.ndarray] = {}
    if "infos" in f:
        if not isinstance(f["infos"], h5py.Group):
            raise _err(source, "infos", "is a dataset, expected a group")
        infos = {name: np.asarray(ds[()]) for name, ds in _collect(f["infos"]).items()}

    data = TransitionData(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=terminals,
        timeouts=arrays["timeouts"],
        next_observations=arrays["next_observations"],
        task_ids=arrays["task_id"],
        infos=infos,
        metadata=metadata,
        avail_actions=arrays.get("avail_actions"),
    )
    validate(data, source)
    return data

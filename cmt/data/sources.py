"""Load a real offline dataset that is already on disk into :class:`TransitionData`.

Two kinds of source, both single-task (task id 0 everywhere):

* a D4RL HDF5 file (``hopper-medium-replay-v2.hdf5``), read with :func:`read_hdf5`;
* a Minari dataset, named by its directory (``<dir>/data/metadata.json`` and the episodes in
  Minari's HDF5, arrow or parquet storage) or by its id (``mujoco/hopper/expert-v0``, resolved
  under Minari's local root as :func:`minari.load_dataset` does, never downloaded), read
  through Minari's own :class:`minari.MinariDataset` and flattened into D4RL's layout.

Everything that can be checked from the files' metadata and array shapes (HDF5 readable,
observation / action widths, environment, episode counts) is checked before any array is
read. The values are checked right after, key by key: flags stored as 0 or 1, every float
finite and within :data:`~cmt.data.hdf5.MAX_ABS_VALUE` (:func:`validate`), no value far
outside its column's own distribution (:func:`central_range`), actions inside the
environment's action space, and in D4RL files ``next_observations[i] == observations[i + 1]``
within every episode. :func:`check_source_level` then compares the level the user names with
the file's names and returns. Every problem raises :class:`DatasetError` naming the file, the
key, the index and the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cmt.data.d4rl import GYM_IDS, REF_RETURNS, level_mismatch
from cmt.data.hdf5 import (
    DatasetError,
    as_flags,
    check_float_values,
    episode_bounds,
    read_hdf5,
    validate,
)
from cmt.data.schema import TransitionData
from cmt.sections import NAME_RULE, is_safe_name

__all__ = [
    "MINARI_ROOT_ENV",
    "central_range",
    "check_minari_id",
    "check_source_horizon",
    "check_source_level",
    "is_minari_id",
    "minari_dataset_dir",
    "minari_root",
    "minari_summary",
    "read_d4rl_file",
    "read_minari_dataset",
    "read_source",
    "resolve_source",
    "source_references",
]

HDF5_SUFFIXES = (".hdf5", ".h5")
_MINARI_DATA = "main_data.hdf5"
_MINARI_META = "metadata.json"
_EPISODE_RE = re.compile(r"episode_(\d+)")
MINARI_FORMATS = ("hdf5", "arrow", "parquet")
"""Minari 0.5's storages: one HDF5 file, or one pyarrow folder per episode."""
MINARI_ROOT_ENV = "MINARI_DATASETS_PATH"
"""Minari's local datasets root; ``~/.minari/datasets`` when unset."""
# Minari 0.5.4's DATASET_ID_RE (minari/dataset/minari_dataset.py), ASCII only and with the
# version required (its parse_dataset_id fails on an id without one).
_MINARI_ID_RE = re.compile(
    r"(?:(?P<namespace>[-\w][-\w/]*[-\w])/)?(?P<name>[-\w]+?)-v(?P<version>\d+)", re.ASCII
)

# Outlier check of every float column against the file's own distribution; the numbers were
# chosen by perf/outlier_check.py (results/outlier_check.json): on 1.2M steps of
# random-action and random-policy rollouts of Hopper, HalfCheetah and Walker2d v5 no value lies
# more than 1.24 widths beyond its column's central range (10 leaves a margin of 8 for the
# heavier tails of trained policies), while a flipped exponent bit 27 (x 65536) puts a value
# thousands of widths beyond it (docs/d4rl.md, "What a source file must satisfy").
OUTLIER_QUANTILE = 0.001
"""The central range of a column runs from this quantile to 1 minus it (0.1% .. 99.9%)."""
OUTLIER_MIN_TAIL = 3
"""Rows each quantile leaves outside at least, so a small file's own outlier cannot define
its range."""
OUTLIER_FACTOR = 10.0
"""A value further than this many widths beyond its column's central range is refused."""
OUTLIER_FLOOR = 1.0
"""Smallest width (in the data's units): a near-constant column still tolerates
``OUTLIER_FACTOR`` units of deviation. It widens only the narrowest measured columns
(0.3 to 0.9 wide) and costs no detection: x 65536 of any |x| >= 2 lands over 10**5 away."""
OUTLIER_MIN_ROWS = 100
"""Files with fewer rows have no quantiles worth the name: only the absolute bound applies."""
ACTION_TOLERANCE = 1e-3
"""How far an action may lie outside the action space (float rounding of a clipped action)."""

# Names a file can give its environment and level by: D4RL's "<env>-<level>-v<N>".
_D4RL_NAME_RE = re.compile(r"(?P<env>[a-z0-9]+)-(?P<level>[a-z]+(?:-[a-z]+)*)-v\d+", re.IGNORECASE)
_VERSION_RE = re.compile(r"(?P<level>.+)-v\d+")
_D4RL_ENVS = frozenset(REF_RETURNS) | frozenset(GYM_IDS)

Locate = Callable[[str, int], tuple[str, str]]
"""(key, flat row) -> (the key in the file, "index i" or "step t") for messages."""


def _error(source: str | Path, key: str | None, what: str) -> DatasetError:
    """Same message format as :mod:`cmt.data.hdf5`: ``<file>: key '<key>': <problem>``."""
    if key is None:
        return DatasetError(f"{source}: {what}")
    return DatasetError(f"{source}: key '{key}': {what}")


def _flat_index(key: str, row: int) -> tuple[str, str]:
    return key, f"index {row}"


# --------------------------------------------------------------------------- dispatch


def read_source(path: str | Path, *, env_id: str, obs_dim: int, act_dim: int) -> TransitionData:
    """A real dataset on disk: a D4RL HDF5 file (path ends with .hdf5/.h5), a Minari dataset
    directory (has data/metadata.json), or a Minari dataset id (a string, see
    :func:`resolve_source`). Validated, task id 0 everywhere, metadata records 'source' (the
    path) and 'source_kind' ('d4rl_hdf5' or 'minari').

    The environment every name in the source gives (the D4RL file name, Minari's dataset id,
    the ``env`` our own files record) must be ``env_id``'s, and every action must lie in
    ``env_id``'s action space. A Minari id must be the ``dataset_id`` its metadata records.
    """
    dataset_id = path if isinstance(path, str) and is_minari_id(path) else None
    path = resolve_source(path)
    if not path.exists():
        raise _error(path, None, "no such file or directory")
    wanted = _parse_env_id(env_id)[1].lower()  # D4RL's and Minari's spelling: hopper
    if path.is_dir():
        data = read_minari_dataset(path, env_id=env_id, obs_dim=obs_dim, act_dim=act_dim)
        storage = _storage_of(path, data)
        if dataset_id is not None and data.metadata["dataset_id"] != dataset_id:
            # minari.list_local_datasets calls such a dataset misconfigured, too.
            raise _error(
                storage.data_dir / _MINARI_META,
                "dataset_id",
                f"says {data.metadata['dataset_id']!r}, but the dataset was named by id "
                f"{dataset_id!r}, whose directory this is",
            )
        file, locate = storage.file, _episode_locator(data, storage)
    else:
        if path.suffix.lower() not in HDF5_SUFFIXES:
            raise _error(
                path,
                None,
                "not a dataset source: expected a D4RL file ending in .hdf5/.h5 "
                "or a Minari dataset directory",
            )
        _check_names(_file_name(path), env=wanted, level=None, wanted_from=env_id)
        data = read_d4rl_file(path, obs_dim=obs_dim, act_dim=act_dim)
        file, locate = path, _flat_index
    _check_names(_recorded_names(path, data), env=wanted, level=None, wanted_from=env_id)
    _check_action_space(data.actions, env_id, str(file), locate)
    return data


# --------------------------------------------------------------------------- names and level


@dataclass(frozen=True)
class _Name:
    """An environment and level that a file's name or metadata gives."""

    file: str  # the file that holds the name
    key: str | None  # where in it (None: the file's own name)
    text: str  # the name as written
    env: str | None
    level: str | None  # in our spelling: medium_replay, not medium-replay


def _from_d4rl_name(name: str) -> tuple[str | None, str | None]:
    """(env, level) of ``hopper-medium-replay-v2``; (None, None) unless env is a D4RL one."""
    match = _D4RL_NAME_RE.fullmatch(name)
    if match is None or match["env"].lower() not in _D4RL_ENVS:
        return None, None
    return match["env"].lower(), match["level"].lower().replace("-", "_")


def _from_dataset_id(dataset_id: str) -> tuple[str | None, str | None]:
    """(env, level) of a Minari id: ``mujoco/hopper/medium-v0`` or ``d4rl/hopper-medium-v2``."""
    parts = dataset_id.split("/")
    if len(parts) >= 3:
        match = _VERSION_RE.fullmatch(parts[-1])
        level = (match["level"] if match else parts[-1]).lower().replace("-", "_")
        return parts[-2].lower(), level
    return _from_d4rl_name(parts[-1])


def _file_name(path: Path) -> list[_Name]:
    env, level = _from_d4rl_name(path.stem)
    if env is None:
        return []
    return [_Name(str(path), None, f"file name {path.name!r}", env, level)]


def _recorded_names(path: Path, data: TransitionData) -> list[_Name]:
    """Every environment / level name the source gives: its D4RL file name, its Minari
    dataset id, and the ``env`` / ``level`` metadata of files this project wrote."""
    meta = data.metadata
    names: list[_Name] = []
    if meta.get("source_kind") == "minari":
        meta_file = str(_minari_data_dir(path) / _MINARI_META)
        env, level = _from_dataset_id(str(meta.get("dataset_id", "")))
        if env is not None:
            text = f"dataset_id {meta['dataset_id']!r}"
            names.append(_Name(meta_file, "dataset_id", text, env, level))
    else:
        names += _file_name(path)
    for key in ("env", "level"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            spelled = value.lower().replace("-", "_")
            env, level = (spelled, None) if key == "env" else (None, spelled)
            names.append(_Name(str(path), f"metadata/{key}", "metadata", env, level))
    return names


def _check_names(
    names: list[_Name], *, env: str | None, level: str | None, wanted_from: str
) -> None:
    """Refuse the first name whose environment or level is not the wanted one."""
    for name in names:
        for what, got, want in (("environment", name.env, env), ("level", name.level, level)):
            if got is not None and want is not None and got != want:
                raise _error(
                    name.file,
                    name.key,
                    f"the {name.text} says {what} {got!r}, but the data is read as {what} "
                    f"{want!r} ({wanted_from}); pass a file of that {what} or name the "
                    f"{what} this file holds",
                )


def check_source_level(data: TransitionData, *, env: str, level: str) -> None:
    """Refuse a source whose names or episode returns say it is not ``env`` at ``level``.

    ``data`` comes from :func:`read_source` (its metadata's ``source`` is the path). The file
    name, Minari dataset id and recorded ``level`` must name ``level``; the episode returns
    must fit it (:func:`cmt.data.d4rl.level_mismatch`: a *random* file must not score far
    above a random policy, any other level must have episodes that score above one).
    """
    path = Path(str(data.metadata.get("source", "")))
    wanted = f"data.env={env}, data.level={level}"
    _check_names(_recorded_names(path, data), env=env, level=level, wanted_from=wanted)
    starts, _ = episode_bounds(data.terminals, data.timeouts)
    returns = np.add.reduceat(data.rewards.astype(np.float64), starts)
    problem = level_mismatch(env, level, returns)
    if problem is not None:
        file = _storage_of(path, data).file if path.is_dir() else path
        raise _error(file, "rewards", f"{problem}; the data is read as {wanted}")


def check_source_horizon(data: TransitionData, *, horizon: int, env_id: str) -> None:
    """Refuse a Minari source recorded with another ``max_episode_steps`` than ``horizon``,
    the episode length evaluation runs: returns over episodes of other lengths do not compare
    with the data's or with the reference returns. Sources that record none pass."""
    recorded = data.metadata.get("max_episode_steps")
    if recorded is None or recorded == horizon:
        return
    path = Path(str(data.metadata.get("source", "")))
    raise _error(
        _minari_data_dir(path) / _MINARI_META,
        "env_spec",
        f"the dataset was recorded with max_episode_steps={recorded}, but {env_id} is "
        f"evaluated over episodes of {horizon} steps: its returns would not compare with "
        "the data's or the reference returns; use a dataset recorded with that time limit",
    )


# --------------------------------------------------------------------------- values


def central_range(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of (N,) or (N, D) data: the low and high quantile that bound its central
    range (:data:`OUTLIER_QUANTILE`), and the range's width, at least :data:`OUTLIER_FLOOR`."""
    x = arr.reshape(arr.shape[0], -1)
    q = max(OUTLIER_QUANTILE, OUTLIER_MIN_TAIL / x.shape[0])
    low, high = np.quantile(x, [q, 1.0 - q], axis=0)
    return low, high, np.maximum(high - low, OUTLIER_FLOOR)


def _check_outliers(source: str, key: str, arr: np.ndarray, locate: Locate) -> None:
    """Refuse values more than :data:`OUTLIER_FACTOR` widths beyond their column's central
    range: finite, within the absolute bound, and still no physical value of the file."""
    if arr.shape[0] < OUTLIER_MIN_ROWS:
        return
    x = arr.reshape(arr.shape[0], -1)  # (N, D)
    low, high, width = central_range(x)
    excess = np.maximum(low - x, x - high) / width  # (N, D) widths beyond the range
    bad = excess > OUTLIER_FACTOR
    if not bad.any():
        return
    row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
    name, index = locate(key, int(row))
    column = f", column {col}" if arr.ndim > 1 else ""
    raise _error(
        source,
        name,
        f"{int(bad.sum())} values far outside the file's own distribution (first at {index}"
        f"{column}: {x[row, col]:.6g}, {excess[row, col]:.3g} widths beyond the column's central "
        f"range [{low[col]:.4g}, {high[col]:.4g}] of 0.1%-99.9% quantiles; the limit is "
        f"{OUTLIER_FACTOR:g}): a corrupted value, not a physical one",
    )


def _check_action_space(actions: np.ndarray, env_id: str, source: str, locate: Locate) -> None:
    """Every action inside ``env_id``'s Box action space, up to :data:`ACTION_TOLERANCE`."""
    import gymnasium as gym

    env = gym.make(env_id)
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        return
    low = np.broadcast_to(space.low, actions.shape[1:])
    high = np.broadcast_to(space.high, actions.shape[1:])
    for outside, bound, side in (
        (actions < low - ACTION_TOLERANCE, low, "below the lower"),
        (actions > high + ACTION_TOLERANCE, high, "above the upper"),
    ):
        if outside.any():
            row, col = np.unravel_index(int(np.argmax(outside)), outside.shape)
            name, index = locate("actions", int(row))
            raise _error(
                source,
                name,
                f"{int(outside.sum())} actions outside {env_id}'s action space (first at "
                f"{index}, column {col}: {actions[row, col]:.6g}, {side} bound "
                f"{bound[col]:g})",
            )


def _check_episode_boundaries(data: TransitionData, source: str) -> None:
    """Within an episode ``next_observations[i] == observations[i + 1]``; at an episode end
    they differ (the next row is a reset). Either way round, the flags or a value are wrong."""
    ends = (data.terminals | data.timeouts)[:-1]
    nxt, following = data.next_observations[:-1], data.observations[1:]  # (N - 1, D)
    differs = nxt != following
    width = differs.shape[1]
    rows = np.flatnonzero(differs.any(axis=1) & ~ends)
    if rows.size:
        i = int(rows[0])
        cols = np.flatnonzero(differs[i])
        c = int(cols[0])
        if cols.size * 2 < width:
            verdict = "looks like a corrupted value"
        else:
            verdict = f"looks like an unmarked episode boundary (no terminal or timeout at {i})"
        raise _error(
            source,
            "next_observations",
            f"{rows.size} rows differ from the next row's observations without an episode end "
            f"(first at index {i}, column {c}: next_observations {nxt[i, c]:.6g} != "
            f"observations[{i + 1}] {following[i, c]:.6g}; {cols.size} of {width} columns "
            f"differ: {verdict})",
        )
    continues = np.flatnonzero(ends & ~differs.any(axis=1))
    if continues.size:
        i = int(continues[0])
        key = "terminals" if data.terminals[i] else "timeouts"
        raise _error(
            source,
            key,
            f"{continues.size} episode ends where the episode goes on (first at index {i}: "
            f"{key} is 1, but next_observations[{i}] equals observations[{i + 1}] in all "
            f"{width} columns, no reset): a corrupted flag",
        )


def _check_float_outliers(data: TransitionData, source: str, locate: Locate) -> None:
    for key in ("observations", "actions", "rewards", "next_observations"):
        _check_outliers(source, key, getattr(data, key), locate)


# --------------------------------------------------------------------------- D4RL


def read_d4rl_file(path: str | Path, *, obs_dim: int, act_dim: int) -> TransitionData:
    """Read a D4RL-layout HDF5 file (e.g. ``hopper-medium-replay-v2.hdf5``).

    Widths are checked on the dataset shapes before anything is read. Metadata that is not a
    scalar, string or 1-D list (D4RL's ``metadata/policy/*/weight`` matrices) is dropped. A
    file whose last transition ends no episode gets it marked as a timeout, with a warning
    (from :func:`read_hdf5`). Values far outside their column's distribution are refused; so
    are, in a file with ``next_observations``, rows where they differ from the following
    row's ``observations`` without an episode end (a corrupted value, or an unmarked episode
    boundary) and episode ends where they do not differ (a corrupted flag).
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise _error(source, None, "no such file or directory")
    if path.is_dir():
        raise _error(source, None, "is a directory, expected a D4RL HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            _check_d4rl_shapes(f, source, obs_dim, act_dim)
            recorded_next = "next_observations" in f
    except OSError as exc:  # not HDF5, truncated or corrupt header
        raise _error(
            source, None, f"cannot read as HDF5, not HDF5 or truncated/corrupt ({exc})"
        ) from exc

    try:
        data = read_hdf5(path, default_task_id=0)
    except DatasetError as exc:
        if isinstance(exc.__cause__, OSError):  # a data block could not be read back
            key, cause = _find_unreadable(path)
            if key is not None:
                raise _error(
                    source, key, f"cannot read the data, corrupt or truncated file ({cause})"
                ) from exc
        raise

    if np.any(data.task_ids != 0):
        first = int(np.flatnonzero(data.task_ids != 0)[0])
        raise _error(
            source,
            "task_id",
            f"a real single-task dataset must have task id 0, found {data.task_ids[first]} "
            f"at index {first}; read multi-task files with cmt.data.hdf5.read_hdf5",
        )
    _check_float_outliers(data, source, _flat_index)
    if recorded_next:  # derived ones agree by construction
        _check_episode_boundaries(data, source)

    metadata = {k: v for k, v in data.metadata.items() if _is_flat_metadata(v)}
    metadata.update(source=source, source_kind="d4rl_hdf5")
    out = dataclasses.replace(data, metadata=metadata)
    validate(out, source)
    return out


def _check_d4rl_shapes(f: h5py.File, source: str, obs_dim: int, act_dim: int) -> None:
    if "observations" not in f and any(_EPISODE_RE.fullmatch(k) for k in f):
        raise _error(
            source,
            "observations",
            "missing; this looks like a Minari main_data.hdf5, pass the Minari dataset "
            "directory instead",
        )
    for key, name, want in (("observations", "obs_dim", obs_dim), ("actions", "act_dim", act_dim)):
        if key not in f:
            raise _error(source, key, "missing required dataset")
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise _error(source, key, "is a group, expected a dataset")
        if len(ds.shape) != 2:
            raise _error(source, key, f"expected a 2-D (N, width) array, got shape {ds.shape}")
        if ds.shape[1] != want:
            raise _error(
                source, key, f"width {ds.shape[1]} does not match the expected {name}={want}"
            )


def _find_unreadable(path: Path) -> tuple[str | None, OSError | None]:
    """First dataset in the file whose data HDF5 cannot read back, and the error."""
    found: list[tuple[str, OSError]] = []

    def visit(name: str, obj: Any) -> bool | None:
        if isinstance(obj, h5py.Dataset):
            try:
                obj[()]
            except OSError as exc:
                found.append((name, exc))
                return True  # stop visiting
        return None

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError:
        return None, None
    return found[0] if found else (None, None)


def _is_flat_metadata(value: Any) -> bool:
    """Scalars, strings and flat lists of them survive; nested lists (matrices) do not."""
    if isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(isinstance(v, bool | int | float | str) for v in value)
    return False


# --------------------------------------------------------------------------- Minari ids


def is_minari_id(source: str) -> bool:
    """Whether ``data.source`` names a Minari dataset by id rather than by path.

    A path is absolute, starts with ``.`` or ``~``, or ends in .hdf5/.h5 (a relative dataset
    directory is written ``./datasets/hopper-medium-v0``); anything else is an id. The rule
    reads the text alone, so the config check and the collect stage always agree.
    """
    return not (
        source.startswith((".", "~", "/", os.sep))
        or Path(source).is_absolute()
        or source.lower().endswith(HDF5_SUFFIXES)
    )


def check_minari_id(dataset_id: str) -> None:
    """Refuse (ValueError, one line) an id that is not Minari's ``(namespace/)name-v<N>`` or
    that has a component that is not a safe name: the id becomes a path under the Minari
    root, so ``..``, shell characters and spaces never reach one."""
    for part in dataset_id.split("/"):
        if not is_safe_name(part):
            raise ValueError(
                f"Minari dataset id {dataset_id!r}: component {part!r} is not a safe name "
                f"({NAME_RULE})"
            )
    if _MINARI_ID_RE.fullmatch(dataset_id) is None:
        raise ValueError(
            f"{dataset_id!r} is neither a path (absolute, starting with '.' or '~', or ending "
            "in .hdf5/.h5) nor a Minari dataset id (namespace/name-v<N> of letters, digits, '_' "
            f"and '-', e.g. mujoco/hopper/expert-v0); write a relative path as ./{dataset_id}"
        )


def minari_root() -> Path:
    """Minari's local datasets root as :func:`minari.storage.get_dataset_path` finds it:
    ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets`` (not created here)."""
    given = os.environ.get(MINARI_ROOT_ENV)
    return Path(given) if given is not None else Path.home() / ".minari" / "datasets"


def minari_dataset_dir(dataset_id: str, root: str | Path | None = None) -> Path:
    """``<root>/<dataset_id>``, where :func:`minari.load_dataset` looks for the dataset (its
    ``data/`` folder); ``root`` defaults to :func:`minari_root`. The id is checked first."""
    check_minari_id(dataset_id)
    return (minari_root() if root is None else Path(root)) / dataset_id


def resolve_source(source: str | Path) -> Path:
    """Where a dataset source is: a path as given (``~`` expanded), or the directory of a
    Minari id (:func:`is_minari_id`), which must exist locally: nothing is downloaded."""
    if isinstance(source, Path) or not is_minari_id(source):
        return Path(source).expanduser()
    try:
        path = minari_dataset_dir(source)
    except ValueError as exc:
        raise DatasetError(f"data.source: {exc}") from None
    if not (path / "data").is_dir():
        hint = ""
        if Path(source).exists():
            hint = f"; to read the local path {source!r} instead, write it as ./{source}"
        raise _error(
            path,
            None,
            f"no local Minari dataset {source!r} (looked where minari.load_dataset looks: "
            f"${MINARI_ROOT_ENV}, else ~/.minari/datasets, then the id); nothing is "
            f"downloaded here: copy the dataset there, or run `minari download {source}` "
            f"where there is internet{hint}",
        )
    return path


# --------------------------------------------------------------------------- Minari datasets


@dataclass(frozen=True)
class _Storage:
    """A Minari dataset's ``data/`` folder in the storage its metadata names: HDF5 (one file,
    a group ``episode_<i>`` per episode) or arrow / parquet (a folder ``<i>`` per episode)."""

    data_dir: Path
    data_format: str

    @property
    def meta_path(self) -> Path:
        return self.data_dir / _MINARI_META

    @property
    def file(self) -> Path:
        """What messages name: main_data.hdf5, or the folder of the episode folders."""
        return self.data_dir / _MINARI_DATA if self.data_format == "hdf5" else self.data_dir

    def episode(self, i: int) -> str:
        """Where episode ``i`` is inside :attr:`file`."""
        return f"episode_{i}" if self.data_format == "hdf5" else str(i)

    def key(self, i: int, key: str) -> str:
        """Where an array of episode ``i`` is inside :attr:`file`."""
        return f"{self.episode(i)}/{key}"


def _storage_of(path: Path, data: TransitionData) -> _Storage:
    """The storage of a dataset that :func:`read_minari_dataset` read from ``path``."""
    return _Storage(_minari_data_dir(path), str(data.metadata.get("data_format", "hdf5")))


def read_minari_dataset(
    path: str | Path, *, env_id: str, obs_dim: int, act_dim: int
) -> TransitionData:
    """Read a Minari dataset directory (or its ``data/`` folder) into D4RL's flat layout.

    Loaded with :class:`minari.MinariDataset` on the local data path (no network), from any
    of Minari's storages (:data:`MINARI_FORMATS`), every check the same for each. Per
    episode: ``observations = obs[:-1]``, ``next_observations = obs[1:]``, terminations ->
    ``terminals`` and truncations -> ``timeouts`` (kept apart); an episode whose last step is
    neither (a recording cut short) gets it marked as a timeout, with a warning. Numeric
    ``infos`` with one entry per observation (reset included) are kept, aligned with
    ``observations`` (entry t came with observation t, like D4RL's ``infos/qpos``).
    Only flat float Box observation and action spaces are supported. The metadata records
    what :func:`minari_summary` reports, and the recorded ``max_episode_steps`` and
    ``ref_min_score`` / ``ref_max_score`` where there are any.
    """
    path = Path(path)
    if not path.exists():
        raise _error(path, None, "no such file or directory")
    storage, meta = _read_minari_metadata(_minari_data_dir(path))
    meta_path = storage.meta_path
    recorded_env = _check_env_spec(meta, meta_path, env_id)
    for key in ("total_episodes", "total_steps"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _error(meta_path, key, f"expected a non-negative integer, got {value!r}")

    dataset = _open_minari(storage.data_dir, meta_path)
    _check_box(dataset.observation_space, meta_path, "observation_space", "observations", obs_dim)
    _check_box(dataset.action_space, meta_path, "action_space", "actions", act_dim)
    if storage.data_format == "hdf5":
        _check_episode_layout(storage.file, meta, obs_dim, act_dim)
    else:
        _check_arrow_layout(storage, meta, obs_dim, act_dim)

    data = _read_episodes(dataset, storage)
    metadata = {"source": str(path), **_minari_metadata(meta, storage, recorded_env)}
    out = TransitionData(**data, metadata=metadata)
    _check_float_outliers(out, str(storage.file), _episode_locator(out, storage))
    validate(out, str(storage.file))
    return out


def _read_episodes(dataset: Any, storage: _Storage) -> dict[str, Any]:
    """:func:`_flatten_episodes`; a block the storage cannot read back names its file."""
    if storage.data_format == "hdf5":
        try:
            return _flatten_episodes(dataset, storage)
        except OSError as exc:  # a data block HDF5 could not read back
            bad_key, cause = _find_unreadable(storage.file)
            raise _error(
                storage.file,
                bad_key,
                f"cannot read the data, corrupt or truncated file ({cause or exc})",
            ) from exc
    import pyarrow as pa

    try:
        return _flatten_episodes(dataset, storage)
    except (pa.ArrowException, OSError) as exc:
        raise _error(
            storage.file,
            None,
            f"cannot read the data, corrupt or truncated {storage.data_format} files ({exc})",
        ) from exc


_SUMMARY_KEYS = {
    "dataset_id": "dataset_id",
    "env_id": "env_id",
    "algorithm": "algorithm_name",
    "minari_version": "minari_version",
    "data_format": "data_format",
    "code_permalink": "code_permalink",
    "author": "author",
    "max_episode_steps": "max_episode_steps",
    "ref_min_score": "ref_min_score",
    "ref_max_score": "ref_max_score",
}
"""Our metadata key -> Minari's name for it, of what a Minari source reports."""


def minari_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a Minari source's metadata records, under Minari's own names (``algorithm_name``,
    ``minari_version``, ...): for the collect stage's summary and its MLflow tags
    ``minari.<name>``. Empty for data that is not from a Minari dataset."""
    if metadata.get("source_kind") != "minari":
        return {}
    return {name: metadata[key] for key, name in _SUMMARY_KEYS.items() if key in metadata}


def source_references(source: str | Path) -> tuple[float, float] | None:
    """A Minari source's own ``(ref_min_score, ref_max_score)``, read from its metadata.json
    alone; None when it records neither, and for a D4RL file (not read)."""
    if str(source).lower().endswith(HDF5_SUFFIXES):
        return None
    path = resolve_source(source)
    if not path.exists():
        raise _error(path, None, "no such file or directory")
    storage, meta = _read_minari_metadata(_minari_data_dir(path))
    return _minari_references(meta, storage.meta_path)


def _minari_metadata(meta: dict[str, Any], storage: _Storage, env_id: str) -> dict[str, Any]:
    """A Minari dataset's metadata.json as flat TransitionData metadata (train.hdf5 keeps it);
    author e-mails stay out."""
    out: dict[str, Any] = {
        "source_kind": "minari",
        "dataset_id": str(meta.get("dataset_id", "")),
        "env_id": env_id,
        "minari_version": str(meta.get("minari_version", "")),
        "data_format": storage.data_format,
        "total_episodes": int(meta["total_episodes"]),
        "total_steps": int(meta["total_steps"]),
    }
    for key, ours in (("algorithm_name", "algorithm"), ("code_permalink", "code_permalink")):
        if isinstance(meta.get(key), str):
            out[ours] = meta[key]
    author = meta.get("author")  # Minari writes a set of names as a JSON list
    if isinstance(author, str):
        out["author"] = author
    elif isinstance(author, list) and author and all(isinstance(a, str) for a in author):
        out["author"] = ", ".join(sorted(author))
    steps = _max_episode_steps(meta, storage.meta_path)
    if steps is not None:
        out["max_episode_steps"] = steps
    refs = _minari_references(meta, storage.meta_path)
    if refs is not None:
        out["ref_min_score"], out["ref_max_score"] = refs
    return out


def _max_episode_steps(meta: dict[str, Any], meta_path: Path) -> int | None:
    """The time limit the episodes were recorded under (``env_spec``), if it names one."""
    spec = meta["env_spec"]  # present and readable: _check_env_spec ran first
    steps = (json.loads(spec) if isinstance(spec, str) else spec).get("max_episode_steps")
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise _error(
            meta_path, "env_spec", f"max_episode_steps: expected a positive integer, got {steps!r}"
        )
    return steps


def _minari_references(meta: dict[str, Any], meta_path: Path) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` a Minari dataset records for its normalised score
    (a random and an expert policy's mean return); None when it records neither."""
    if meta.get("ref_min_score") is None and meta.get("ref_max_score") is None:
        return None
    scores: list[float] = []
    for key in ("ref_min_score", "ref_max_score"):
        value = meta.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _error(
                meta_path, key, f"expected a finite number (both reference scores), got {value!r}"
            )
        scores.append(float(value))
    low, high = scores
    if high <= low:
        raise _error(
            meta_path,
            "ref_max_score",
            f"{high!r} is not above ref_min_score {low!r}: no normalised score can use them",
        )
    return low, high


def _episode_locator(data: TransitionData, storage: _Storage) -> Locate:
    """Where a flat row of flattened Minari episodes is stored: ``episode_<e>/<key>`` (HDF5)
    or ``<e>/<key>`` (arrow, parquet) at a step (``next_observations[i]`` is the episode's
    observation one step later)."""
    starts, _ = episode_bounds(data.terminals, data.timeouts)

    def locate(key: str, row: int) -> tuple[str, str]:
        episode = int(np.searchsorted(starts, row, side="right")) - 1
        step = row - int(starts[episode])
        if key == "next_observations":
            key, step = "observations", step + 1
        return storage.key(episode, key), f"step {step}"

    return locate


def _minari_data_dir(path: Path) -> Path:
    """``<dir>/data`` of a Minari dataset directory; ``path`` itself if it is that folder."""
    if path.is_dir():
        for candidate in (path / "data", path):
            if (candidate / _MINARI_DATA).is_file() or (candidate / _MINARI_META).is_file():
                return candidate
    raise _error(
        path,
        None,
        f"not a Minari dataset directory (no data/{_MINARI_DATA} or data/{_MINARI_META})",
    )


def _read_minari_metadata(data_dir: Path) -> tuple[_Storage, dict[str, Any]]:
    meta_path, main_path = data_dir / _MINARI_META, data_dir / _MINARI_DATA
    if not meta_path.is_file():
        raise _error(meta_path, _MINARI_META, "missing: no such file")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(meta_path, _MINARI_META, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _error(meta_path, _MINARI_META, f"expected a JSON object, got {type(meta).__name__}")
    data_format = meta.get("data_format")
    if data_format not in MINARI_FORMATS:
        raise _error(
            meta_path,
            "data_format",
            f"Minari storage {data_format!r} is not one of {', '.join(MINARI_FORMATS)}",
        )
    if data_format == "hdf5" and not main_path.is_file():
        raise _error(main_path, _MINARI_DATA, "missing: no such file")
    return _Storage(data_dir, data_format), meta


def _parse_env_id(env_id: str) -> tuple[str | None, str, int | None]:
    from gymnasium.envs.registration import parse_env_id

    try:
        return parse_env_id(env_id)
    except Exception as exc:  # gymnasium.error.Error for malformed ids
        raise ValueError(f"malformed Gymnasium env id {env_id!r} ({exc})") from exc


def _check_env_spec(meta: dict[str, Any], meta_path: Path, env_id: str) -> str:
    """The recorded env id; an error if its environment differs from ``env_id``'s."""
    wanted_ns, wanted_name, wanted_version = _parse_env_id(env_id)
    spec = meta.get("env_spec")
    if spec is None:
        raise _error(
            meta_path, "env_spec", f"missing: cannot check the data was recorded on {env_id}"
        )
    try:
        spec_dict = json.loads(spec) if isinstance(spec, str) else spec
        recorded = spec_dict["id"]
        if not isinstance(recorded, str):
            raise TypeError(f"id is {type(recorded).__name__}")
        ns, name, version = _parse_env_id(recorded)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise _error(meta_path, "env_spec", f"no readable environment id ({exc!r})") from exc
    if (ns, name) != (wanted_ns, wanted_name):
        raise _error(
            meta_path,
            "env_spec",
            f"recorded on environment {recorded!r}, which is not {env_id!r} "
            f"(environment name {name!r} != {wanted_name!r})",
        )
    if version != wanted_version:
        warnings.warn(
            f"{meta_path}: key 'env_spec': recorded on {recorded!r}, evaluated on {env_id!r} "
            "(same environment, different version)",
            UserWarning,
            stacklevel=3,
        )
    return recorded


def _open_minari(data_dir: Path, meta_path: Path) -> Any:
    """``minari.MinariDataset`` on the local data path; reads metadata only, no episodes."""
    import minari

    try:
        return minari.MinariDataset(data_dir)
    # Minari signals bad metadata with ValueError, KeyError and bare asserts (and a missing
    # pyarrow with ImportError).
    except (ValueError, KeyError, TypeError, AssertionError, ImportError) as exc:
        raise _error(meta_path, _MINARI_META, f"Minari cannot open the dataset ({exc!r})") from exc


def _check_box(space: Any, meta_path: Path, space_key: str, data_key: str, want: int) -> None:
    from gymnasium import spaces

    if (
        not isinstance(space, spaces.Box)
        or len(space.shape) != 1
        or not np.issubdtype(space.dtype, np.floating)
    ):
        raise _error(
            meta_path,
            space_key,
            f"only flat float Box spaces are supported, got {space}",
        )
    if space.shape[0] != want:
        what = "obs_dim" if data_key == "observations" else "act_dim"
        raise _error(
            meta_path,
            data_key,
            f"width {space.shape[0]} ({space_key} {space}) does not match the expected "
            f"{what}={want}",
        )


def _check_episode_layout(
    main_path: Path, meta: dict[str, Any], obs_dim: int, act_dim: int
) -> None:
    """Episode groups and dataset shapes in main_data.hdf5 against metadata.json (no reads)."""
    try:
        f = h5py.File(main_path, "r")
    except OSError as exc:
        raise _error(
            main_path, None, f"cannot read as HDF5, not HDF5 or truncated/corrupt ({exc})"
        ) from exc
    with f:
        indices = []
        for name in f:
            match = _EPISODE_RE.fullmatch(name)
            if match is None or not isinstance(f[name], h5py.Group):
                raise _error(main_path, name, "unexpected entry, expected episode_<i> groups")
            indices.append(int(match.group(1)))
        _check_episode_count(main_path, meta, indices, "episode_{}")
        total = 0
        for i in sorted(indices):
            total += _check_episode_shapes(f[f"episode_{i}"], main_path, i, obs_dim, act_dim)
        _check_step_count(main_path, meta, total)


def _check_episode_count(file: Path, meta: dict[str, Any], indices: list[int], key: str) -> None:
    """Episodes numbered 0..n-1 (``key`` spells episode i), n as metadata.json says."""
    indices = sorted(indices)
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
        raise _error(file, key.format(missing[0]), "missing: episodes are not 0..n-1")
    if len(indices) != meta["total_episodes"]:
        raise _error(
            file.parent / _MINARI_META if file.is_file() else file / _MINARI_META,
            "total_episodes",
            f"says {meta['total_episodes']} episodes, {file.name} has {len(indices)}",
        )


def _check_step_count(file: Path, meta: dict[str, Any], total: int) -> None:
    if total != meta["total_steps"]:
        raise _error(
            file.parent / _MINARI_META if file.is_file() else file / _MINARI_META,
            "total_steps",
            f"says {meta['total_steps']} steps, the episodes in {file.name} have {total}",
        )


_EPISODE_DIR_RE = re.compile(r"0|[1-9]\d*")


def _check_arrow_layout(
    storage: _Storage, meta: dict[str, Any], obs_dim: int, act_dim: int
) -> None:
    """Episode folders and column types of arrow / parquet storage against metadata.json
    (file footers and schemas only, no data)."""
    indices = []
    for entry in storage.data_dir.iterdir():
        if entry.name == _MINARI_META or entry.name.startswith((".", "_")):
            continue  # what Minari's own reader skips
        if not (entry.is_dir() and _EPISODE_DIR_RE.fullmatch(entry.name)):
            raise _error(
                storage.file, entry.name, "unexpected entry, expected one folder <i> per episode"
            )
        indices.append(int(entry.name))
    _check_episode_count(storage.file, meta, indices, "{}")
    total = sum(_arrow_episode_steps(storage, i, obs_dim, act_dim) for i in sorted(indices))
    _check_step_count(storage.file, meta, total)


def _arrow_episode_steps(storage: _Storage, i: int, obs_dim: int, act_dim: int) -> int:
    """Steps of episode ``i`` from its row count (steps + 1: the last row is the final
    observation, its other columns padding), its columns and widths checked."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    fmt = storage.data_format
    try:
        episode = pads.dataset(
            storage.data_dir / str(i), format=fmt, ignore_prefixes=["_", ".", _MINARI_META]
        )
        schema, rows = episode.schema, episode.count_rows()
    except (pa.ArrowException, OSError) as exc:
        raise _error(
            storage.file, str(i), f"cannot read as {fmt}, not {fmt} or truncated/corrupt ({exc})"
        ) from exc
    for key in ("observations", "actions", "rewards", "terminations", "truncations"):
        if key not in schema.names:
            raise _error(storage.file, storage.key(i, key), "missing (no such column)")
    if rows < 2:
        raise _error(
            storage.file,
            storage.key(i, "rewards"),
            f"expected T + 1 rows with T >= 1 (the last one the final observation), got {rows}",
        )
    for key in ("terminations", "truncations"):
        # Bits cannot hold anything but 0 or 1; another type would not even merge with the
        # other episodes' columns when Minari reads them together.
        if not pa.types.is_boolean(schema.field(key).type):
            raise _error(
                storage.file,
                storage.key(i, key),
                f"type {schema.field(key).type}, expected bool (flags are stored as bits)",
            )
    for key, what, want in (("observations", "obs_dim", obs_dim), ("actions", "act_dim", act_dim)):
        kind = schema.field(key).type
        if not pa.types.is_fixed_size_list(kind) or kind.list_size != want:
            got = f"width {kind.list_size}" if pa.types.is_fixed_size_list(kind) else f"type {kind}"
            raise _error(
                storage.file,
                storage.key(i, key),
                f"{got} does not match the expected {what}={want}",
            )
    return rows - 1


def _check_episode_shapes(
    group: h5py.Group, main_path: Path, i: int, obs_dim: int, act_dim: int
) -> int:
    prefix = f"episode_{i}"
    for key in ("observations", "actions", "rewards", "terminations", "truncations"):
        if not isinstance(group.get(key), h5py.Dataset):
            raise _error(main_path, f"{prefix}/{key}", "missing (or not a dataset)")
    steps = group["rewards"].shape[0] if group["rewards"].ndim == 1 else -1
    if steps < 1:
        raise _error(
            main_path,
            f"{prefix}/rewards",
            f"expected shape (T,) with T >= 1, got {group['rewards'].shape}",
        )
    expected = {
        "observations": (steps + 1, obs_dim),
        "actions": (steps, act_dim),
        "terminations": (steps,),
        "truncations": (steps,),
    }
    for key, shape in expected.items():
        got = group[key].shape
        if got != shape:
            if len(got) == 2 and len(shape) == 2 and got[1] != shape[1]:
                what = "obs_dim" if key == "observations" else "act_dim"
                problem = f"width {got[1]} does not match the expected {what}={shape[1]}"
            else:
                problem = f"shape {got}, expected {shape} ({steps} steps)"
            raise _error(main_path, f"{prefix}/{key}", problem)
    return steps


def _flatten_episodes(dataset: Any, storage: _Storage) -> dict[str, Any]:
    """Concatenate the episodes read by Minari into D4RL's flat arrays (checked per episode)."""
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next")
    }
    infos: list[dict[str, np.ndarray | None]] = []
    cut_short: list[int] = []
    file = storage.file
    for ep in dataset.iterate_episodes():
        obs, actions, rewards, term, trunc = _episode_arrays(ep, storage)
        if not (term[-1] or trunc[-1]):
            cut_short.append(int(ep.id))
            trunc = trunc.copy()
            trunc[-1] = True
        parts["observations"].append(obs[:-1])
        parts["next"].append(obs[1:])
        parts["actions"].append(actions)
        parts["rewards"].append(rewards)
        parts["terminals"].append(term)
        parts["timeouts"].append(trunc)
        infos.append(_episode_infos(ep.infos, rewards.shape[0]))
    if not infos:
        raise _error(file, None, "dataset has no episodes")
    if cut_short:
        warnings.warn(
            f"{file}: {len(cut_short)} episode(s) end with neither termination nor "
            f"truncation (first: {storage.episode(cut_short[0])}); marking their last "
            "step as a timeout",
            UserWarning,
            stacklevel=4,
        )
    data: dict[str, Any] = {
        "observations": np.concatenate(parts["observations"]),
        "actions": np.concatenate(parts["actions"]),
        "rewards": np.concatenate(parts["rewards"]),
        "terminals": np.concatenate(parts["terminals"]),
        "timeouts": np.concatenate(parts["timeouts"]),
        "next_observations": np.concatenate(parts["next"]),
    }
    # Cross-check the flattening: exactly one flat episode per Minari episode.
    _, lengths = episode_bounds(data["terminals"], data["timeouts"])
    if lengths.size != len(infos):
        raise _error(file, None, f"{len(infos)} episodes flattened into {lengths.size}")
    data["task_ids"] = np.zeros(len(data["rewards"]), dtype=np.int64)
    data["infos"] = _merge_infos(infos, file)
    return data


def _episode_arrays(ep: Any, storage: _Storage) -> tuple[np.ndarray, ...]:
    """Observations (T + 1), actions, rewards, terminations and truncations of one Minari
    episode, each value checked; an episode that ends before its last step is refused."""
    file, key = storage.file, lambda name: storage.key(int(ep.id), name)
    obs = _episode_float(ep.observations, file, key("observations"))
    actions = _episode_float(ep.actions, file, key("actions"))
    rewards = _episode_float(ep.rewards, file, key("rewards"))
    term = _episode_flags(ep.terminations, file, key("terminations"))
    trunc = _episode_flags(ep.truncations, file, key("truncations"))
    early = np.flatnonzero((term | trunc)[:-1])
    if early.size:
        name = "terminations" if term[early[0]] else "truncations"
        raise _error(
            file,
            key(name),
            f"episode ends at step {int(early[0])}, before its last step {rewards.shape[0] - 1}",
        )
    return obs, actions, rewards, term, trunc


def _episode_float(value: Any, main_path: Path, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise _error(main_path, key, f"dtype {arr.dtype}, expected a floating dtype")
    check_float_values(str(main_path), key, arr)  # bounded, so the float32 cast cannot overflow
    return arr.astype(np.float32)


def _episode_flags(value: Any, main_path: Path, key: str) -> np.ndarray:
    return as_flags(str(main_path), key, np.asarray(value))


def _flatten_info(infos: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(infos, dict):
        for name, value in infos.items():
            out.update(_flatten_info(value, f"{prefix}{name}/"))
    elif prefix:
        out[prefix.rstrip("/")] = infos
    return out


def _episode_infos(infos: Any, steps: int) -> dict[str, np.ndarray | None]:
    """Numeric infos with one entry per observation (T + 1), cut to observations[:-1].

    None marks an info that is present but unusable (not numeric, or another length).
    """
    kept: dict[str, np.ndarray | None] = {}
    for name, value in _flatten_info(infos).items():
        arr = np.asarray(value)
        usable = arr.ndim >= 1 and arr.shape[0] == steps + 1 and arr.dtype.kind in "biuf"
        kept[name] = arr[:-1] if usable else None
    return kept


def _merge_infos(
    per_episode: list[dict[str, np.ndarray | None]], main_path: Path
) -> dict[str, np.ndarray]:
    """Infos usable in every episode with one trailing shape, concatenated; others dropped."""
    names = sorted(set().union(*per_episode))
    merged: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    for name in names:
        arrays = [ep.get(name) for ep in per_episode]
        usable = [a for a in arrays if a is not None]
        if len(usable) != len(arrays) or len({a.shape[1:] for a in usable}) != 1:
            dropped.append(name)
            continue
        merged[name] = np.concatenate(usable)
    if dropped:
        warnings.warn(
            f"{main_path}: dropping infos {dropped}: not numeric with one entry per observation "
            "in every episode",
            UserWarning,
            stacklevel=5,
        )
    return merged

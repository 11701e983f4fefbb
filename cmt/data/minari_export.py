"""Write a dataset of this project as a Minari dataset, so tools built for D4RL / Minari read it.

The D4RL-layout HDF5 file (``train.hdf5``) stays the pipeline's own format; this is an export
of it. Only single-task, single-agent data (the D4RL-style benchmark's) can be written: a
Minari dataset records one environment and one agent, so multi-task (meta-RL) data and team
data with an agent axis (SMAX) are refused.

Each episode becomes one Minari episode: its ``observations`` followed by its last
``next_observations`` row (T + 1 observations, Minari's layout), and its actions, rewards,
terminations (``terminals``) and truncations (``timeouts``) as stored. Numeric infos get
Minari's T + 1 entries too: the final observation's info was never recorded, so that slot
repeats the last step's (:func:`cmt.data.sources.read_minari_dataset` drops it again).

Minari's own writer (:func:`minari.create_dataset_from_buffers`) writes into a hidden
temporary root beside the destination (Minari's listings skip hidden folders), and the
finished dataset is then renamed into place: a failed or killed export leaves no dataset
under the id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmt.atomic import make_dir, write_bytes
from cmt.data.hdf5 import DatasetError, episode_bounds, read_hdf5
from cmt.data.schema import TransitionData
from cmt.data.sources import MINARI_FORMATS, MINARI_ROOT_ENV, minari_dataset_dir, minari_root

__all__ = ["About", "export_file", "export_minari"]

_NAMESPACE_FILE = "namespace_metadata.json"  # Minari's marker of a namespace folder


@dataclasses.dataclass(frozen=True)
class About:
    """What a Minari dataset records about where its data came from (all optional)."""

    references: tuple[float, float] | None = None  # ref_min_score, ref_max_score
    algorithm_name: str | None = None
    author: str | None = None
    code_permalink: str | None = None
    description: str | None = None


def export_minari(
    data: TransitionData,
    dataset_id: str,
    *,
    env_id: str | None = None,
    root: str | Path | None = None,
    about: About | None = None,
    data_format: str = "hdf5",
    force: bool = False,
) -> Path:
    """Write ``data`` as the Minari dataset ``dataset_id`` under ``root`` (Minari's own root,
    ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``, by default); returns its directory,
    which ``minari.load_dataset(dataset_id)`` reads under that root.

    ``env_id`` (default: the data's recorded ``env_id``) is the Gymnasium environment the
    dataset records, with the data's ``max_episode_steps`` where it records one. An existing
    dataset of that id is refused unless ``force``. Raises :class:`DatasetError` for data
    that cannot be written (multi-task, multi-agent, widths that are not the environment's)
    and ValueError for an id that is not a safe Minari id.
    """
    if data_format not in MINARI_FORMATS:
        raise ValueError(f"data_format {data_format!r} is not one of {', '.join(MINARI_FORMATS)}")
    dest_root = minari_root() if root is None else Path(root)
    dest = minari_dataset_dir(dataset_id, dest_root)
    source = str(data.metadata.get("source", "<data>"))
    _check_exportable(data, source)
    env_id = env_id or data.metadata.get("env_id")
    if not isinstance(env_id, str) or not env_id:
        raise DatasetError(f"{source}: records no env_id; name the Gymnasium environment")
    spec, spaces = _env(env_id, data, source)
    if dest.exists() and not force:
        raise DatasetError(
            f"{dest}: Minari dataset {dataset_id!r} already exists; pass --force to replace it"
        )
    about = about or About()
    write_args: dict[str, Any] = {
        "env": spec,
        "eval_env": spec,
        "observation_space": spaces[0],
        "action_space": spaces[1],
        "algorithm_name": about.algorithm_name,
        "author": about.author,
        "code_permalink": about.code_permalink,
        "description": about.description,
        "data_format": data_format,
    }
    if about.references is not None:
        write_args["ref_min_score"], write_args["ref_max_score"] = about.references
    buffers = _episode_buffers(data, data_format)
    _write(dest_root, dataset_id, buffers, write_args)
    return dest


def export_file(
    path: str | Path,
    dataset_id: str,
    *,
    env_id: str | None = None,
    root: str | Path | None = None,
    author: str | None = None,
    data_format: str = "hdf5",
    force: bool = False,
) -> Path:
    """:func:`export_minari` of a dataset file this project wrote (``data/<name>/train.hdf5``),
    with the reference returns of the ``references.json`` beside it as ``ref_min_score`` /
    ``ref_max_score``, and its recorded algorithm (or behaviour policy) and code link."""
    from cmt.integrity import read_json

    path = Path(path)
    data = read_hdf5(path)
    meta = data.metadata
    refs_path = path.parent / "references.json"
    references = None
    if refs_path.exists():
        task = read_json(refs_path).get("0")
        if isinstance(task, dict) and {"random", "expert"} <= set(task):
            references = (float(task["random"]), float(task["expert"]))
    level = f" at level {meta['level']}" if isinstance(meta.get("level"), str) else ""
    about = About(
        references=references,
        algorithm_name=_text(meta.get("algorithm")) or _text(meta.get("behaviour")),
        author=author or _text(meta.get("author")),
        code_permalink=_text(meta.get("code_permalink")),
        description=f"Exported by cmt from {path.parent.name}/{path.name}{level}.",
    )
    data = dataclasses.replace(data, metadata={**meta, "source": str(path)})
    return export_minari(
        data,
        dataset_id,
        env_id=env_id,
        root=root,
        about=about,
        data_format=data_format,
        force=force,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_exportable(data: TransitionData, source: str) -> None:
    """Refuse data a Minari dataset cannot hold: one environment, one agent."""
    if data.multi_agent or data.avail_actions is not None:
        raise DatasetError(
            f"{source}: team data ({data.num_agents} agents with an agent axis, SMAX) cannot "
            "be written as a Minari dataset, which has one agent; only single-task, "
            "single-agent (D4RL-style) datasets can"
        )
    tasks = np.unique(data.task_ids)
    num_tasks = data.metadata.get("num_tasks", 1)
    if tasks.size > 1 or (isinstance(num_tasks, int) and num_tasks > 1):
        raise DatasetError(
            f"{source}: multi-task data ({max(tasks.size, int(num_tasks))} tasks, meta-RL) "
            "cannot be written as a Minari dataset, which records one environment; only "
            "single-task, single-agent (D4RL-style) datasets can"
        )


def _env(env_id: str, data: TransitionData, source: str) -> tuple[Any, tuple[Any, Any]]:
    """The EnvSpec the dataset records (the data's time limit where it records one) and
    float32 Box spaces of the environment's bounds and the data's widths and dtype."""
    import gymnasium as gym

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise DatasetError(f"{source}: {env_id!r} is not a Gymnasium environment ({exc})") from None
    steps = data.metadata.get("max_episode_steps")
    if isinstance(steps, int) and steps != spec.max_episode_steps:
        spec = dataclasses.replace(spec, max_episode_steps=steps)
    env = gym.make(spec)
    try:
        spaces = []
        for key, space, arr in (
            ("observations", env.observation_space, data.observations),
            ("actions", env.action_space, data.actions),
        ):
            if not isinstance(space, gym.spaces.Box) or space.shape != arr.shape[1:]:
                raise DatasetError(
                    f"{source}: key '{key}': shape {arr.shape[1:]} is not {env_id}'s {space}"
                )
            low, high = space.low.astype(arr.dtype), space.high.astype(arr.dtype)
            spaces.append(gym.spaces.Box(low, high, space.shape, arr.dtype))
    finally:
        env.close()
    return spec, (spaces[0], spaces[1])


def _episode_buffers(data: TransitionData, data_format: str) -> list[Any]:
    """One :class:`minari.data_collector.EpisodeBuffer` per episode of ``data``."""
    from minari.data_collector import EpisodeBuffer

    starts, lengths = episode_bounds(data.terminals, data.timeouts)
    buffers = []
    for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        end = start + length
        buffers.append(
            EpisodeBuffer(
                id=i,
                # (T + 1, obs_dim): the episode's observations and its final next observation
                observations=np.concatenate(
                    [data.observations[start:end], data.next_observations[end - 1 : end]]
                ),
                actions=data.actions[start:end],
                rewards=data.rewards[start:end],
                terminations=data.terminals[start:end],
                truncations=data.timeouts[start:end],
                infos=_episode_infos(data.infos, start, end, data_format),
            )
        )
    return buffers


def _episode_infos(
    infos: dict[str, np.ndarray], start: int, end: int, data_format: str
) -> dict[str, Any] | None:
    """Infos of one episode with T + 1 entries (the last repeats step T's), under their flat
    names: HDF5 makes groups of a nested name ``a/b`` itself, and Minari 0.5.4's arrow
    decoder cannot read nested infos back, but reads a field named ``a/b``."""
    if not infos:
        return None
    out: dict[str, Any] = {}
    for name, arr in infos.items():
        steps = arr[start:end]
        value: Any = np.concatenate([steps, steps[-1:]])
        if value.ndim == 1 and data_format != "hdf5":
            # Nor can that decoder read back a 1-D array info (it records an empty shape);
            # a list of scalars it can.
            value = value.tolist()
        out[name] = value
    return out


@contextlib.contextmanager
def _minari_root_set(root: Path) -> Iterator[None]:
    """Minari's writer takes its root from the environment only: set it, then restore it
    (process-wide while it lasts, so exports must not run in parallel threads)."""
    before = os.environ.get(MINARI_ROOT_ENV)
    os.environ[MINARI_ROOT_ENV] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MINARI_ROOT_ENV, None)
        else:
            os.environ[MINARI_ROOT_ENV] = before


def _write(root: Path, dataset_id: str, buffers: list[Any], write_args: dict[str, Any]) -> None:
    """Minari's writer into a hidden temporary root on the same file system, then renames:
    the namespace markers first, the dataset last (replacing an existing one)."""
    import minari

    make_dir(root)
    staging = Path(tempfile.mkdtemp(prefix=".cmt-export-", dir=root))
    try:
        with _minari_root_set(staging), warnings.catch_warnings():
            # Minari advises on every field left None (author_email, ...): not our problem.
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None")
            minari.create_dataset_from_buffers(dataset_id, buffers, **write_args)
        # Minari's namespace is everything before the last '/' of the id.
        parts = dataset_id.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = Path(*parts[:depth])
            marker = root / prefix / _NAMESPACE_FILE
            if not marker.exists() and (staging / prefix / _NAMESPACE_FILE).exists():
                write_bytes(marker, (staging / prefix / _NAMESPACE_FILE).read_bytes())
        dest = root / dataset_id
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = staging / ".replaced"
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(staging / dataset_id, dest)
        except OSError:
            if old.exists():
                os.replace(old, dest)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

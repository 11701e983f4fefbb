"""A typed registry of task families; unknown ids raise with the list of known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import gymnasium as gym
import numpy as np

from cmt.config import DataConfig


class BatchedEnv(Protocol):
    """Many episodes of (possibly different) tasks stepped together, one call per step."""

    num_envs: int

    def reset(self, seed: int) -> np.ndarray:
        """Start every episode; returns observations (B, obs_dim)."""
        ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions (B, act_dim): obs (B, obs_dim), rewards, terminated, truncated (B,).

        Stepping an episode that already ended is allowed; callers ignore its outputs."""
        ...


class TaskFamily(Protocol):
    """A family of related tasks (goals, velocities, directions) sharing spaces."""

    name: str
    num_tasks: int
    obs_dim: int
    act_dim: int
    horizon: int

    def make_env(self, task_id: int) -> gym.Env:
        """One Gymnasium environment for ``task_id``."""
        ...

    def make_batched_env(self, task_ids: np.ndarray) -> BatchedEnv:
        """A batched environment with one episode per entry of ``task_ids``."""
        ...


def check_task_ids(task_ids: np.ndarray, num_tasks: int, family: str) -> np.ndarray:
    """``task_ids`` as int64, or a ValueError naming the first id outside [0, num_tasks)."""
    ids = np.asarray(task_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"task_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= num_tasks)]
    if bad.size:
        raise ValueError(f"task id {int(bad[0])} is outside [0, {num_tasks}) of family {family!r}")
    return ids.astype(np.int64)


_FAMILIES: dict[str, Callable[[DataConfig], TaskFamily]] = {}


def register_family(name: str) -> Callable[[Callable[[DataConfig], TaskFamily]], Callable]:
    """Decorator: register a family factory under ``name`` (explicit, no import side effects)."""

    def wrap(factory: Callable[[DataConfig], TaskFamily]) -> Callable[[DataConfig], TaskFamily]:
        _FAMILIES[name] = factory
        return factory

    return wrap


def _load_builtin() -> None:
    # Imported lazily so that importing cmt.envs registers nothing by itself.
    from cmt.envs import mujoco_tasks, point_robot  # noqa: F401


def registered_families() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def make_family(cfg: DataConfig) -> TaskFamily:
    """Build the family named by ``cfg.family``."""
    _load_builtin()
    try:
        factory = _FAMILIES[cfg.family]
    except KeyError:
        raise KeyError(
            f"unknown task family {cfg.family!r}; registered: {sorted(_FAMILIES)}"
        ) from None
    return factory(cfg)

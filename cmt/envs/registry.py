"""What the environment side of every benchmark provides: task families and batched envs.

Benchmarks (``cmt/benchmarks/``) build their families; nothing is registered globally."""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np


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


class MultiAgentBatchedEnv(Protocol):
    """Many episodes of a cooperative multi-agent game stepped together (SMAX,
    ``cmt/envs/smax.py``): per-agent observations and available-action masks, discrete
    actions, one team reward. An adapter for another such game (the real SMAC: docs/smax.md)
    implements the same."""

    num_envs: int
    num_agents: int
    obs_dim: int
    num_actions: int

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start every episode: obs (B, A, obs_dim) float32, avail (B, A, num_actions) bool."""
        ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions (B, A) int: obs, avail, team reward (B,) float32, terminated,
        truncated, won (B,) bool.

        Stepping an episode that already ended is allowed (it stays frozen, never restarts);
        callers ignore its outputs."""
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

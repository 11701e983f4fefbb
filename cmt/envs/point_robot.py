"""Point-robot navigation to goals on a half circle (PEARL / BOReL style), pure NumPy.

The agent is a point in the plane that starts at the origin and moves by at most
``STEP_SIZE`` per axis per step; the reward is the negative distance to the task's goal.
Tasks differ only in the goal, which sits on the upper half of a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from cmt.envs.registry import check_task_ids

STEP_SIZE = np.float32(0.1)
"""Largest displacement per axis and step (actions in [-1, 1] are scaled by it)."""


def goal_positions(num_tasks: int, radius: float = 1.0) -> np.ndarray:
    """Goals evenly spaced in angle on the upper half circle; (num_tasks, 2) float32."""
    angles = np.linspace(0.0, np.pi, num_tasks)
    return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)


def _move(position: np.ndarray, action: np.ndarray) -> np.ndarray:
    # Shared by the single and batched env so both produce bit-identical float32 trajectories.
    return position + STEP_SIZE * np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def _distance(position: np.ndarray, goal: np.ndarray) -> np.ndarray:
    # Written out element-wise (no BLAS dot / reduction) so scalar and vector paths agree bitwise.
    d = position - goal
    return np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])


class PointRobotEnv(gym.Env[np.ndarray, np.ndarray]):
    """One point-robot episode towards a fixed ``goal``; truncated after ``horizon`` steps."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal: np.ndarray, horizon: int = 50) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.goal = np.asarray(goal, dtype=np.float32).reshape(2)
        self.horizon = int(horizon)
        # Finite bounds (the robot cannot leave this square within an episode) rather than
        # +-inf, which Gymnasium's checker warns about; the slack covers float32 accumulation.
        limit = float(STEP_SIZE) * self.horizon * 1.001
        self.observation_space = gym.spaces.Box(-limit, limit, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float32)
        self._t = 0

    def _info(self) -> dict[str, Any]:
        return {"goal": self.goal.copy()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # Deterministic start: the task is fully defined by the goal.
        self._position = np.zeros(2, dtype=np.float32)
        self._t = 0
        return self._position.copy(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._position = _move(self._position, action)
        self._t += 1
        reward = -float(_distance(self._position, self.goal))
        truncated = self._t >= self.horizon
        return self._position.copy(), reward, False, truncated, self._info()


class BatchedPointRobot:
    """``num_envs`` point-robot episodes (one goal each) stepped together, fully vectorised."""

    def __init__(self, goals: np.ndarray, horizon: int = 50) -> None:
        goals = np.asarray(goals, dtype=np.float32)
        if goals.ndim != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must have shape (B, 2), got {goals.shape}")
        self.goals = goals
        self.horizon = int(horizon)
        self.num_envs = int(goals.shape[0])
        self.np_random = np.random.default_rng()
        self._positions = np.zeros_like(goals)
        self._t = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Put every robot at the origin; returns observations (B, 2)."""
        # Dynamics use no randomness; the generator is seeded only for API parity with Gymnasium.
        self.np_random = np.random.default_rng(seed)
        self._positions = np.zeros_like(self.goals)
        self._t = 0
        return self._positions.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions (B, 2); returns obs (B, 2), rewards, terminated, truncated (B,)."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {actions.shape}")
        self._positions = _move(self._positions, actions)
        self._t += 1
        rewards = -_distance(self._positions, self.goals)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.full(self.num_envs, self._t >= self.horizon, dtype=bool)
        return self._positions.copy(), rewards.astype(np.float32), terminated, truncated


@dataclass
class PointRobotFamily:
    """Point-robot tasks: task ``i`` has goal ``goals[i]`` on the upper half circle."""

    num_tasks: int
    horizon: int = 50
    radius: float = 1.0
    name: str = field(default="point_robot", init=False)
    obs_dim: int = field(default=2, init=False)
    act_dim: int = field(default=2, init=False)
    goals: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.goals = goal_positions(self.num_tasks, self.radius)

    def _check_ids(self, task_ids: np.ndarray) -> np.ndarray:
        return check_task_ids(task_ids, self.num_tasks, self.name)

    def make_env(self, task_id: int) -> PointRobotEnv:
        """A Gymnasium env for ``task_id``."""
        (tid,) = self._check_ids(np.array([task_id]))
        return PointRobotEnv(self.goals[tid], horizon=self.horizon)

    def make_batched_env(self, task_ids: np.ndarray) -> BatchedPointRobot:
        """One episode per entry of ``task_ids`` (repeats allowed)."""
        return BatchedPointRobot(self.goals[self._check_ids(task_ids)], horizon=self.horizon)

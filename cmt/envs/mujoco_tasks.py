"""MuJoCo meta-RL task families of MACAW and Prompt-DT on Gymnasium v5: cheetah-vel, cheetah-dir
and ant-dir.

Every task environment is ``gymnasium.make("HalfCheetah-v5" | "Ant-v5")`` with a 200-step time
limit and a thin wrapper that replaces the reward by the task reward, computed from the
velocities and contact cost the v5 environment reports in ``info`` and from the action. The
observation is the plain v5 observation: the task is never in it, an agent must infer it.

Rewards per step (v = torso velocity, a = action), tasks and held-out test tasks:

- ``cheetah_vel``: ``-|v_x - v_goal| - 0.05 |a|^2`` with ``v_goal = 0.075 (i + 1)``; 40 tasks,
  test 2, 7, 15, 23, 26.
- ``cheetah_dir``: ``dir * v_x - 0.05 |a|^2`` with dir +1 (task 0), -1 (task 1); both tasks are
  trained on and tested, as in Prompt-DT.
- ``ant_dir``: ``v_xy . (cos t, sin t) - 0.5 |a|^2 - 5e-4 sum(clip(cfrc_ext, -1, 1)^2) + 1``;
  50 directions t, test 6, 17, 23, 30, 41.

Ant episodes also terminate when the torso leaves the healthy height range (as Ant-v5 does);
terminations and truncations stay separate. See ``docs/mujoco.md`` for sources and choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from cmt.envs.registry import check_task_ids

HORIZON = 200
"""Episode length of all three benchmarks (MACAW / Prompt-DT ``_max_episode_steps``)."""

CHEETAH_VEL_TEST_TASKS = (2, 7, 15, 23, 26)
"""Held-out cheetah-vel tasks of Prompt-DT (``config/cheetah_vel/cheetah_vel_40.json``)."""

ANT_DIR_TEST_TASKS = (6, 17, 23, 30, 41)
"""Held-out ant-dir tasks of Prompt-DT (``config/ant_dir/ant_dir_50.json``)."""

ANT_DIR_SEED = 1337
"""Seed of the ant-dir directions. Prompt-DT ships its 50 angles as pickles drawn without a
seed from ``np.random.uniform(0, 2 pi)``; we draw the same distribution from this fixed seed."""


def cheetah_velocities(num_tasks: int = 40) -> np.ndarray:
    """Goal velocities ``0.075 (i + 1)``, i.e. ``np.linspace(0.075, 3.0, 40)``; (N,) float64."""
    return 0.075 * (np.arange(num_tasks, dtype=np.float64) + 1.0)


def cheetah_directions() -> np.ndarray:
    """Running directions of cheetah-dir: forward (+1) then backward (-1); (2,) float64."""
    return np.array([1.0, -1.0])


def ant_directions(num_tasks: int = 50, seed: int = ANT_DIR_SEED) -> np.ndarray:
    """Direction angles, uniform on [0, 2 pi) from ``seed`` (as MACAW samples them); (N,)."""
    return np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, size=num_tasks)


# --------------------------------------------------------------------------- task wrappers


class TaskRewardWrapper(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Replaces the v5 reward by a task reward computed from ``info`` and the action.

    The v5 reward is kept in ``info["env_reward"]`` for debugging. Subclasses also inherit
    :class:`gymnasium.utils.RecordConstructorArgs`, so ``env.spec`` can rebuild the task env.
    """

    ctrl_cost_weight: ClassVar[float]

    def task_reward(self, info: dict[str, Any], action: np.ndarray) -> float:
        raise NotImplementedError

    def control_cost(self, action: np.ndarray) -> float:
        # From the raw action, as the reference envs do (MuJoCo itself clamps the control).
        a = np.asarray(action, dtype=np.float64)
        return self.ctrl_cost_weight * float(np.sum(a * a))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        info["env_reward"] = env_reward
        return obs, self.task_reward(info, action), terminated, truncated, info


class CheetahVelWrapper(TaskRewardWrapper, gym.utils.RecordConstructorArgs):
    """cheetah-vel: ``-|v_x - goal_velocity| - 0.05 |a|^2`` (PEARL / MACAW / Prompt-DT)."""

    ctrl_cost_weight = 0.05

    def __init__(self, env: gym.Env, goal_velocity: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, goal_velocity=goal_velocity)
        TaskRewardWrapper.__init__(self, env)
        self.goal_velocity = float(goal_velocity)

    def task_reward(self, info: dict[str, Any], action: np.ndarray) -> float:
        return -abs(float(info["x_velocity"]) - self.goal_velocity) - self.control_cost(action)


class CheetahDirWrapper(TaskRewardWrapper, gym.utils.RecordConstructorArgs):
    """cheetah-dir: ``direction * v_x - 0.05 |a|^2`` with direction +1 or -1."""

    ctrl_cost_weight = 0.05

    def __init__(self, env: gym.Env, direction: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, direction=direction)
        TaskRewardWrapper.__init__(self, env)
        self.direction = float(direction)

    def task_reward(self, info: dict[str, Any], action: np.ndarray) -> float:
        return self.direction * float(info["x_velocity"]) - self.control_cost(action)


class AntDirWrapper(TaskRewardWrapper, gym.utils.RecordConstructorArgs):
    """ant-dir: ``v_xy . (cos t, sin t) - 0.5 |a|^2 - 5e-4 sum(clip(cfrc_ext, -1, 1)^2) + 1``.

    The contact term is Ant-v5's ``info["reward_contact"]`` (v5 calls
    ``mj_rnePostConstraint``, so ``cfrc_ext`` holds real forces; the family builds Ant-v5 with
    weight 5e-4 and clip range (-1, 1)). The survive bonus is a constant 1 as in the reference
    env, which also pays it on the terminating step, where Ant-v5's own healthy reward is 0.
    """

    ctrl_cost_weight = 0.5
    survive_reward: ClassVar[float] = 1.0

    def __init__(self, env: gym.Env, angle: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, angle=angle)
        TaskRewardWrapper.__init__(self, env)
        self.angle = float(angle)
        self._direction = (float(np.cos(self.angle)), float(np.sin(self.angle)))

    def task_reward(self, info: dict[str, Any], action: np.ndarray) -> float:
        forward = (
            float(info["x_velocity"]) * self._direction[0]
            + float(info["y_velocity"]) * self._direction[1]
        )
        contact = float(info["reward_contact"])  # already negative
        return forward - self.control_cost(action) + contact + self.survive_reward


# --------------------------------------------------------------------------- batched env


class BatchedTaskEnv:
    """Episodes of (possibly different) tasks stepped together: a list of envs, one per row.

    A plain loop beats ``AsyncVectorEnv`` on two cores (MuJoCo steps take microseconds). Episodes
    are not reset automatically: once one ends it is frozen, and later steps return its last
    observation, zero reward and its final (sticky) termination and truncation flags.
    """

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        if not envs:
            raise ValueError("a batched env needs at least one environment")
        self.envs = list(envs)
        self.num_envs = len(self.envs)
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape or ()))
        self._obs = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start every episode; env ``i`` is seeded with ``seed + i`` (as Gymnasium's vector
        envs do); returns observations (B, obs_dim) float32."""
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=None if seed is None else seed + i)
            self._obs[i] = obs
        self._terminated[:] = False
        self._truncated[:] = False
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions (B, act_dim); returns obs (B, obs_dim), rewards, terminated, truncated."""
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[0] != self.num_envs:
            raise ValueError(
                f"actions must have shape ({self.num_envs}, act_dim), got {actions.shape}"
            )
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        for i, env in enumerate(self.envs):
            if self._terminated[i] or self._truncated[i]:
                continue
            obs, reward, terminated, truncated, _ = env.step(actions[i])
            self._obs[i] = obs
            rewards[i] = reward
            self._terminated[i] = terminated
            self._truncated[i] = truncated
        return self._obs.copy(), rewards, self._terminated.copy(), self._truncated.copy()

    def close(self) -> None:
        for env in self.envs:
            env.close()


# --------------------------------------------------------------------------- families


WrapperFactory = Callable[[gym.Env, float], gym.Env]


@dataclass
class MujocoTaskFamily:
    """A MuJoCo task family: task ``i`` is ``env_id`` with the reward of ``task_values[i]``.

    ``task_params`` (num_tasks, p) float32 are the features a task-conditioned policy sees
    (appended to its observation during data generation only). ``train_tasks`` and
    ``test_tasks`` are the benchmark's split; ``test_tasks_seen`` marks benchmarks whose test
    tasks are also training tasks (cheetah-dir).
    """

    name: str
    env_id: str
    task_values: np.ndarray
    task_params: np.ndarray
    train_tasks: tuple[int, ...]
    test_tasks: tuple[int, ...]
    wrap: WrapperFactory
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    horizon: int = HORIZON
    test_tasks_seen: bool = False
    num_tasks: int = field(init=False)
    obs_dim: int = field(init=False)
    act_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tasks = int(len(self.task_values))
        if self.task_params.shape[0] != self.num_tasks:
            raise ValueError("task_params must have one row per task")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        probe = gym.make(self.env_id, **self.env_kwargs)
        obs_space, act_space = probe.observation_space, probe.action_space
        probe.close()
        assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
        self.obs_dim = int(np.prod(obs_space.shape))
        self.act_dim = int(np.prod(act_space.shape))

    def _check_ids(self, task_ids: np.ndarray) -> np.ndarray:
        return check_task_ids(task_ids, self.num_tasks, self.name)

    def make_env(self, task_id: int) -> gym.Env:
        """A Gymnasium env for ``task_id``: ``env_id`` with a ``horizon``-step time limit."""
        (tid,) = self._check_ids(np.array([task_id]))
        env = gym.make(self.env_id, max_episode_steps=self.horizon, **self.env_kwargs)
        return self.wrap(env, float(self.task_values[tid]))

    def make_batched_env(self, task_ids: np.ndarray) -> BatchedTaskEnv:
        """One episode per entry of ``task_ids`` (repeats allowed)."""
        return BatchedTaskEnv([self.make_env(int(t)) for t in self._check_ids(task_ids)])


def _restrict(tasks: Sequence[int], num_tasks: int) -> tuple[int, ...]:
    return tuple(t for t in tasks if t < num_tasks)


def _split(
    name: str, full: int, num_tasks: int | None, test: Sequence[int]
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(num_tasks, train, test) of a family restricted to its first ``num_tasks`` tasks."""
    n = full if num_tasks is None else int(num_tasks)
    if not 2 <= n <= full:
        raise ValueError(f"{name} has {full} tasks; num_tasks must be in [2, {full}], got {n}")
    test_ids = _restrict(test, n)
    train_ids = tuple(t for t in range(n) if t not in test_ids)
    if not test_ids or not train_ids:
        raise ValueError(
            f"{name} restricted to its first {n} tasks keeps no test or no training task "
            f"(test tasks {tuple(test)})"
        )
    return n, train_ids, test_ids


def cheetah_vel_family(num_tasks: int | None = None) -> MujocoTaskFamily:
    """cheetah-vel (40 goal velocities); ``num_tasks`` keeps only the first tasks (tests)."""
    n, train, test = _split("cheetah_vel", 40, num_tasks, CHEETAH_VEL_TEST_TASKS)
    goals = cheetah_velocities(40)[:n]
    return MujocoTaskFamily(
        name="cheetah_vel",
        env_id="HalfCheetah-v5",
        task_values=goals,
        task_params=goals[:, None].astype(np.float32),
        train_tasks=train,
        test_tasks=test,
        wrap=CheetahVelWrapper,
    )


def cheetah_dir_family(num_tasks: int | None = None) -> MujocoTaskFamily:
    """cheetah-dir (forward, backward). As in Prompt-DT both tasks are trained on and tested:
    "unseen" there means only that the test prompt comes from held-out demonstrations."""
    if num_tasks not in (None, 2):
        raise ValueError(f"cheetah_dir has exactly 2 tasks, got num_tasks={num_tasks}")
    dirs = cheetah_directions()
    return MujocoTaskFamily(
        name="cheetah_dir",
        env_id="HalfCheetah-v5",
        task_values=dirs,
        task_params=dirs[:, None].astype(np.float32),
        train_tasks=(0, 1),
        test_tasks=(0, 1),
        wrap=CheetahDirWrapper,
        test_tasks_seen=True,
    )


def ant_dir_family(
    num_tasks: int | None = None, contact_forces_in_obs: bool = True
) -> MujocoTaskFamily:
    """ant-dir (50 directions). ``contact_forces_in_obs=False`` drops the 78 clipped contact
    forces from Ant-v5's 105-dim observation, leaving the 27 dims of the PEARL-era ant."""
    n, train, test = _split("ant_dir", 50, num_tasks, ANT_DIR_TEST_TASKS)
    angles = ant_directions(50)[:n]
    params = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return MujocoTaskFamily(
        name="ant_dir",
        env_id="Ant-v5",
        task_values=angles,
        task_params=params,
        train_tasks=train,
        test_tasks=test,
        wrap=AntDirWrapper,
        # Spelled out so the reward does not silently change with Gymnasium's defaults.
        env_kwargs={
            "contact_cost_weight": 5e-4,
            "contact_force_range": (-1.0, 1.0),
            "terminate_when_unhealthy": True,
            "include_cfrc_ext_in_observation": contact_forces_in_obs,
        },
    )


D4RL_HORIZON = 1000
"""Episode length of D4RL's Gym-MuJoCo datasets (the v2 environments' time limit)."""


def _unchanged(env: gym.Env, value: float) -> gym.Env:
    return env


def single_task_family(env: str) -> MujocoTaskFamily:
    """A D4RL-style environment as a family of one task: the v5 env with its own reward and
    termination, a 1000-step time limit and no task parameters (so SAC's observation is the
    plain one). Lets the single-agent datasets reuse the families' SAC machinery."""
    from cmt.data.d4rl import GYM_IDS

    try:
        env_id = GYM_IDS[env]
    except KeyError:
        raise KeyError(f"unknown D4RL environment {env!r}; known: {sorted(GYM_IDS)}") from None
    return MujocoTaskFamily(
        name=env,
        env_id=env_id,
        task_values=np.zeros(1),
        task_params=np.zeros((1, 0), dtype=np.float32),
        train_tasks=(0,),
        test_tasks=(0,),
        wrap=_unchanged,
        horizon=D4RL_HORIZON,
        test_tasks_seen=True,
    )


MUJOCO_FAMILIES: dict[str, Callable[..., MujocoTaskFamily]] = {
    "cheetah_vel": cheetah_vel_family,
    "cheetah_dir": cheetah_dir_family,
    "ant_dir": ant_dir_family,
}
"""Constructor of each MuJoCo family by id, each taking an optional ``num_tasks``."""


FAMILY_SPLITS: dict[str, tuple[int, tuple[int, ...], bool]] = {
    "cheetah_vel": (40, CHEETAH_VEL_TEST_TASKS, False),
    "cheetah_dir": (2, (0, 1), True),
    "ant_dir": (50, ANT_DIR_TEST_TASKS, False),
}
"""Each family's task count, test tasks, and whether it also trains on them (cheetah-dir)."""


def task_split(name: str, num_tasks: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(train, test) task ids of family ``name`` restricted to its first ``num_tasks`` tasks,
    without building any environment (for config checks)."""
    full, test, tested_on_training = FAMILY_SPLITS[name]
    if tested_on_training:
        if num_tasks not in (None, full):
            raise ValueError(f"{name} has exactly {full} tasks, got num_tasks={num_tasks}")
        return tuple(range(full)), test
    _, train_ids, test_ids = _split(name, full, num_tasks, test)
    return train_ids, test_ids


def mujoco_family(name: str, num_tasks: int | None = None) -> MujocoTaskFamily:
    """The MuJoCo family ``name``, optionally restricted to its first ``num_tasks`` tasks."""
    try:
        build = MUJOCO_FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown MuJoCo family {name!r}; known: {sorted(MUJOCO_FAMILIES)}"
        ) from None
    return build(num_tasks=num_tasks)

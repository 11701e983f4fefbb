"""Point-robot family: Gymnasium API, dynamics, batched env, benchmark and data generation."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cmt.behaviour.rollout import rollout
from cmt.behaviour.scripted import random_actions, scripted_expert
from cmt.benchmarks import make_benchmark
from cmt.benchmarks.point_robot import PointRobot, PointRobotData
from cmt.data.schema import TransitionData
from cmt.envs.point_robot import (
    BatchedPointRobot,
    PointRobotEnv,
    PointRobotFamily,
    goal_positions,
)

SMALL = PointRobotData(
    num_tasks=8,
    test_tasks=(1, 5),
    episodes_per_level=2,
    demo_episodes=2,
    reference_episodes=3,
    horizon=20,
    # The default noise (3.0) is calibrated for 50-step episodes; in 20 steps it is barely
    # better than random, so the level-ordering check below would test noise, not policies.
    medium_noise=1.0,
)


# --------------------------------------------------------------------------- environment


def test_goal_positions_upper_half_circle() -> None:
    goals = goal_positions(5, radius=2.0)
    assert goals.shape == (5, 2) and goals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 2.0, rtol=1e-6)
    assert np.all(goals[:, 1] >= -1e-6)
    np.testing.assert_allclose(goals[0], [2.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(goals[-1], [-2.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(goals, goal_positions(5, radius=2.0))


def test_check_env_passes_without_warnings() -> None:
    env = PointRobotEnv(goal_positions(4)[1], horizon=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The render check only warns that an env built without gymnasium.make has no spec;
        # there is nothing to render, so it is skipped.
        check_env(env.unwrapped, skip_render_check=True)


def test_reset_step_api_and_truncation() -> None:
    horizon = 7
    env = PointRobotEnv(np.array([0.5, 0.5]), horizon=horizon)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (2,)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    np.testing.assert_array_equal(info["goal"], [0.5, 0.5])
    for t in range(1, horizon + 1):
        result = env.step(env.action_space.sample())
        assert len(result) == 5
        obs, reward, terminated, truncated, info = result
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float)
        assert terminated is False
        assert truncated is (t == horizon)
        assert "goal" in info
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [0.0, 0.0])


def test_step_is_clipped_and_reward_is_negative_distance() -> None:
    goal = np.array([0.3, -0.2], dtype=np.float32)
    env = PointRobotEnv(goal, horizon=5)
    env.reset()
    obs, reward, *_ = env.step(np.array([5.0, -0.5], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-6)
    assert reward == pytest.approx(-float(np.linalg.norm(obs - goal)), rel=1e-6)
    assert reward < 0


def test_noiseless_expert_reaches_every_goal_within_15_steps() -> None:
    goals = goal_positions(40)
    env = BatchedPointRobot(goals, horizon=50)
    obs = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(15):
        obs, *_ = env.step(scripted_expert(obs, goals, 0.0, rng))
    assert np.linalg.norm(obs - goals, axis=1).max() < 0.05


def test_scripted_expert_and_random_actions_are_in_bounds() -> None:
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(64, 2)).astype(np.float32)
    goals = goal_positions(64)
    for actions in (scripted_expert(obs, goals, 2.0, rng), random_actions(64, rng)):
        assert actions.shape == (64, 2) and actions.dtype == np.float32
        assert np.all(np.abs(actions) <= 1.0)


def test_batched_env_matches_single_env_bit_for_bit() -> None:
    horizon = 25
    goals = goal_positions(6)[[0, 2, 3, 5]]
    rng = np.random.default_rng(7)
    # Out-of-range actions too, so clipping is compared as well.
    actions = rng.uniform(-1.5, 1.5, size=(horizon, len(goals), 2)).astype(np.float32)

    batched = BatchedPointRobot(goals, horizon=horizon)
    assert batched.num_envs == len(goals)
    b_obs = [batched.reset(seed=0)]
    b_rew, b_trunc = [], []
    for t in range(horizon):
        obs, rew, term, trunc = batched.step(actions[t])
        assert not term.any()
        b_obs.append(obs)
        b_rew.append(rew)
        b_trunc.append(trunc)

    for i, goal in enumerate(goals):
        env = PointRobotEnv(goal, horizon=horizon)
        obs, _ = env.reset(seed=0)
        assert obs.tobytes() == b_obs[0][i].tobytes()
        for t in range(horizon):
            obs, rew, _, trunc, _ = env.step(actions[t, i])
            assert obs.tobytes() == b_obs[t + 1][i].tobytes()
            assert np.float32(rew).tobytes() == b_rew[t][i].tobytes()
            assert trunc == bool(b_trunc[t][i])


# --------------------------------------------------------------------------- registry


def generate_point_robot(cfg: PointRobotData, out: Path) -> dict:
    return make_benchmark(cfg).build_datasets(out, progress=False)


def test_benchmark_builds_point_robot_family() -> None:
    bench = make_benchmark(PointRobotData())
    assert isinstance(bench, PointRobot)
    assert bench.eval_tasks == (2, 7, 15, 23, 26) and bench.horizon == 50
    assert (bench.spaces.obs_dim, bench.spaces.act_dim, bench.spaces.num_agents) == (2, 2, 1)
    family = bench.family
    assert isinstance(family, PointRobotFamily)
    assert (family.name, family.num_tasks, family.obs_dim, family.act_dim) == (
        "point_robot",
        40,
        2,
        2,
    )
    assert family.horizon == 50
    np.testing.assert_array_equal(family.goals, goal_positions(40))
    env = family.make_env(3)
    np.testing.assert_array_equal(env.goal, family.goals[3])
    assert family.make_batched_env(np.array([0, 0, 39])).num_envs == 3


@pytest.mark.parametrize("bad", [-1, 40])
def test_invalid_task_id_raises(bad: int) -> None:
    family = make_benchmark(PointRobotData()).family
    with pytest.raises(ValueError, match=rf"task id {bad} .*\[0, 40\)"):
        family.make_env(bad)
    with pytest.raises(ValueError, match=rf"task id {bad}"):
        family.make_batched_env(np.array([0, bad]))


# --------------------------------------------------------------------------- rollout


@dataclass
class _EarlyStopEnv:
    """Batched stub: episode i terminates after ``stop[i]`` steps (or truncates at horizon)."""

    stop: np.ndarray
    horizon: int

    def __post_init__(self) -> None:
        self.num_envs = len(self.stop)
        self.t = 0

    def reset(self, seed: int) -> np.ndarray:
        self.t = 0
        return np.zeros((self.num_envs, 1), dtype=np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.t += 1
        obs = np.full((self.num_envs, 1), self.t, dtype=np.float32)
        rewards = np.ones(self.num_envs, dtype=np.float32)
        terminated = self.t >= self.stop
        truncated = np.full(self.num_envs, self.t >= self.horizon)
        return obs, rewards, terminated, truncated


@dataclass
class _EarlyStopFamily:
    stop: np.ndarray
    horizon: int = 6
    name: str = "stub"
    num_tasks: int = 3
    obs_dim: int = 1
    act_dim: int = 1

    def make_env(self, task_id: int):  # pragma: no cover - not used by rollout
        raise NotImplementedError

    def make_batched_env(self, task_ids: np.ndarray) -> _EarlyStopEnv:
        return _EarlyStopEnv(self.stop[task_ids], self.horizon)


def test_rollout_records_variable_length_episodes() -> None:
    family = _EarlyStopFamily(stop=np.array([2, 99, 4]))
    data, returns = rollout(
        family, np.array([0, 1, 2]), lambda obs, ids: np.zeros((len(ids), 1)), seed=0
    )
    np.testing.assert_array_equal(data.task_ids, [0] * 2 + [1] * 6 + [2] * 4)
    np.testing.assert_array_equal(np.flatnonzero(data.terminals), [1, 11])
    np.testing.assert_array_equal(np.flatnonzero(data.timeouts), [7])
    np.testing.assert_array_equal(data.observations[:, 0], [0, 1, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    np.testing.assert_array_equal(data.next_observations[:, 0], data.observations[:, 0] + 1)
    np.testing.assert_array_equal(returns, [2.0, 6.0, 4.0])
    assert data.task_ids.dtype == np.int64 and data.terminals.dtype == bool


def test_rollout_point_robot_layout() -> None:
    family = PointRobotFamily(num_tasks=4, horizon=5)
    rng = np.random.default_rng(0)
    ids = np.array([3, 0, 3])
    data, returns = rollout(family, ids, lambda obs, t: random_actions(len(t), rng), seed=1)
    assert len(data) == 15
    np.testing.assert_array_equal(data.task_ids, np.repeat(ids, 5))
    np.testing.assert_array_equal(np.flatnonzero(data.timeouts), [4, 9, 14])
    assert not data.terminals.any()
    # Within an episode, next_observations[t] == observations[t + 1].
    within = ~data.timeouts[:-1]
    np.testing.assert_array_equal(
        data.next_observations[:-1][within], data.observations[1:][within]
    )
    np.testing.assert_allclose(returns, data.rewards.reshape(3, 5).sum(1), rtol=1e-6)


# --------------------------------------------------------------------------- generation


def _episode_lengths(data: TransitionData) -> np.ndarray:
    ends = np.flatnonzero(data.terminals | data.timeouts)
    return np.diff(np.concatenate([[-1], ends]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("point_robot")
    summary = generate_point_robot(SMALL, out)
    return out, summary


def test_generation_writes_readable_files(generated: tuple[Path, dict]) -> None:
    from cmt.data.hdf5 import read_hdf5

    out, summary = generated
    for name in ("train.hdf5", "demos.hdf5", "references.json"):
        assert (out / name).is_file()
    train, demos = read_hdf5(out / "train.hdf5"), read_hdf5(out / "demos.hdf5")
    train_tasks, test_tasks = set(SMALL.train_tasks), set(SMALL.test_tasks)

    assert set(np.unique(train.task_ids).tolist()) == train_tasks
    assert set(np.unique(demos.task_ids).tolist()) == test_tasks

    n_train = len(train_tasks) * 3 * SMALL.episodes_per_level
    n_demo = len(test_tasks) * SMALL.demo_episodes
    for data, n_episodes in ((train, n_train), (demos, n_demo)):
        lengths = _episode_lengths(data)
        assert len(lengths) == n_episodes
        assert np.all(lengths == SMALL.horizon)
        assert len(data) == n_episodes * SMALL.horizon
        assert not data.terminals.any()
        assert data.infos["level"].dtype == np.int8
        assert data.metadata["family"] == "point_robot"
        assert data.metadata["num_tasks"] == SMALL.num_tasks
        assert data.metadata["horizon"] == SMALL.horizon
        assert data.metadata["seed"] == SMALL.seed

    levels, counts = np.unique(train.infos["level"], return_counts=True)
    np.testing.assert_array_equal(levels, [0, 1, 2])
    assert np.all(counts == len(train_tasks) * SMALL.episodes_per_level * SMALL.horizon)
    assert np.all(demos.infos["level"] == 2)

    assert summary["train"]["episodes"] == n_train
    assert summary["demos"]["episodes"] == n_demo
    means = summary["train"]["mean_return"]
    assert means["random"] < means["medium"] < means["expert"]


def test_rewards_are_negative_distance_to_task_goal(generated: tuple[Path, dict]) -> None:
    from cmt.data.hdf5 import read_hdf5

    out, _ = generated
    goals = goal_positions(SMALL.num_tasks).astype(np.float64)
    for name in ("train.hdf5", "demos.hdf5"):
        data = read_hdf5(out / name)
        dist = np.linalg.norm(data.next_observations - goals[data.task_ids], axis=1)
        np.testing.assert_allclose(data.rewards, -dist, rtol=1e-5, atol=1e-6)


def test_references_order_levels_for_every_task(generated: tuple[Path, dict]) -> None:
    from cmt.data.hdf5 import read_hdf5

    out, _ = generated
    refs = json.loads((out / "references.json").read_text())
    assert refs["family"] == "point_robot"
    assert refs["train_tasks"] == list(SMALL.train_tasks)
    assert refs["test_tasks"] == list(SMALL.test_tasks)
    for task in range(SMALL.num_tasks):
        assert refs[str(task)]["expert"] > refs[str(task)]["random"]

    # Medium episodes of each train task score between the task's random and expert references.
    train = read_hdf5(out / "train.hdf5")
    ep_returns = train.rewards.reshape(-1, SMALL.horizon).sum(1)
    ep_task = train.task_ids[:: SMALL.horizon]
    ep_level = train.infos["level"][:: SMALL.horizon]
    for task in SMALL.train_tasks:
        medium = ep_returns[(ep_task == task) & (ep_level == 1)].mean()
        assert refs[str(task)]["random"] < medium < refs[str(task)]["expert"]


def test_generation_is_deterministic(generated: tuple[Path, dict], tmp_path: Path) -> None:
    from cmt.data.hdf5 import read_hdf5

    out, summary = generated
    assert generate_point_robot(SMALL, tmp_path) == summary
    for name in ("train.hdf5", "demos.hdf5"):
        a, b = read_hdf5(out / name), read_hdf5(tmp_path / name)
        for field in (
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "next_observations",
            "task_ids",
        ):
            assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), (name, field)
        assert a.infos["level"].tobytes() == b.infos["level"].tobytes()
    assert (out / "references.json").read_text() == (tmp_path / "references.json").read_text()


def test_different_seed_changes_data(generated: tuple[Path, dict], tmp_path: Path) -> None:
    from cmt.data.hdf5 import read_hdf5

    out, _ = generated
    generate_point_robot(SMALL.model_copy(update={"seed": 1}), tmp_path)
    a, b = read_hdf5(out / "train.hdf5"), read_hdf5(tmp_path / "train.hdf5")
    assert not np.array_equal(a.actions, b.actions)

"""MuJoCo task families (cheetah-vel, cheetah-dir, ant-dir) and their SAC data generation."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from cmt.behaviour.rollout import LEVELS
from cmt.behaviour.sac import (
    TaskConditionedEnv,
    replay_transitions,
    select_medium,
)
from cmt.benchmarks import make_benchmark
from cmt.benchmarks.mujoco_meta import MujocoMeta, MujocoMetaData
from cmt.config import ConfigError, SacConfig, parse_params
from cmt.data.hdf5 import episode_bounds, read_hdf5
from cmt.envs.mujoco_tasks import (
    ANT_DIR_TEST_TASKS,
    CHEETAH_VEL_TEST_TASKS,
    HORIZON,
    AntDirWrapper,
    BatchedTaskEnv,
    CheetahDirWrapper,
    CheetahVelWrapper,
    MujocoTaskFamily,
    ant_directions,
    cheetah_velocities,
    mujoco_family,
)
from cmt.integrity import ArtifactError

FAMILIES = ("cheetah_vel", "cheetah_dir", "ant_dir")

# Warnings that check_env raises for every wrapped v5 MuJoCo env and that are not ours to fix:
# the task reward is a wrapper by design, and v5 observation spaces are unbounded.
KNOWN_CHECKER_WARNINGS = ("different from the unwrapped version", "infinity")


@pytest.fixture(scope="module", autouse=True)
def _mujoco_log_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    # MuJoCo appends MUJOCO_LOG.TXT to the working directory whenever it warns (HalfCheetah's
    # XML uses a deprecated attribute); keep it out of the repository.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("mujoco_log"))
        yield


@pytest.fixture
def one_thread():
    # SAC's small matmuls run fastest on one thread here; restore the setting for later tests.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def families() -> dict[str, MujocoTaskFamily]:
    return {name: mujoco_family(name) for name in FAMILIES}


def generate_mujoco(
    cfg: MujocoMetaData, out: Path, root: Path | None = None, progress: bool = False
) -> dict:
    """The collect stage's work: SAC checkpoints under ``root/<family>``."""
    return make_benchmark(cfg).build_datasets(out, root, progress=progress)


# --------------------------------------------------------------------------- definitions


def test_task_parameters_follow_the_benchmarks(families: dict[str, MujocoTaskFamily]) -> None:
    vel, cdir, ant = families["cheetah_vel"], families["cheetah_dir"], families["ant_dir"]
    np.testing.assert_allclose(vel.task_values, np.linspace(0.075, 3.0, 40))
    np.testing.assert_allclose(cheetah_velocities(), 0.075 * np.arange(1, 41))
    np.testing.assert_array_equal(cdir.task_values, [1.0, -1.0])
    assert ant.task_values.shape == (50,)
    assert np.all((ant.task_values >= 0) & (ant.task_values < 2 * np.pi))
    np.testing.assert_array_equal(ant.task_values, ant_directions(50))  # fixed seed
    np.testing.assert_allclose(np.linalg.norm(ant.task_params, axis=1), 1.0, rtol=1e-6)

    assert vel.test_tasks == CHEETAH_VEL_TEST_TASKS == (2, 7, 15, 23, 26)
    assert ant.test_tasks == ANT_DIR_TEST_TASKS == (6, 17, 23, 30, 41)
    assert cdir.test_tasks == cdir.train_tasks == (0, 1) and cdir.test_tasks_seen
    for fam in (vel, ant):
        assert not set(fam.train_tasks) & set(fam.test_tasks)
        assert sorted(fam.train_tasks + fam.test_tasks) == list(range(fam.num_tasks))
    assert [(f.num_tasks, f.obs_dim, f.act_dim) for f in (vel, cdir, ant)] == [
        (40, 17, 6),
        (2, 17, 6),
        (50, 105, 8),
    ]
    for fam in (vel, cdir, ant):
        assert fam.horizon == HORIZON == 200
        assert fam.task_params.dtype == np.float32 and fam.task_params.shape[0] == fam.num_tasks


def test_restricting_to_the_first_tasks_keeps_the_split() -> None:
    small = mujoco_family("cheetah_vel", num_tasks=3)
    assert (small.num_tasks, small.train_tasks, small.test_tasks) == (3, (0, 1), (2,))
    np.testing.assert_allclose(small.task_values, [0.075, 0.15, 0.225])
    with pytest.raises(ValueError, match="no test or no training task"):
        mujoco_family("ant_dir", num_tasks=5)  # the first test task is 6
    with pytest.raises(ValueError, match="num_tasks"):
        mujoco_family("cheetah_vel", num_tasks=41)
    with pytest.raises(ValueError, match="exactly 2 tasks"):
        mujoco_family("cheetah_dir", num_tasks=3)
    with pytest.raises(KeyError, match="unknown MuJoCo family"):
        mujoco_family("hopper_vel")


# --------------------------------------------------------------------------- environments


@pytest.mark.parametrize(
    ("name", "task"),
    [("cheetah_vel", 0), ("cheetah_vel", 26), ("cheetah_dir", 0), ("cheetah_dir", 1)]
    + [("ant_dir", 6), ("ant_dir", 49)],
)
def test_check_env_passes(families: dict[str, MujocoTaskFamily], name: str, task: int) -> None:
    env = families[name].make_env(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Rendering needs an OpenGL context, which CI does not have.
        check_env(env, skip_render_check=True)
    unexpected = [
        str(w.message)
        for w in caught
        if not any(k in str(w.message) for k in KNOWN_CHECKER_WARNINGS)
    ]
    assert not unexpected
    env.close()


def _expected_reward(env, info: dict, action: np.ndarray) -> float:
    a2 = float(np.sum(np.square(action.astype(np.float64))))
    if isinstance(env, CheetahVelWrapper):
        return -abs(info["x_velocity"] - env.goal_velocity) - 0.05 * a2
    if isinstance(env, CheetahDirWrapper):
        return env.direction * info["x_velocity"] - 0.05 * a2
    assert isinstance(env, AntDirWrapper)
    # Contact forces straight from the simulator, independently of Ant-v5's reward terms.
    cfrc = np.clip(env.unwrapped.data.cfrc_ext, -1.0, 1.0)
    forward = info["x_velocity"] * np.cos(env.angle) + info["y_velocity"] * np.sin(env.angle)
    return forward - 0.5 * a2 - 5e-4 * float(np.sum(cfrc**2)) + 1.0


@pytest.mark.parametrize(
    ("name", "task"), [("cheetah_vel", 23), ("cheetah_dir", 1), ("ant_dir", 30)]
)
def test_reward_is_the_task_formula(
    families: dict[str, MujocoTaskFamily], name: str, task: int
) -> None:
    env = families[name].make_env(task)
    env.reset(seed=1)
    env.action_space.seed(1)
    dt = env.unwrapped.dt
    x_before = env.unwrapped.data.qpos[0]
    contact_seen = False
    for _ in range(40):
        action = env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float)
        assert reward == pytest.approx(_expected_reward(env, info, action), rel=1e-9, abs=1e-9)
        assert reward != pytest.approx(info["env_reward"])  # the v5 reward was replaced
        if name.startswith("cheetah"):
            # The velocity the reward uses is the torso's x displacement per control step.
            x_after = info["x_position"]
            assert info["x_velocity"] == pytest.approx((x_after - x_before) / dt, rel=1e-9)
            x_before = x_after
        else:
            contact_seen |= info["reward_contact"] < 0
        assert not (terminated or truncated)
    if name == "ant_dir":
        assert contact_seen, "Ant-v5 reported no contact forces (cfrc_ext all zero?)"


@pytest.mark.parametrize(("name", "task"), [("cheetah_vel", 2), ("ant_dir", 6)])
def test_episode_truncates_at_200(
    families: dict[str, MujocoTaskFamily], name: str, task: int
) -> None:
    env = families[name].make_env(task)
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)  # the ant stays upright
    for t in range(1, HORIZON + 1):
        _, _, terminated, truncated, _ = env.step(zero)
        assert not terminated
        assert truncated is (t == HORIZON)


def test_unhealthy_ant_terminates_without_truncating(families: dict[str, MujocoTaskFamily]) -> None:
    env = families["ant_dir"].make_env(0)
    env.reset(seed=0)
    base = env.unwrapped
    qpos = base.data.qpos.copy()
    qpos[2] = 1.5  # torso above the healthy range (0.2, 1.0)
    base.set_state(qpos, base.data.qvel.copy())
    action = np.zeros(8, dtype=np.float32)
    _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated
    # The reference env pays the survive bonus even on the terminating step.
    assert reward == pytest.approx(_expected_reward(env, info, action))


# --------------------------------------------------------------------------- batched env


@pytest.mark.parametrize(
    ("name", "tasks"), [("cheetah_vel", [3, 26, 3]), ("cheetah_dir", [1, 0]), ("ant_dir", [6, 0])]
)
def test_batched_env_matches_single_envs(
    families: dict[str, MujocoTaskFamily], name: str, tasks: list[int]
) -> None:
    fam, steps, seed = families[name], 30, 11
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, len(tasks), fam.act_dim)).astype(np.float32)
    batched = fam.make_batched_env(np.array(tasks))
    assert batched.num_envs == len(tasks)
    b_obs = [batched.reset(seed=seed)]
    b_out = [batched.step(actions[t]) for t in range(steps)]
    assert b_obs[0].dtype == np.float32 and b_obs[0].shape == (len(tasks), fam.obs_dim)
    # Repeated task ids start from different states (env i is seeded with seed + i).
    assert not np.array_equal(b_obs[0][0], b_obs[0][-1])
    for i, task in enumerate(tasks):
        env = fam.make_env(task)
        obs, _ = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs.astype(np.float32), b_obs[0][i])
        for t in range(steps):
            obs, reward, terminated, truncated, _ = env.step(actions[t, i])
            b_next, b_rew, b_term, b_trunc = b_out[t]
            np.testing.assert_array_equal(obs.astype(np.float32), b_next[i])
            assert np.float32(reward) == b_rew[i]
            assert (terminated, truncated) == (bool(b_term[i]), bool(b_trunc[i]))
            if terminated or truncated:  # random actions can bounce an ant out of range
                break


def test_batched_env_freezes_finished_episodes(families: dict[str, MujocoTaskFamily]) -> None:
    fam = dataclasses.replace(families["ant_dir"], horizon=5)
    env = fam.make_batched_env(np.array([0, 1]))
    assert isinstance(env, BatchedTaskEnv)
    env.reset(seed=0)
    # Knock the first ant out of the healthy range: it terminates at step 1.
    base = env.envs[0].unwrapped
    qpos = base.data.qpos.copy()
    qpos[2] = 1.5
    base.set_state(qpos, base.data.qvel.copy())
    zero = np.zeros((2, fam.act_dim), dtype=np.float32)
    obs1, rew1, term1, trunc1 = env.step(zero)
    assert term1.tolist() == [True, False] and not trunc1.any()
    for t in range(2, 9):
        obs, rew, term, trunc = env.step(zero)
        np.testing.assert_array_equal(obs[0], obs1[0])  # frozen, never reset
        assert rew[0] == 0.0 and term[0] and not trunc[0]
        assert trunc[1] == (t >= 5) and not term[1]
        if t > 5:
            assert rew[1] == 0.0
    with pytest.raises(ValueError, match="actions must have shape"):
        env.step(np.zeros((3, fam.act_dim)))


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", FAMILIES)
def test_presets_build_their_families(name: str) -> None:
    from cmt.config import load_params

    data = load_params(Path(__file__).parents[1] / "params.yaml", preset=name).data
    bench = make_benchmark(data)
    assert isinstance(bench, MujocoMeta) and bench.name == name
    family = bench.family
    assert isinstance(family, MujocoTaskFamily) and family.name == name
    assert set(data.test_tasks) == set(family.test_tasks) == set(bench.eval_tasks)
    assert bench.horizon == HORIZON


def test_config_must_match_the_benchmark() -> None:
    def data(**fields: object) -> object:
        return parse_params({"data": fields}).data

    with pytest.raises(ConfigError, match="data.horizon: Extra inputs"):
        data(benchmark="cheetah_vel", horizon=50)
    with pytest.raises(ConfigError, match="test_tasks .1, 2. disagree with the ant_dir split"):
        data(benchmark="ant_dir", test_tasks=[1, 2])
    with pytest.raises(ConfigError, match="num_tasks must be in"):
        data(benchmark="cheetah_vel", num_tasks=60)
    with pytest.raises(ConfigError, match="name 'cheetah' does not match"):
        data(benchmark="cheetah_vel", name="cheetah")
    small = make_benchmark(data(benchmark="cheetah_vel", num_tasks=8, test_tasks=[2, 7])).family
    assert (small.num_tasks, small.test_tasks) == (8, (2, 7))
    # A subset of the test tasks (the evaluate stage maps over them one at a time) keeps the
    # benchmark's split: no test task becomes a training task.
    one = make_benchmark(data(benchmark="cheetah_vel", test_tasks=[7])).family
    assert one.test_tasks == (2, 7, 15, 23, 26) and 2 not in one.train_tasks
    # cheetah-dir trains on its test tasks, by definition of the benchmark.
    cdir = make_benchmark(data(benchmark="cheetah_dir", test_tasks=[1])).family
    assert cdir.train_tasks == (0, 1) and cdir.test_tasks_seen


def test_validation_tasks_are_carved_from_the_training_tasks() -> None:
    def data(**fields: object) -> object:
        return parse_params({"data": {"benchmark": "cheetah_vel", **fields}}).data

    val = data(validation_tasks=[0, 10, 20])
    bench = make_benchmark(val)
    assert bench.eval_tasks == (0, 10, 20) == bench.unseen_tasks
    assert val.train_task_ids == tuple(
        t for t in range(40) if t not in {0, 10, 20, *CHEETAH_VEL_TEST_TASKS}
    )
    assert "Validation tasks (carved from the training tasks) [0, 10, 20]" in bench.describe(5)
    assert bench.evaluated_on() == "the validation tasks [0, 10, 20]"
    assert make_benchmark(data()).eval_tasks == CHEETAH_VEL_TEST_TASKS  # default: the tests
    with pytest.raises(ConfigError, match=r"validation_tasks \[2\] must be training tasks"):
        data(validation_tasks=[2])  # a test task
    with pytest.raises(ConfigError, match="contain duplicates"):
        data(validation_tasks=[0, 0])
    with pytest.raises(ConfigError, match="at least one training task must remain"):
        data(num_tasks=3, test_tasks=[2], validation_tasks=[0, 1])
    with pytest.raises(ConfigError, match="trains on its test tasks"):
        parse_params(
            {"data": {"benchmark": "cheetah_dir", "test_tasks": [0, 1], "validation_tasks": [0]}}
        )


# --------------------------------------------------------------------------- SAC data pieces


def test_task_conditioned_env_appends_the_task_parameter() -> None:
    fam = mujoco_family("cheetah_vel", num_tasks=8)
    env = TaskConditionedEnv(fam, fam.train_tasks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert not [w for w in caught if "infinity" not in str(w.message)]
    seen = set()
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        task = info["task_id"]
        seen.add(task)
        assert obs.shape == (fam.obs_dim + 1,) and obs.dtype == np.float32
        assert obs[-1] == fam.task_params[task, 0]
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert info["task_id"] == task and obs[-1] == fam.task_params[task, 0]
    assert seen <= set(fam.train_tasks) and len(seen) > 1


def test_select_medium() -> None:
    # random -100, expert (last) 200: a third of the way is 0.
    assert select_medium(np.array([-90, -10, 5, 50, 200]), -100.0, 1 / 3) == (2, "closest")
    assert select_medium(np.array([-90, -60, -20, 200]), -100.0, 1 / 3) == (2, "closest")
    # A curve that jumps past the point: the nearer side, not the first snapshot beyond it.
    assert select_medium(np.array([-90, -50, 150, 160, 200]), -100.0, 1 / 3) == (1, "closest")
    # A dip closer to the point is no candidate: its actor was not kept.
    assert select_medium(np.array([-90, 10, -5, 200]), -100.0, 1 / 3) == (1, "closest")
    assert select_medium(np.array([-90, -95, -120]), -100.0, 1 / 3) == (0, "no_progress")
    with pytest.raises(ValueError):
        select_medium(np.array([1.0]), 0.0, 0.5)


def test_replay_transitions_groups_episodes_by_task() -> None:
    fam = mujoco_family("cheetah_vel", num_tasks=3)
    # Episodes in buffer order: task 1 (3 steps, truncated), task 0 (2, terminated),
    # task 1 (2, truncated), task 0 (cut by the snapshot after 1 step).
    tasks = [1, 1, 1, 0, 0, 1, 1, 0]
    dones = [0, 0, 1, 0, 1, 0, 1, 0]
    timeouts = [0, 0, 1, 0, 0, 0, 1, 0]
    n, d = len(tasks), fam.obs_dim
    obs = np.zeros((n + 2, 1, d + 1), dtype=np.float32)
    obs[:n, 0, :d] = np.arange(n)[:, None]
    obs[:n, 0, d] = fam.task_params[tasks, 0]
    buf = SimpleNamespace(
        observations=obs,
        next_observations=obs + 0.5,
        actions=np.zeros((n + 2, 1, fam.act_dim), dtype=np.float32),
        rewards=np.arange(n + 2, dtype=np.float32)[:, None],
        dones=np.array(dones + [0, 0], dtype=np.float32)[:, None],
        timeouts=np.array(timeouts + [0, 0], dtype=np.float32)[:, None],
    )
    data = replay_transitions(buf, n, fam)
    order = [3, 4, 7, 0, 1, 2, 5, 6]  # task 0's episodes, then task 1's, each in buffer order
    np.testing.assert_array_equal(data.observations[:, 0], order)
    np.testing.assert_array_equal(data.next_observations[:, 0], np.array(order) + 0.5)
    np.testing.assert_array_equal(data.rewards, order)
    np.testing.assert_array_equal(data.task_ids, [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.terminals, [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 1, 0, 0, 1, 0, 1])
    assert data.observations.shape[1] == d  # the task parameter is dropped


def test_sac_config_validates() -> None:
    with pytest.raises(ValueError, match="learning_starts"):
        SacConfig(sac_steps=100, learning_starts=100, eval_every=50)
    with pytest.raises(ValueError, match="eval_every"):
        SacConfig(sac_steps=300, learning_starts=100, eval_every=200)
    with pytest.raises(ValueError):
        SacConfig(sac_step=10)  # typo: unknown key


# --------------------------------------------------------------------------- end to end

TINY_SAC = SacConfig(
    sac_steps=300,
    learning_starts=100,
    batch_size=32,
    net_arch=(32, 32),
    eval_every=100,
    device="cpu",
    policies="train",
)


def tiny_config(family: str, num_tasks: int | None = None, **sac: int) -> MujocoMetaData:
    """The data section of a tiny run: the benchmark's split, minimal episodes and SAC."""
    fam = mujoco_family(family, num_tasks)
    return MujocoMetaData(
        benchmark=family,
        num_tasks=num_tasks,
        test_tasks=fam.test_tasks,
        episodes_per_level=1,
        demo_episodes=2,
        reference_episodes=1,
        sac=TINY_SAC.model_copy(update=sac),
    )


TINY = tiny_config("cheetah_vel", 3)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    data = read_hdf5(path)
    fields = ("observations", "actions", "rewards", "terminals", "timeouts", "task_ids")
    return {k: getattr(data, k) for k in fields} | {"level": data.infos["level"]}


@pytest.mark.slow
def test_generate_cheetah_vel_end_to_end(tmp_path: Path, one_thread: None) -> None:
    ckpt = tmp_path / "ckpt"
    summary = generate_mujoco(TINY, tmp_path / "a", ckpt)
    out = tmp_path / "a"

    train, demos = read_hdf5(out / "train.hdf5"), read_hdf5(out / "demos.hdf5")
    assert train.obs_dim == 17 and train.act_dim == 6  # plain observations, no task parameter
    assert set(np.unique(train.task_ids)) == {0, 1}
    assert set(np.unique(demos.task_ids)) == {2}
    level_of = {name: i for i, name in enumerate(LEVELS)}
    for task in (0, 1):
        rows = train.task_ids == task
        levels = train.infos["level"][rows]
        for level in ("medium", "expert"):
            assert np.sum(levels == level_of[level]) == TINY.episodes_per_level * HORIZON
    replay = train.infos["level"] == level_of["medium_replay"]
    medium_step = json.loads((out / "sac_log.json").read_text())["medium"]["step"]
    assert replay.sum() == medium_step == summary["sac"]["medium_step"]
    starts, lengths = episode_bounds(demos.terminals, demos.timeouts)
    assert lengths.tolist() == [HORIZON] * TINY.demo_episodes
    assert np.all(np.abs(train.actions) <= 1.0)
    assert train.metadata["levels"] == list(LEVELS)
    assert (train.metadata["num_tasks"], train.metadata["test_tasks"]) == (3, [2])

    refs = json.loads((out / "references.json").read_text())
    assert refs["test_tasks"] == [2] and refs["train_tasks"] == [0, 1]
    assert all(set(refs[str(t)]) == {"random", "expert"} for t in range(3))
    policy = torch.load(out / "policies" / "expert.pt", weights_only=True)
    assert json.loads(policy["meta"])["step"] == TINY.sac.sac_steps

    # Same seed, fresh run: the same datasets. Rerun with the finished checkpoint: no
    # training, the same datasets.
    generate_mujoco(TINY, tmp_path / "b")
    resumed = generate_mujoco(TINY, tmp_path / "d", ckpt)
    for other in ("b", "d"):
        for name in ("train.hdf5", "demos.hdf5"):
            a, b = _arrays(out / name), _arrays(tmp_path / other / name)
            assert all(np.array_equal(a[k], b[k]) for k in a), (other, name)
        refs_b = (tmp_path / other / "references.json").read_text()
        assert (out / "references.json").read_text() == refs_b
    assert resumed["sac"]["resumed_from"] == 300
    # Byte-identical files: DVC sees the same data and retrains nothing downstream.
    for name in ("train.hdf5", "demos.hdf5", "references.json", "sac_log.json"):
        assert (out / name).read_bytes() == (tmp_path / "d" / name).read_bytes(), name

    # A larger budget continues the checkpointed run instead of starting over.
    longer = tiny_config("cheetah_vel", 3, sac_steps=400)
    continued = generate_mujoco(longer, tmp_path / "c", ckpt)
    log = json.loads((tmp_path / "c" / "sac_log.json").read_text())
    assert continued["sac"]["resumed_from"] == 300
    assert [s["step"] for s in log["snapshots"]] == [100, 200, 300, 400]


@pytest.mark.slow
def test_validation_split_holds_its_tasks_out_of_the_training_data(
    tmp_path: Path, one_thread: None
) -> None:
    # The test split first: its medium-replay episodes show which tasks SAC's buffer holds.
    test_cfg, ckpt = tiny_config("cheetah_vel", 4), tmp_path / "ckpt"
    generate_mujoco(test_cfg, tmp_path / "test", ckpt)
    full = read_hdf5(tmp_path / "test" / "train.hdf5")
    full_replay = full.infos["level"] == LEVELS.index("medium_replay")
    carved = int(full.task_ids[full_replay][0])  # a training task the buffer holds
    assert "validation_tasks" not in full.metadata  # files as before the option existed

    cfg = MujocoMetaData.model_validate({**test_cfg.model_dump(), "validation_tasks": [carved]})
    generate_mujoco(cfg, tmp_path / "val", ckpt)  # the same SAC checkpoint, no retraining
    train = read_hdf5(tmp_path / "val" / "train.hdf5")
    demos = read_hdf5(tmp_path / "val" / "demos.hdf5")
    assert set(np.unique(train.task_ids)) == {0, 1, 3} - {carved}
    assert set(np.unique(demos.task_ids)) == {carved}
    replay = train.infos["level"] == LEVELS.index("medium_replay")
    kept = full_replay & (full.task_ids != carved)
    np.testing.assert_array_equal(train.observations[replay], full.observations[kept])
    assert train.metadata["validation_tasks"] == [carved]
    refs = json.loads((tmp_path / "val" / "references.json").read_text())
    assert refs["validation_tasks"] == [carved] and carved not in refs["train_tasks"]
    loaded = make_benchmark(cfg).load(tmp_path / "val")
    assert set(map(int, loaded.demos.tasks)) == {carved}

    # Data made for one split cannot be scored on the other.
    with pytest.raises(ArtifactError, match=rf"no demonstrations of the scored tasks \[{carved}\]"):
        make_benchmark(cfg).load(tmp_path / "test")
    with pytest.raises(ArtifactError, match=r"no demonstrations of the scored tasks \[2\]"):
        make_benchmark(test_cfg).load(tmp_path / "val")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "num_tasks"), [("cheetah_dir", None), ("ant_dir", 7)])
def test_generate_other_families(
    tmp_path: Path, one_thread: None, name: str, num_tasks: int | None
) -> None:
    summary = generate_mujoco(tiny_config(name, num_tasks), tmp_path)
    family = mujoco_family(name, num_tasks)
    train, demos = read_hdf5(tmp_path / "train.hdf5"), read_hdf5(tmp_path / "demos.hdf5")
    assert train.obs_dim == demos.obs_dim == family.obs_dim
    assert set(np.unique(train.task_ids)) == set(family.train_tasks)
    assert set(np.unique(demos.task_ids)) == set(family.test_tasks)
    refs = json.loads((tmp_path / "references.json").read_text())
    assert all(str(t) in refs for t in range(family.num_tasks))
    # Terminated ant episodes end early; every episode ends with exactly one flag set.
    _, lengths = episode_bounds(train.terminals, train.timeouts)
    assert lengths.max() <= HORIZON and lengths.sum() == len(train)
    assert summary["train"]["transitions"] == len(train)

"""The behaviour learners (SB3 and SBX), their library-neutral actors, the small resumable
learner state, and the committed policies a fresh clone rolls out instead of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmt.behaviour.actor import act
from cmt.behaviour.committed import (
    CommittedPoliciesError,
    behaviour_for,
    load_committed,
    publish_progress,
    train_and_publish,
)
from cmt.behaviour.learners import make_learner
from cmt.behaviour.rollout import rollout
from cmt.behaviour.sac import (
    EnvPool,
    MissingHistory,
    TaskConditionedEnv,
    d4rl_level,
    keep_candidate_actors,
    random_policy,
    refill_from_policy,
    train_behaviour,
)
from cmt.envs.mujoco_tasks import single_task_family
from cmt.sections import SacConfig

TINY = SacConfig(
    sac_steps=480,
    learning_starts=160,
    batch_size=32,
    net_arch=(32, 32),
    eval_every=160,
    eval_episodes=1,
    train_freq=8,
    device="cpu",
    policies="train",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Committed policies go to a temporary behaviour/; MuJoCo's warning log stays out of the repo.
    monkeypatch.setenv("CMT_BEHAVIOUR_DIR", str(tmp_path / "behaviour"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("learner", ["sb3_sac", "sbx_sac", "sbx_tqc"])
def test_neutral_actor_acts_as_the_library(learner: str) -> None:
    family = single_task_family("hopper")
    env = TaskConditionedEnv(family, family.train_tasks)
    budgets = TINY.model_copy(update={"learner": learner})
    trained = make_learner(env, budgets, seed=1)
    trained.model.learn(total_timesteps=240)  # past learning_starts: the weights have moved
    obs = np.random.default_rng(0).normal(size=(16, env.observation_space.shape[0]))
    obs = obs.astype(np.float32)
    theirs, _ = trained.model.predict(obs, deterministic=True)
    ours = act(trained.actor(), obs, rng=None)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    # Sampled actions stay in the action space and differ from the mean action.
    sampled = act(trained.actor(), obs, np.random.default_rng(1))
    assert np.all(np.abs(sampled) <= 1.0) and not np.allclose(sampled, ours)


@pytest.mark.parametrize("learner", ["sb3_sac", "sbx_sac"])
def test_learner_state_round_trips(learner: str) -> None:
    family = single_task_family("hopper")
    budgets = TINY.model_copy(update={"learner": learner})
    env = TaskConditionedEnv(family, family.train_tasks)
    a = make_learner(env, budgets, seed=1)
    a.model.learn(total_timesteps=240)
    b = make_learner(TaskConditionedEnv(family, family.train_tasks), budgets, seed=2)
    before = b.actor()
    b.load_state(a.state())
    for key, value in a.actor().items():
        np.testing.assert_array_equal(b.actor()[key], value)
        assert not np.array_equal(before[key], value)
    if learner == "sbx_sac":  # critics, targets and optimiser moments travel too
        qa, qb = a.model.policy.qf_state, b.model.policy.qf_state
        for x, y in zip(_leaves(qa), _leaves(qb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _leaves(tree: object) -> list[object]:
    import jax

    return jax.tree.leaves(tree)


def test_only_choosable_actors_are_kept() -> None:
    snaps = []
    for step, ret in enumerate([5.0, 3.0, 8.0, 8.0, 2.0, 9.0, 1.0]):
        snaps.append({"step": step, "returns": np.array([ret]), "actor": {"w": step}})
        keep_candidate_actors(snaps)
    kept = [s["step"] for s in snaps if s["actor"] is not None]
    # Running records (5, 8, 9), not the tie at step 3, and always the latest.
    assert kept == [0, 2, 5, 6]


def test_committed_policies_rebuild_the_trained_data(tmp_path: Path) -> None:
    family = single_task_family("hopper")
    ckpt = tmp_path / "ckpt"
    out = train_and_publish(family, TINY, 0, 1, ckpt, "cmt behaviour (test)", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "cmt behaviour (test)" and manifest["sac_steps"] == 480
    assert [s["step"] for s in manifest["snapshots"]] == [160, 320, 480]
    assert (out / "learner.pt").stat().st_size < 5_000_000
    status = (out.parent / "README.md").read_text()
    assert "| hopper | sbx_sac | 480 | 0 |" in status and "cmt behaviour (test)" in status

    trained = train_behaviour(family, TINY, 0, 1, ckpt, progress=False)  # finished: no training
    committed = load_committed(family, TINY.model_copy(update={"policies": "committed"}), 0, 1)
    assert committed.medium["step"] == trained.medium["step"]
    meta = {"env": "hopper"}
    for level in ("random", "medium", "expert", "medium_expert"):
        a = d4rl_level(trained, level, 400, family.horizon, meta)
        b = d4rl_level(committed, level, 400, family.horizon, meta)
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert 400 <= len(a) < 800 * len(level.split("_"))  # ends within a batch of the size
    with pytest.raises(MissingHistory, match="medium-replay"):
        committed.replay()
    # Medium-replay from committed policies: the same recipe rerun to the medium step.
    cfg = TINY.model_copy(update={"policies": "committed"})
    rerun = behaviour_for(family, cfg, 0, 1, tmp_path / "fresh", progress=False, history=True)
    a = d4rl_level(trained, "medium_replay", 400, family.horizon, meta)
    b = d4rl_level(rerun, "medium_replay", 400, family.horizon, meta)
    assert len(a) == trained.medium["step"]
    np.testing.assert_array_equal(a.observations, b.observations)  # same machine: bit for bit
    assert (tmp_path / "fresh" / "history" / "state.pt").exists()


def test_committed_policies_of_other_settings_are_refused(tmp_path: Path) -> None:
    family = single_task_family("hopper")
    committed = TINY.model_copy(update={"policies": "committed"})
    with pytest.raises(CommittedPoliciesError, match="no committed behaviour policies"):
        behaviour_for(family, committed, 0, 1, None)
    train_and_publish(family, TINY, 0, 1, tmp_path / "ckpt", "test", progress=False)
    longer = committed.model_copy(update={"sac_steps": 640})
    with pytest.raises(CommittedPoliciesError, match="for 480 steps"):
        load_committed(family, longer, 0, 1)
    with pytest.raises(CommittedPoliciesError, match="trained with"):
        load_committed(family, committed, 1, 1)  # another seed
    manifest = tmp_path / "behaviour" / "hopper" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"sac_steps": 480', '"sac_steps": 481'))
    with pytest.raises(CommittedPoliciesError, match="sha256"):
        load_committed(family, committed, 0, 1)


def test_a_fresh_clone_resumes_from_the_committed_learner(tmp_path: Path) -> None:
    family = single_task_family("hopper")
    half = TINY.model_copy(update={"sac_steps": 320})
    train_behaviour(family, half, 0, 1, tmp_path / "here", progress=False)
    publish_progress(family, TINY, 0, tmp_path / "here")  # same run settings, longer budget
    assert "| hopper | unfinished | 320 |" in (tmp_path / "behaviour/README.md").read_text()
    # Another machine: no checkpoint directory, only the committed learner state.
    fresh = behaviour_for(family, TINY, 0, 1, tmp_path / "there", progress=False)
    assert fresh.stats["resumed_from"] == 320 and fresh.stats["buffer_from"] == 320
    assert [s["step"] for s in fresh.snapshots] == [160, 320, 480]
    with pytest.raises(MissingHistory):
        fresh.replay()  # the buffer restarted at step 320


@pytest.mark.parametrize("learner", ["sb3_sac", "sbx_sac"])
def test_a_resumed_learner_refills_its_buffer_with_its_own_policy(learner: str) -> None:
    # SB3 acts uniformly at random until learning_starts; a learner resumed on an empty
    # buffer must act with its policy instead, and still not update before learning_starts.
    family = single_task_family("hopper")
    env = TaskConditionedEnv(family, family.train_tasks)
    model = make_learner(env, TINY.model_copy(update={"learner": learner}), seed=1).model
    model.learning_starts = 1000
    predicted: list[np.ndarray] = []
    predict = model.predict

    def spy(obs: np.ndarray, *args: object, **kwargs: object) -> tuple[np.ndarray, object]:
        action, state = predict(obs, *args, **kwargs)  # the real policy's action
        predicted.append(np.asarray(action).copy())
        return action, state

    model.predict = spy
    model.learn(total_timesteps=40)
    assert predicted == []  # SB3's warm-up: random actions
    refill_from_policy(model)
    model.learn(total_timesteps=40, reset_num_timesteps=False)
    assert len(predicted) == 40 and model._n_updates == 0
    stored = model.replay_buffer.actions[40:80, 0]
    np.testing.assert_allclose(stored, np.concatenate(predicted), rtol=0, atol=1e-6)


def test_reused_envs_give_the_episodes_of_fresh_ones() -> None:
    family = single_task_family("hopper")
    pool, ids = EnvPool(family), np.zeros(8, dtype=np.int64)

    def run(make_env: object = None) -> tuple[np.ndarray, np.ndarray]:
        policy = random_policy(family.act_dim, np.random.default_rng(1))
        data, returns = rollout(family, ids, policy, 5, make_env)  # type: ignore[arg-type]
        return data.observations, returns

    fresh = run()
    for _ in range(2):  # the second round reuses the first round's envs
        again = run(pool.batched)
        np.testing.assert_array_equal(again[0], fresh[0])
        np.testing.assert_array_equal(again[1], fresh[1])
    assert len(pool.envs[0]) == 8

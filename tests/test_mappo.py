"""JAX MAPPO behaviour learner of SMAX (cmt/behaviour/mappo.py): masks, the centralised
critic's input, snapshots and checkpoints, exact resume, exported tier policies, learning."""

from __future__ import annotations

import runpy
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from cmt.behaviour import mappo
from cmt.behaviour.mappo import (
    CHECKPOINT_FILE,
    MappoLearner,
    SmaxTrainEnv,
    TrainState,
    actor_input,
    learner_for,
    load_tier_policies,
    load_tier_policy,
    numpy_policy,
    policy_meta,
    policy_weights,
    run_fingerprint,
    save_tier_policy,
    sb3_policy_weights,
    train_mappo,
)
from cmt.behaviour.ppo import TIERS, build_smax_datasets, record_tier
from cmt.behaviour.rollout import seed_from
from cmt.behaviour.unit_actor import NUM_MOVES, target_features
from cmt.checkpoint import atomic_torch_save, load_sealed
from cmt.data.hdf5 import read_hdf5
from cmt.envs.smax import UNIT_FEATURES, make_smax, run_episodes, smax_map
from cmt.sections import PpoConfig

# 3m: 4 episodes x 16 steps x 3 allies = 192 agent steps per update, 2 minibatches.
TINY = PpoConfig(
    total_steps=3 * 192,
    n_envs=4,
    n_steps=16,
    batch_size=96,
    n_epochs=2,
    snapshot_every=192,
    eval_episodes=4,
    net_arch=(32,),
    critic_arch=(32,),
)


@pytest.fixture(scope="module")
def learner() -> MappoLearner:
    return learner_for("3m", TINY)  # the one train_mappo uses: compiled once


def test_actions_respect_masks(learner: MappoLearner) -> None:
    ts = learner.init(jax.random.PRNGKey(0))
    for _ in range(4):  # 64 steps of 4 episodes: deaths, resets and attacks come up
        ts, traj = learner.rollout(ts)
        avail, actions = np.asarray(traj.avail), np.asarray(traj.actions)
        assert np.take_along_axis(avail, actions[..., None], -1).all()
    # An agent with a single available action (dead: stop) always takes it.
    single = avail.sum(-1) == 1
    assert single.any() and (actions[single] == 4).all()

    rng = np.random.default_rng(0)
    weights = policy_weights(ts.params["actor"])
    meta = {"net_arch": [32], "activation": "relu", "agent_id": True}
    policy = numpy_policy(weights, meta, rng)
    obs = rng.standard_normal((64, 3, 75)).astype(np.float32)
    masks = rng.random((64, 3, 8)) < 0.3
    masks[..., 4] = True
    for t in range(20):
        a = policy(obs, masks, t)
        assert np.take_along_axis(masks, a[..., None], -1).all()


def test_critic_sees_the_world_state(learner: MappoLearner) -> None:
    env = SmaxTrainEnv("3m")
    state = jax.jit(env.reset)(jax.random.PRNGKey(1))
    obs, avail, world = jax.jit(env.observe)(state)
    spec = smax_map("3m")
    assert obs.shape == (3, spec.obs_dim) and avail.shape == (3, spec.num_actions)
    # SMAX's world state: every unit (allies and enemies), not any one ally's view.
    np.testing.assert_array_equal(world, env.env.get_world_state(state))
    assert world.shape == (env.world_dim,) and env.world_dim == 12 * 6
    ts = learner.init(jax.random.PRNGKey(0))
    first = ts.params["critic"]["params"]["hidden_0"]["kernel"]
    assert first.shape == (env.world_dim, 32)  # the critic's input is the world state
    _, traj = learner.rollout(ts)
    assert traj.critic_in.shape == (16, 4, env.world_dim) and traj.value.shape == (16, 4)
    # The actor sees the stored observation plus the agent one-hot, nothing else.
    x = actor_input(np.asarray(obs))
    np.testing.assert_array_equal(x[:, : spec.obs_dim], obs)
    np.testing.assert_array_equal(x[:, spec.obs_dim :], np.eye(3))


def test_training_writes_snapshots_and_checkpoint(tmp_path: Path) -> None:
    run = train_mappo("3m", TINY, seed=0, behaviour_dir=tmp_path, progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 192, 384, 576]
    assert [s["env_step"] for s in run.snapshots] == [0, 64, 128, 192]
    assert all(0.0 <= s["win_rate"] <= 1.0 for s in run.snapshots)
    path = tmp_path / CHECKPOINT_FILE
    assert path.stat().st_size < 5_000_000
    state = load_sealed(path)
    assert int(state["train"]["update"]) == 3 and len(state["snapshots"]) == 4
    again = train_mappo("3m", TINY, seed=0, behaviour_dir=tmp_path, progress=False)
    assert again.stats["resumed_from"] == 576  # finished: nothing retrained


class _Killed(Exception):
    pass


# The recurrent actor (a GRU after the first hidden layer): two hidden layers around it.
TINY_GRU = TINY.model_copy(update={"actor_rnn": 16, "net_arch": (32, 32)})


@pytest.mark.parametrize("cfg", [TINY, TINY_GRU], ids=["mlp", "gru"])
def test_resume_gives_the_uninterrupted_parameters(tmp_path: Path, cfg: PpoConfig) -> None:
    whole = train_mappo("3m", cfg, seed=3, behaviour_dir=tmp_path / "a", progress=False)

    def kill_at_384(step: int, metrics: dict[str, float]) -> None:
        if step == 384:
            raise _Killed

    with pytest.raises(_Killed):
        train_mappo("3m", cfg, 3, tmp_path / "b", on_metrics=kill_at_384, progress=False)
    resumed = train_mappo("3m", cfg, seed=3, behaviour_dir=tmp_path / "b", progress=False)
    assert resumed.stats["resumed_from"] == 384
    assert [s["step"] for s in resumed.snapshots] == [0, 192, 384, 576]
    for a, b in zip(whole.snapshots, resumed.snapshots, strict=True):
        assert a["win_rate"] == b["win_rate"] and a["mean_return"] == b["mean_return"]
        for name, tensor in a["policy"].items():
            torch.testing.assert_close(tensor, b["policy"][name], rtol=0, atol=0)
    # Other settings (here: snapshots, which compile nothing new): the checkpoint is not reused.
    other = cfg.model_copy(update={"snapshot_every": 384})
    assert train_mappo("3m", other, 3, tmp_path / "b", progress=False).stats["resumed_from"] == 0


# Overlapped rollouts: a snapshot every 2 updates, so a segment overlaps one rollout.
TINY_OVERLAP = TINY.model_copy(update={"overlap_rollout": True, "snapshot_every": 384})


def test_overlapped_rollouts_collect_with_the_actor_one_update_old(tmp_path: Path) -> None:
    run = train_mappo("3m", TINY_OVERLAP, seed=3, behaviour_dir=tmp_path / "a", progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 384, 576]
    # The schedule by hand, in one thread: segment [0, 384) overlaps its second rollout with
    # the first update, so that rollout's actor is the untrained one; [384, 576) is one update.
    learner = learner_for("3m", TINY_OVERLAP)
    ts = learner.init(mappo._Run(learner, TINY_OVERLAP, 3, None, None).init_key)

    def learn(ts: TrainState, traj: Any, fresh: bool) -> Any:
        update = learner.learn if fresh else learner.learn_lagged
        return update(replace(ts, key=jax.random.fold_in(ts.key, 1)), traj)[0]

    for updates in (2, 1):
        ts, traj = learner.rollout(ts)
        for i in range(updates):
            learnt = learn(ts, traj, fresh=i == 0)
            rolled = ts
            if i + 1 < updates:
                rolled, traj = learner.rollout(ts)  # the actor before this update
            ts = replace(
                learnt, env_state=rolled.env_state, ep_return=rolled.ep_return,
                hidden=rolled.hidden, key=rolled.key,
            )  # fmt: skip
    expected = policy_weights(ts.params["actor"])
    for name, tensor in run.snapshots[-1]["policy"].items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    # A lagged rollout is learnt with the current critic's values, its ratio clipped around
    # the current actor and weighted by current over collecting probabilities: on a rollout
    # of the current actor that is the plain update (weights 1, to rounding).
    ts, traj = learner.rollout(ts)
    plain, lagged = learner.learn(ts, traj)[0], learner.learn_lagged(ts, traj)[0]
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(lagged.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The lag changes what is learnt: sequential PPO on the same seed ends elsewhere.
    sequential = TINY_OVERLAP.model_copy(update={"overlap_rollout": False})
    other = train_mappo("3m", sequential, 3, tmp_path / "s", progress=False).snapshots[-1]
    assert any(
        not torch.equal(tensor, other["policy"][name])
        for name, tensor in run.snapshots[-1]["policy"].items()
    )
    # A separate run by its fingerprint (the default's fingerprint is the one before the
    # field existed), resumed exactly from a snapshot.
    assert "overlap_rollout" not in run_fingerprint("3m", sequential, 3)
    assert '"overlap_rollout": true' in run_fingerprint("3m", TINY_OVERLAP, 3)

    def kill_at_384(step: int, metrics: dict[str, float]) -> None:
        if step == 384:
            raise _Killed

    with pytest.raises(_Killed):
        train_mappo("3m", TINY_OVERLAP, 3, tmp_path / "b", on_metrics=kill_at_384, progress=False)
    resumed = train_mappo("3m", TINY_OVERLAP, 3, tmp_path / "b", progress=False)
    assert resumed.stats["resumed_from"] == 384
    for name, tensor in run.snapshots[-1]["policy"].items():
        torch.testing.assert_close(tensor, resumed.snapshots[-1]["policy"][name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="feed-forward actor"):
        PpoConfig(learner="maskable_ppo", overlap_rollout=True)
    with pytest.raises(ValueError, match="feed-forward actor"):
        PpoConfig(actor_rnn=16, overlap_rollout=True)


def test_tier_policy_files_match_the_actor(tmp_path: Path, learner: MappoLearner) -> None:
    ts = learner.init(jax.random.PRNGKey(5))
    meta = {"net_arch": [32], "activation": "relu", "agent_id": True, "seed": 7, "tier": "good"}
    save_tier_policy(tmp_path / "good.pt", policy_weights(ts.params["actor"]), meta)
    policy, loaded = load_tier_policy(tmp_path / "good.pt", np.random.default_rng(0))
    assert loaded == meta
    assert set(load_tier_policies(tmp_path)) == {"good"}
    # Same network: sampling from numpy with Gumbel noise equals argmax of jax's logits + noise.
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((8, 3, 75)).astype(np.float32)
    avail = rng.random((8, 3, 8)) < 0.5
    avail[..., 4] = True
    _, logits = learner.policy_step(
        ts.params["actor"], ts.hidden[:1], jnp.asarray(obs), avail, jnp.ones(8, bool)
    )
    logits = np.asarray(logits)
    noise = np.random.default_rng(2).gumbel(size=logits.shape)
    expected = np.where(avail, logits + noise, -np.inf).argmax(-1)
    _, replay = load_tier_policy(tmp_path / "good.pt", np.random.default_rng(2))
    policy, _ = load_tier_policy(tmp_path / "good.pt", np.random.default_rng(2))
    np.testing.assert_array_equal(policy(obs, avail, 0), expected)


def test_recurrent_actor_settings_are_checked_and_fingerprinted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only the mappo learner"):
        PpoConfig(learner="maskable_ppo", actor_rnn=16)
    # A feed-forward run keeps the fingerprint it had before the field existed (so committed
    # policies still match); a recurrent one is another run.
    assert "actor_rnn" not in run_fingerprint("3m", TINY, 0)
    assert '"actor_rnn": 16' in run_fingerprint("3m", TINY_GRU, 0)
    # A checkpoint written before the recurrent actor (no hidden state) still resumes.
    train_mappo("3m", TINY, 0, tmp_path, progress=False)
    state = load_sealed(tmp_path / CHECKPOINT_FILE)
    del state["train"]["hidden"]
    atomic_torch_save(state, tmp_path / CHECKPOINT_FILE)
    assert train_mappo("3m", TINY, 0, tmp_path, progress=False).stats["resumed_from"] == 576


TINY_AGENT = TINY.model_copy(update={"critic_state": "agent"})


def test_agent_specific_critic_values_each_ally(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only the mappo learner"):
        PpoConfig(learner="maskable_ppo", critic_state="agent")
    # The world-state critic keeps the fingerprint it had before the field existed.
    assert "critic_state" not in run_fingerprint("3m", TINY, 0)
    assert '"critic_state": "agent"' in run_fingerprint("3m", TINY_AGENT, 0)
    learner = learner_for("3m", TINY_AGENT)
    s, o = learner.env.world_dim, smax_map("3m").obs_dim
    ts = learner.init(jax.random.PRNGKey(0))
    assert ts.params["critic"]["params"]["hidden_0"]["kernel"].shape == (s + o + 3, 32)
    for _ in range(3):  # 48 steps: some episodes end and restart
        ts, traj = learner.rollout(ts)
    x, end = np.asarray(traj.critic_in), np.asarray(traj.end_critic)
    assert x.shape == (16, 4, 3, s + o + 3) and traj.value.shape == (16, 4, 3)
    # Each ally: the shared world state, then its own observation and its one-hot.
    np.testing.assert_array_equal(x[..., 0, :s], x[..., 2, :s])
    np.testing.assert_array_equal(x[..., s : s + o], np.asarray(traj.obs))
    np.testing.assert_array_equal(x[..., s + o :], np.broadcast_to(np.eye(3), (16, 4, 3, 3)))
    # The state at a step's end is the next step's input unless the episode ended there.
    done = np.asarray(traj.terminated | traj.truncated)
    assert done.any() and not done.all()
    going = ~done[:-1]
    np.testing.assert_allclose(end[:-1][going], x[1:][going], rtol=1e-6)
    assert not np.allclose(end[:-1][~going], x[1:][~going])  # the end, not the fresh episode
    adv, target = learner._advantages(ts, traj)
    assert adv.shape == target.shape == (16, 4, 3) and np.isfinite(np.asarray(adv)).all()
    run = train_mappo("3m", TINY_AGENT, 0, tmp_path, progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 192, 384, 576]


def test_recurrent_actor_carries_its_state_and_restarts_it() -> None:
    learner = learner_for("3m", TINY_GRU)
    ts = learner.init(jax.random.PRNGKey(0))
    assert ts.hidden.shape == (4, 3, 16)
    ts, traj = learner.rollout(ts)
    assert np.asarray(traj.start)[0].all()  # fresh episodes
    for _ in range(6):  # on to a rollout in which episodes end and restart (3m: ~30 steps)
        ts, traj = learner.rollout(ts)
        if np.asarray(traj.start)[1:].any():
            break
    start, hidden = np.asarray(traj.start), np.asarray(traj.hidden)
    assert start[1:].any()
    ended = np.asarray(traj.terminated | traj.truncated)
    np.testing.assert_array_equal(start[1:], ended[:-1])  # a start follows every end
    assert np.abs(hidden[1:][~start[1:]]).max() > 0  # a state is carried within an episode
    # Replayed through time from the rollout's first state (the update's path), the actor
    # gives the probabilities it acted with.
    logits = learner.sequence_logits(
        ts.params["actor"], traj.hidden[0], traj.obs, traj.avail, traj.start
    )
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), traj.actions[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(logp), np.asarray(traj.logp), atol=1e-5)
    # Without the carried state (every step a fresh start) the logits change: it is used.
    fresh = learner.sequence_logits(
        ts.params["actor"], traj.hidden[0], traj.obs, traj.avail, jnp.ones_like(traj.start)
    )
    assert not np.allclose(np.asarray(fresh), np.asarray(logits), atol=1e-3)


def test_recurrent_tier_policy_replays_the_actor(tmp_path: Path) -> None:
    learner = learner_for("3m", TINY_GRU)
    ts = learner.init(jax.random.PRNGKey(5))
    # A trained-like state: perturb the (near-uniform) initial logits head.
    params = jax.tree.map(lambda x: x * 3.0, ts.params["actor"])
    meta = {**policy_meta(learner, 0), "tier": "good"}
    save_tier_policy(tmp_path / "good.pt", policy_weights(params), meta)
    rng = np.random.default_rng(1)
    steps, episodes = 6, 5
    obs = rng.standard_normal((steps, episodes, 3, 75)).astype(np.float32)
    avail = rng.random((steps, episodes, 3, 8)) < 0.6
    avail[..., 1] = True
    starts = np.zeros((steps, episodes), bool)
    starts[0] = True
    hidden0 = jnp.zeros((episodes, 3, 16))
    logits = np.asarray(
        learner.sequence_logits(params, hidden0, jnp.asarray(obs), avail, jnp.asarray(starts))
    )
    noise = np.random.default_rng(2)
    policy, _ = load_tier_policy(tmp_path / "good.pt", np.random.default_rng(2))
    for _ in range(2):  # a second batch of episodes restarts the state at t == 0
        for t in range(steps):
            expected = np.where(avail[t], logits[t] + noise.gumbel(size=logits[t].shape), -np.inf)
            np.testing.assert_array_equal(policy(obs[t], avail[t], t), expected.argmax(-1))


def test_sb3_weights_give_maskable_ppo_logits() -> None:
    import gymnasium as gym
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    torch.manual_seed(0)
    net = MaskableActorCriticPolicy(
        gym.spaces.Box(-1, 1, (75,)), gym.spaces.Discrete(8), lambda _: 1e-3, net_arch=[16, 16]
    )
    weights = sb3_policy_weights(net.state_dict())
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((6, 3, 75)).astype(np.float32)
    avail = np.ones((6, 3, 8), dtype=bool)
    with torch.no_grad():
        logits = net.get_distribution(torch.as_tensor(obs.reshape(18, 75))).distribution.logits
    logits = logits.numpy().reshape(6, 3, 8)
    noise = np.random.default_rng(1).gumbel(size=logits.shape)
    meta = {"net_arch": [16, 16], "activation": "tanh", "agent_id": False}
    policy = numpy_policy(weights, meta, np.random.default_rng(1))
    # log-softmax shifts every logit of a row by one constant: the argmax stays.
    np.testing.assert_array_equal(policy(obs, avail, 0), (logits + noise).argmax(-1))


@pytest.mark.slow
def test_datasets_from_mappo_and_their_policy_files(tmp_path: Path) -> None:
    out, behaviour = tmp_path / "3m", tmp_path / "behaviour"
    summary = build_smax_datasets("3m", out, behaviour, TINY, 8, seed=0, progress=False)
    assert [s["step"] for s in summary["snapshots"]] == [0, 192, 384, 576]
    data = read_hdf5(out / "train.hdf5")
    assert data.metadata["behaviour"] == "mappo"
    files = sorted(p.name for p in (out / "policies").iterdir())
    assert files == ["good.pt", "medium.pt", "poor.pt"]
    assert set(load_tier_policies(out / "policies")) == {"good", "medium", "poor"}
    # A fresh clone rebuilds a tier's episodes from its policy file alone.
    rng = np.random.default_rng(summary["tiers"]["good"]["seed"])
    policy, meta = load_tier_policy(out / "policies" / "good.pt", rng)
    assert meta["learner"] == "mappo" and meta["map"] == "3m" and meta["tier"] == "good"
    assert meta["step"] == summary["tiers"]["good"]["snapshot_step"]
    assert meta["win_rate"] == summary["tiers"]["good"]["win_rate"]
    again, _, _ = record_tier("3m", policy, meta["episodes"], seed_from(rng), "good")
    good = data.infos["level"] == TIERS.index("good")
    np.testing.assert_array_equal(again.actions, data.actions[good])
    np.testing.assert_array_equal(again.observations, data.observations[good])


@pytest.mark.slow
def test_mappo_learns_3m() -> None:
    """About 100,000 SMAX steps (12 updates) more than double the random policy's return."""
    cfg = PpoConfig(
        total_steps=98_304 * 3,
        n_envs=64,
        n_steps=128,
        batch_size=6_144,
        learning_rate=3e-3,
        clip_range=0.1,
        snapshot_every=98_304 * 3 // 2,
        eval_episodes=128,
    )
    run = train_mappo("3m", cfg, seed=0, progress=False)
    random = run_episodes("3m", 128, lambda o, a, t: _random(a), seed=1).returns.mean()
    assert run.snapshots[0]["mean_return"] < random + 0.1  # the untrained actor: near uniform
    trained = run.snapshots[-1]["mean_return"]
    assert trained > 2 * random and trained > random + 0.15, (trained, random)  # 0.44 vs 0.18


_RNG = np.random.default_rng(0)


def _random(avail: np.ndarray) -> np.ndarray:
    return (_RNG.random(avail.shape) * avail).argmax(-1)


def _reshaped_rollouts(field: str, value: float, enemy_health: float | None = None) -> list[Any]:
    """The rollouts of TINY and of TINY with the reward-reshaping ``field`` at ``value``, from
    the same start (the enemies' health set to ``enemy_health`` when given), after checking
    that only MAPPO takes the field and that only a reshaping run's fingerprint names it."""
    with pytest.raises(ValueError, match="only the mappo learner"):
        PpoConfig(learner="maskable_ppo", **{field: value})
    assert field not in run_fingerprint("3m", TINY, 0)  # committed runs still match
    shaped = TINY.model_copy(update={field: value})
    assert f'"{field}": {value}' in run_fingerprint("3m", shaped, 0)
    trajs = []
    for cfg in (TINY, shaped):
        learner = learner_for("3m", cfg)
        ts = learner.init(jax.random.PRNGKey(0))
        if enemy_health is not None:
            env = ts.env_state
            health = env.state.unit_health.at[:, 3:].set(enemy_health)
            ts = ts.replace(env_state=env.replace(state=env.state.replace(unit_health=health)))
        trajs.append(learner.rollout(ts)[1])
    return trajs


def test_training_win_bonus_reshapes_only_the_reward_trained_on() -> None:
    # Nearly dead enemies: the random actor wins some of these episodes.
    plain, bonus = _reshaped_rollouts("train_win_bonus", 5.0, enemy_health=0.01)
    won = np.asarray(plain.won)
    assert won.any() and not won.all()
    np.testing.assert_array_equal(np.asarray(bonus.actions), np.asarray(plain.actions))
    np.testing.assert_allclose(np.asarray(bonus.reward - plain.reward), 4.0 * won, atol=1e-6)
    # The returns the logs, snapshots and tiers report stay SMAX's.
    np.testing.assert_array_equal(np.asarray(bonus.ep_return), np.asarray(plain.ep_return))


def test_training_ally_loss_charges_the_allies_health_lost() -> None:
    plain, charged = _reshaped_rollouts("train_ally_loss", 0.5)
    np.testing.assert_array_equal(np.asarray(charged.actions), np.asarray(plain.actions))
    lost = np.asarray(plain.reward - charged.reward) / 0.5  # the allies' health lost per step
    assert (lost >= -1e-6).all() and (lost > 0).any()
    np.testing.assert_array_equal(np.asarray(charged.ep_return), np.asarray(plain.ep_return))
    # Every episode starts at full health: one that the enemies win loses all of it.
    ended = np.asarray(plain.terminated) & ~np.asarray(plain.won)
    checked = 0
    for b in range(ended.shape[1]):
        first_end = np.flatnonzero(np.asarray(plain.terminated)[:, b])
        if first_end.size and ended[first_end[0], b]:
            assert lost[: first_end[0] + 1, b].sum() == pytest.approx(1.0, abs=1e-5)
            checked += 1
    assert checked > 0


def test_critic_extra_epochs_train_the_critic_alone() -> None:
    with pytest.raises(ValueError, match="only the mappo learner"):
        PpoConfig(learner="maskable_ppo", critic_extra_epochs=1)
    extra = TINY.model_copy(update={"critic_extra_epochs": 2})
    assert "critic_extra_epochs" not in run_fingerprint("3m", TINY, 0)
    assert '"critic_extra_epochs": 2' in run_fingerprint("3m", extra, 0)
    plain_learner, extra_learner = learner_for("3m", TINY), learner_for("3m", extra)
    ts, traj = plain_learner.rollout(plain_learner.init(jax.random.PRNGKey(0)))
    (plain, plain_metrics), (trained, metrics) = (
        plain_learner.learn(ts, traj),
        extra_learner.learn(ts, traj),
    )

    # The joint epochs are the same; the extra ones step the critic and its optimiser only.
    def same(a: Any, b: Any) -> bool:
        leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return all(np.array_equal(x, y) for x, y in leaves)

    assert same(plain.params["actor"], trained.params["actor"])
    assert same(plain.opt_state["actor"], trained.opt_state["actor"])
    assert not same(plain.params["critic"], trained.params["critic"])
    assert float(metrics["value_loss"]) == float(plain_metrics["value_loss"])  # PPO epochs'
    # Twice as many optimiser steps for the critic as for the actor.
    steps = plain_learner.num_minibatches * 2
    for name, expected in (("actor", steps), ("critic", 2 * steps)):
        counts = optax.tree_utils.tree_get_all_with_path(trained.opt_state[name], "count")
        assert counts and all(int(count) == expected for _, count in counts)


TINY_UNITS = TINY.model_copy(update={"actor_arch": "units"})


def test_unit_actor_scores_each_target_by_one_rule(tmp_path: Path) -> None:
    for bad in ({"learner": "maskable_ppo"}, {"actor_rnn": 16}):
        with pytest.raises(ValueError, match="actor_arch"):
            PpoConfig(actor_arch="units", **bad)
    assert "actor_arch" not in run_fingerprint("3m", TINY, 0)  # committed runs still match
    assert '"actor_arch": "units"' in run_fingerprint("3m", TINY_UNITS, 0)
    learner = learner_for("3m", TINY_UNITS)
    ts = learner.init(jax.random.PRNGKey(5))
    params = jax.tree.map(lambda x: x * 3.0, ts.params["actor"])  # away from near-uniform
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((8, 3, 75)).astype(np.float32)
    avail = np.ones((8, 3, 8), bool)
    hidden, start = ts.hidden[:1], jnp.ones(8, bool)
    logits = np.asarray(learner.policy_step(params, hidden, jnp.asarray(obs), avail, start)[1])
    assert np.ptp(logits[..., 5:], axis=-1).min() > 0.1  # the targets' logits differ
    # Swapping two enemies' blocks (3m: allies 2 blocks, then enemies 3, of 13 features)
    # swaps their attack logits and leaves the moves' alone.
    blocks = obs[..., :65].reshape(8, 3, 5, 13)
    swapped = np.concatenate([blocks[..., [0, 1, 4, 3, 2], :].reshape(8, 3, 65), obs[..., 65:]], -1)
    out = np.asarray(learner.policy_step(params, hidden, jnp.asarray(swapped), avail, start)[1])
    np.testing.assert_allclose(out[..., [0, 1, 2, 3, 4, 7, 6, 5]], logits, atol=1e-5)
    _assert_tier_file_replays(learner, params, obs, logits, tmp_path)
    # And it trains end to end.
    run = train_mappo("3m", TINY_UNITS, 0, tmp_path / "run", progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 192, 384, 576]


def _assert_tier_file_replays(
    learner: MappoLearner, params: Any, obs: np.ndarray, logits: np.ndarray, tmp_path: Path
) -> None:
    """The tier file of ``params`` replays the actor in numpy: the actions of ``logits`` (the
    actor's on ``obs``) under the same Gumbel noise and a random mask."""
    meta = {**policy_meta(learner, 0), "tier": "good"}
    assert meta["actor"] == learner.cfg.actor_arch
    save_tier_policy(tmp_path / "good.pt", policy_weights(params), meta)
    noise = np.random.default_rng(2).gumbel(size=logits.shape)
    policy, _ = load_tier_policy(tmp_path / "good.pt", np.random.default_rng(2))
    mask = np.random.default_rng(3).random(logits.shape) < 0.5
    mask[..., 4] = True
    expected = np.where(mask, logits + noise, -np.inf).argmax(-1)
    np.testing.assert_array_equal(policy(obs, mask, 0), expected)


def _who_shot_whom(obs: np.ndarray, prev_attack: np.ndarray, a: int, e: int) -> tuple[Any, ...]:
    """target_features of one step worked out unit by unit from SMAX's state: ``prev_attack``
    is every unit's last attack action (allies then enemies), ``obs`` (A, O) the allies'."""
    units = np.arange(a + e)
    # SMAX's world step: an ally's 5 + t hits enemy t, an enemy's 5 + t hits ally a - 1 - t.
    hit = np.where(units < a, a + prev_attack - 5, a + 4 - prev_attack)
    hit = np.where(prev_attack < 5, -1, hit)
    allies, enemies, own = np.zeros((a, a - 1, 1)), np.zeros((a, e, 2)), np.zeros((a, 1))
    for i in range(a):
        seen = obs[i, : (a - 1 + e) * UNIT_FEATURES].reshape(-1, UNIT_FEATURES)[:, 0] > 0
        others = [u for u in range(a + e) if u != i]  # the order of the blocks
        seen_units = [u for u, s in zip(others, seen, strict=True) if s]
        for k in range(a - 1):
            allies[i, k, 0] = sum(hit[u] == others[k] for u in seen_units if u >= a) / e
        for j in range(e):  # the allies seen to shoot at j, whether j is seen or not
            enemies[i, j, 0] = sum(hit[u] == a + j for u in seen_units if u < a) / (a - 1)
            enemies[i, j, 1] = seen[a - 1 + j] and hit[a + j] == i
        own[i, 0] = sum(hit[u] == i for u in seen_units if u >= a) / e
    return allies, enemies, own


def test_target_features_say_who_shot_whom_in_smax() -> None:
    """Decoded from the observation alone, they match SMAX's own record of the last attacks,
    on 5m_vs_6m episodes where the allies shoot at random whenever they can."""
    env, (a, e) = make_smax("5m_vs_6m"), (5, 6)
    rng, key, shots = np.random.default_rng(0), jax.random.PRNGKey(0), 0
    obs, state = env.reset(key)
    for _ in range(100):
        all_avail = env.get_avail_actions(state)
        avail = {ag: np.asarray(all_avail[ag]) for ag in env.agents}
        # Random available actions, an attack whenever one is available.
        scores = {
            ag: (rng.random(v.shape) + (np.arange(v.size) >= NUM_MOVES)) * v
            for ag, v in avail.items()
        }
        actions = {ag: jnp.asarray(v.argmax()) for ag, v in scores.items()}
        key, sub = jax.random.split(key)
        obs, state, _, dones, _ = env.step(sub, state, actions)
        if dones["__all__"]:
            obs, state = env.reset(sub)
            continue
        o = np.stack([np.asarray(obs[ag]) for ag in env.agents])
        alive = np.asarray(state.state.unit_alive[:a])
        got = target_features(actor_input(o), a, e)
        want = _who_shot_whom(o, np.asarray(state.state.prev_attack_actions), a, e)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[alive], w[alive], atol=1e-6)
        shots += int(want[1][alive].sum() > 0 and want[0][alive].sum() > 0)
    assert shots > 10  # steps where enemies and allies had both shot at something seen


def test_unit_actor_with_target_features(tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"actor_arch": "unit_targets"})
    assert '"actor_arch": "unit_targets"' in run_fingerprint("3m", cfg, 0)
    with pytest.raises(ValueError, match="unit_targets"):
        PpoConfig(actor_arch="unit_targets", actor_rnn=16)
    learner = learner_for("3m", cfg)
    ts = learner.init(jax.random.PRNGKey(5))
    params = jax.tree.map(lambda x: x * 3.0, ts.params["actor"])
    _, traj = learner.rollout(ts)
    obs = np.asarray(traj.obs[:8, 0])  # real observations: (8, 3, 75)
    hidden, start = ts.hidden[:1], jnp.ones(8, bool)
    avail = jnp.ones((8, 3, 8), bool)
    logits = np.asarray(learner.policy_step(params, hidden, jnp.asarray(obs), avail, start)[1])
    _assert_tier_file_replays(learner, params, obs, logits, tmp_path)
    run = train_mappo("3m", cfg, 0, tmp_path / "run", progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 192, 384, 576]


def test_unit_critic_reads_the_world_state_unit_by_unit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="critic_units"):
        PpoConfig(critic_units=True, critic_state="agent")
    cfg = TINY.model_copy(update={"critic_units": True})
    assert "critic_units" not in run_fingerprint("3m", TINY, 0)  # committed runs still match
    assert '"critic_units": true' in run_fingerprint("3m", cfg, 0)
    learner = learner_for("3m", cfg)
    ts = learner.init(jax.random.PRNGKey(0))
    _, traj = learner.rollout(ts)
    world = np.asarray(traj.critic_in)  # (16, 4, 72): 6 units of 10 features, teams, types
    value = np.asarray(learner.value(ts.params["critic"], jnp.asarray(world)))
    assert value.shape == (16, 4) and np.ptp(value) > 0

    def swapped(i: int, j: int) -> np.ndarray:
        units = world[..., :60].reshape(16, 4, 6, 10).copy()
        units[..., [i, j], :] = units[..., [j, i], :]
        out = np.concatenate([units.reshape(16, 4, 60), world[..., 60:]], axis=-1)
        return np.asarray(learner.value(ts.params["critic"], jnp.asarray(out)))

    np.testing.assert_allclose(swapped(3, 5), value, atol=1e-5)  # two enemies: same value
    assert not np.allclose(swapped(0, 3), value, atol=1e-3)  # an ally for an enemy: not
    run = train_mappo("3m", cfg, 0, tmp_path / "run", progress=False)
    assert [s["step"] for s in run.snapshots] == [0, 192, 384, 576]


def test_temperature_probe_scales_the_tier_policies_sampling(learner: MappoLearner) -> None:
    """scripts/smax_temperature.py: temperature 1 is the tier policy's own sampling, 0 its
    greedy action (argmax of the masked logits)."""
    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "smax_temperature.py"))
    ts = learner.init(jax.random.PRNGKey(5))
    weights = policy_weights(ts.params["actor"])
    meta = {"net_arch": [32], "activation": "relu", "agent_id": True}
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((64, 3, 75)).astype(np.float32)
    avail = rng.random((64, 3, 8)) < 0.5
    avail[..., 4] = True

    def acts(temperature: float | None) -> np.ndarray:
        noise = np.random.default_rng(2)
        if temperature is not None:
            noise = script["ScaledGumbel"](noise, temperature)
        return np.asarray(numpy_policy(weights, meta, noise)(obs, avail, 0))

    np.testing.assert_array_equal(acts(1.0), acts(None))
    _, logits = learner.policy_step(
        ts.params["actor"], ts.hidden[:1], jnp.asarray(obs), avail, jnp.ones(64, bool)
    )
    greedy = np.where(avail, np.asarray(logits), -np.inf).argmax(-1)
    np.testing.assert_array_equal(acts(0.0), greedy)
    assert not np.array_equal(acts(1.0), greedy)  # sampling differs somewhere

"""Conformance of the batched SMAX environment (``cmt/envs/smax.py``) against SMAX itself.

Every test uses 3m with 8 episodes, so jax compiles each kernel once for the whole module.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmt.envs.registry import MultiAgentBatchedEnv
from cmt.envs.smax import (
    SMAX_MAPS,
    STOP_ACTION,
    SmaxBatchedEnv,
    heuristic_policy,
    make_smax,
    random_policy,
    run_episodes,
    smax_map,
)

MAP, B = "3m", 8


@pytest.mark.parametrize("name", sorted(SMAX_MAPS))
def test_map_registry_matches_smax(name: str) -> None:
    spec, env = smax_map(name), make_smax(name)
    assert (spec.num_agents, spec.num_enemies) == (env.num_allies, env.num_enemies)
    assert spec.obs_dim == env.observation_spaces["ally_0"].shape[0]
    assert spec.num_actions == env.action_spaces["ally_0"].n
    assert spec.horizon == 100


def test_unknown_map_names_the_known_ones() -> None:
    for lookup in (smax_map, SMAX_MAPS.__getitem__):
        with pytest.raises(KeyError, match=r"unknown SMAX map '4m'.*'2s3z', '3m'"):
            lookup("4m")


def rollout_steps(env: SmaxBatchedEnv, seed: int, steps: int) -> list[tuple[np.ndarray, ...]]:
    """Random available actions (from ``seed``) for ``steps`` steps; every step's outputs."""
    rng = np.random.default_rng(seed)
    policy = random_policy(rng)
    obs, avail = env.reset(seed)
    out = []
    for t in range(steps):
        actions = policy(obs, avail, t)
        assert np.take_along_axis(avail, actions[..., None], axis=2).all()
        result = env.step(actions)
        out.append((actions, *result))
        obs, avail = result[0], result[1]
    return out


def test_spaces_dtypes_masks_and_frozen_episodes() -> None:
    env = SmaxBatchedEnv(MAP, B)
    for name in MultiAgentBatchedEnv.__annotations__:
        assert isinstance(getattr(env, name), int)
    spec = smax_map(MAP)
    obs, avail = env.reset(0)
    assert obs.shape == (B, spec.num_agents, spec.obs_dim) and obs.dtype == np.float32
    assert avail.shape == (B, spec.num_agents, spec.num_actions) and avail.dtype == np.bool_
    assert avail[..., STOP_ACTION].all()
    assert not avail[..., 5:].any()  # nobody starts within attack range

    steps = rollout_steps(env, 0, spec.horizon + 5)
    ended_at = np.full(B, -1)
    for t, (_, obs, avail, reward, term, trunc, won) in enumerate(steps):
        assert reward.shape == term.shape == trunc.shape == won.shape == (B,)
        assert reward.dtype == np.float32 and won.dtype == np.bool_
        assert avail[..., STOP_ACTION].all()  # stop is always available, dead or alive
        assert not (term & trunc).any()
        assert not (won & ~term).any()  # a win is a termination
        fresh = (term | trunc) & (ended_at < 0)
        ended_at[fresh] = t
        frozen = (ended_at >= 0) & (ended_at < t)
        if frozen.any():
            _, last_obs, last_avail, _, last_term, last_trunc, last_won = steps[t - 1]
            assert (reward[frozen] == 0).all()
            np.testing.assert_array_equal(obs[frozen], last_obs[frozen])
            np.testing.assert_array_equal(avail[frozen], last_avail[frozen])
            np.testing.assert_array_equal(term[frozen], last_term[frozen])
            np.testing.assert_array_equal(trunc[frozen], last_trunc[frozen])
            np.testing.assert_array_equal(won[frozen], last_won[frozen])
    assert (ended_at >= 0).all() and (ended_at < spec.horizon).all()
    # A truncation is SMAX's step limit: exactly ``horizon`` steps.
    for b in range(B):
        _, *_, term, trunc, _ = steps[ended_at[b]]
        assert not trunc[b] or ended_at[b] == spec.horizon - 1


def test_seed_reproducibility() -> None:
    env = SmaxBatchedEnv(MAP, B)
    a, b = rollout_steps(env, 3, 12), rollout_steps(env, 3, 12)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    c = rollout_steps(env, 4, 1)
    assert not np.array_equal(a[0][1], c[0][1])


def test_reset_done_restarts_only_finished_episodes() -> None:
    env = SmaxBatchedEnv(MAP, B)
    policy = random_policy(np.random.default_rng(0))
    obs, avail = env.reset(1)
    done = np.zeros(B, dtype=bool)
    while not done.any():
        obs, avail, _, term, trunc, _ = env.step(policy(obs, avail, 0))
        done = term | trunc
    new_obs, _, mask = env.reset_done()
    np.testing.assert_array_equal(mask, done)
    np.testing.assert_array_equal(new_obs[~done], obs[~done])
    assert not np.array_equal(new_obs[done], obs[done])
    _, _, _, term, trunc, _ = env.step(np.full((B, smax_map(MAP).num_agents), STOP_ACTION))
    assert not (term | trunc)[done].any()  # restarted episodes run again


def test_run_episodes_records_and_the_heuristic_wins() -> None:
    batch = run_episodes(MAP, B, heuristic_policy(MAP, 0), seed=5, record=True)
    assert batch.returns.shape == batch.episode_won.shape == batch.lengths.shape == (B,)
    np.testing.assert_allclose(batch.returns, batch.rewards.sum(axis=0), rtol=1e-6)
    t = np.arange(batch.rewards.shape[0])[:, None]
    ends = (batch.terminated | batch.truncated) & (t == batch.lengths[None] - 1)
    assert ends.sum(axis=0).tolist() == [1] * B  # exactly one end, at the last step
    np.testing.assert_array_equal(batch.won.any(axis=0), batch.episode_won)
    taken = np.take_along_axis(batch.avail_actions, batch.actions[..., None], axis=3)[..., 0]
    assert taken[t < batch.lengths[None]].all()
    # SMAX's heuristic wins about half of 3m's battles against itself, and a win carries
    # SMAX's bonus of 1 on top of the damage reward.
    assert batch.episode_won.any()
    assert (batch.returns[batch.episode_won] >= 1.0).all()

"""The SMAX benchmark module: config, spaces, prompt data split by team episode, win-rate
scores, and batched evaluation of a team policy on the real SMAX environment."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from test_team_model import A, team_data

from cmt.benchmarks import Data, Episodes, make_benchmark
from cmt.benchmarks.smax import TIERS, MapName, SmaxData
from cmt.config import ConfigError, ModelConfig, parse_params
from cmt.data.agents import fold_agents
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.evaluation.rollout import evaluate_tasks
from cmt.models.policy import SequencePolicy

SMAX_METHODS = {
    "compare": {"methods": ["madt", "cmt_tuned"], "backbones": ["dt", "cmt"]},
    "evaluate": {"target_return": "max_train"},
}


def test_map_names_are_the_environment_registry() -> None:
    from cmt.envs.smax import SMAX_MAPS

    assert set(typing.get_args(MapName)) == set(SMAX_MAPS)
    from cmt.behaviour.ppo import TIERS as DATA_TIERS

    assert tuple(DATA_TIERS) == TIERS


def test_smax_section_is_checked() -> None:
    ok = parse_params({"data": {"benchmark": "smax", "map": "2s3z"}, **SMAX_METHODS})
    assert isinstance(ok.data, SmaxData) and ok.data.name == "smax_2s3z"
    with pytest.raises(ConfigError, match=r"data\.map: Input should be"):
        parse_params({"data": {"benchmark": "smax", "map": "27m_vs_30m"}, **SMAX_METHODS})
    with pytest.raises(ConfigError, match=r"data\.env: Extra inputs are not permitted"):
        parse_params({"data": {"benchmark": "smax", "env": "hopper"}, **SMAX_METHODS})
    with pytest.raises(ConfigError, match="prompt_dt"):  # not a method of this benchmark
        parse_params(
            {
                "data": {"benchmark": "smax"},
                "compare": {"methods": ["prompt_dt"], "backbones": ["prompt_dt"]},
                "evaluate": {"target_return": "max_train"},
                "tracking": {"registered_method": "prompt_dt"},
            }
        )


def _bench_and_data() -> tuple:
    bench = make_benchmark(SmaxData(benchmark="smax", map="3m"))
    team = team_data(lengths=tuple(range(3, 15)))  # 12 episodes, tiers 0..11 -> remap below
    level = np.repeat(np.arange(12) % 3, np.arange(3, 15))  # poor, medium, good, poor, ...
    team.infos["level"][:] = level
    return bench, Data(train=OfflineDataset(fold_agents(team)), demos=None, references={})


def test_prompt_data_holds_out_whole_team_episodes() -> None:
    bench, data = _bench_and_data()
    pd = bench.prompt_data(data, 0, val_fraction=0.25, seed=3)
    good = TIERS.index("good")

    def teams(ds: OfflineDataset) -> set[tuple]:
        # A team episode is identified by its (length, return) here: all distinct.
        return {(int(n), float(r)) for n, r in zip(ds.ep_len, ds.ep_return, strict=True)}

    for part in (pd.fit, pd.val):
        assert np.all(part.data.infos["level"] == good)
        assert part.num_episodes % A == 0  # every agent of each team episode
    assert not teams(pd.fit) & teams(pd.val)
    assert teams(pd.fit) | teams(pd.val) == teams(bench.prompt_target(data, 0))
    # 4 good team episodes: at least 2 held out for early stopping, never in the pool.
    assert len(teams(pd.val)) == 2
    assert not teams(pd.pool) & teams(pd.val) and pd.pool.num_episodes == (12 - 2) * A


def test_score_is_the_win_rate() -> None:
    bench, data = _bench_and_data()
    scores = bench.score(data, 0, Episodes(np.array([1.0, 2.0]), np.array([False, True])))
    np.testing.assert_array_equal(scores, [0.0, 100.0])
    with pytest.raises(ValueError, match="outcome"):
        bench.score(data, 0, Episodes(np.array([1.0])))
    # Dataset episodes: won where the episode's last step says so (team_data: terminals).
    ds = data.train
    np.testing.assert_array_equal(
        bench.episode_scores(data, ds), 100.0 * ds.data.terminals[ds.ep_start + ds.ep_len - 1]
    )


def test_team_policy_evaluates_on_batched_smax() -> None:
    """An untrained shared policy plays real SMAX 3m episodes, all agents of all episodes in
    one batch; outcomes come back per episode."""
    bench = make_benchmark(SmaxData(benchmark="smax", map="3m"))
    sp = bench.spaces
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, d_model=16, n_head=1, context_len=4, prompt="none")
    model = SequencePolicy(cfg, sp.obs_dim, sp.act_dim, True, sp.num_agents).eval()
    norm = Normalizer.identity(sp.obs_dim)
    out = evaluate_tasks(model, norm, bench, [0], episodes=6, seed=0)
    ep = out[0]
    assert ep.returns.shape == (6,) and ep.won.shape == (6,) and ep.won.dtype == bool
    assert np.all(np.isfinite(ep.returns)) and np.all(ep.returns >= 0)
    # SMAX's win bonus is 1 on top of at most 1 of damage: a won episode returns more than 1.
    assert np.all(ep.returns[ep.won] > 1.0) and np.all(ep.returns[~ep.won] <= 1.0 + 1e-5)


def test_banded_team_policy_decodes_exactly_with_the_cache() -> None:
    """Under banded attention, the cached rollout of a team policy (agent ids, masked discrete
    actions) takes the same actions as recomputing the whole history: same returns and wins."""
    from cmt.evaluation.rollout import rollout

    bench = make_benchmark(SmaxData(benchmark="smax", map="3m"))
    sp = bench.spaces
    torch.manual_seed(1)
    cfg = ModelConfig(
        n_layer=2, d_model=16, n_head=1, context_len=3, train_len=6, prompt="none",
        attention="banded", condition_on_rtg=True,
    )  # fmt: skip
    model = SequencePolicy(cfg, sp.obs_dim, sp.act_dim, True, sp.num_agents).eval()
    norm = Normalizer.identity(sp.obs_dim)
    out = {}
    for cache in (True, False):
        env = bench.make_batched_env(np.zeros(4, dtype=np.int64))
        targets = np.full(env.num_envs, 2.0)
        returns, lengths = rollout(model, norm, env, 25, 0, None, targets, cache=cache)
        out[cache] = (returns, lengths, env.won.copy())
    for a, b in zip(out[True], out[False], strict=True):
        np.testing.assert_allclose(a, b)


def test_quality_counts_team_episodes_not_agent_trajectories() -> None:
    """The data-quality table's sizes are the team's: 12 team episodes of 3..14 steps, not
    A agent trajectories each."""
    bench, data = _bench_and_data()
    q = bench.quality(data)
    assert q["all"]["episodes"] == 12
    assert q["all"]["transitions"] == sum(range(3, 15))
    assert q["good"]["episodes"] == 4  # tiers cycle poor, medium, good

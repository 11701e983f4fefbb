"""Published numbers the results are measured against, checked against literals copied here
from the original sources, not against the implementation's own constants: a typo in
``cmt/`` fails here instead of silently moving every score and every "at or above" claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmt.benchmarks import make_benchmark
from cmt.config import load_params, preset_names

ROOT = Path(__file__).resolve().parents[1]

# D4RL's d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE (the same for the -v0 .. -v2 datasets of
# an environment): the returns of a random policy and of D4RL's expert policy.
D4RL_REFERENCES = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

# Chen et al. 2021, "Decision Transformer", Table 2 (D4RL normalised scores, DT column).
DT_PAPER = {
    ("halfcheetah", "medium_expert"): 86.8,
    ("hopper", "medium_expert"): 107.6,
    ("walker2d", "medium_expert"): 108.1,
    ("halfcheetah", "medium"): 42.6,
    ("hopper", "medium"): 67.6,
    ("walker2d", "medium"): 74.0,
    ("halfcheetah", "medium_replay"): 36.6,
    ("hopper", "medium_replay"): 82.7,
    ("walker2d", "medium_replay"): 66.6,
}

# The Decision Transformer's gym/experiment.py: the first of each environment's two
# return-to-go targets (env_targets).
DT_PAPER_RTG = {"halfcheetah": 6000.0, "hopper": 3600.0, "walker2d": 5000.0}

# Xu et al. 2022, "Prompting Decision Transformer for Few-Shot Policy Generalization":
# Prompt-DT's return on the test tasks, expert data, K* = 5.
PROMPT_DT = {"cheetah_dir": 927.2, "cheetah_vel": -37.9, "ant_dir": 367.1}

# Targets the committed behaviour data is held to (docs/behaviour.md's table), not published
# results, but the same kind of number: a typo would pass or fail data silently.
D4RL_EXPERT_TARGET = 90.0
SMAX_GOOD_TIER = {"3m": 90.0, "2s3z": 90.0, "5m_vs_6m": 50.0}


def _presets(benchmark: str) -> list[str]:
    return [
        p
        for p in preset_names()
        if load_params(ROOT / "params.yaml", preset=p).data.benchmark == benchmark
    ]


def test_d4rl_reference_returns_are_d4rls() -> None:
    from cmt.data.d4rl import REF_RETURNS, normalized_score

    assert dict(REF_RETURNS) == D4RL_REFERENCES
    for env, (random, expert) in D4RL_REFERENCES.items():
        assert normalized_score(env, random) == pytest.approx(0.0, abs=1e-12)
        assert normalized_score(env, expert) == pytest.approx(100.0)
        midway = random + 0.3 * (expert - random)
        assert normalized_score(f"{env}-medium-v2", midway) == pytest.approx(30.0)


@pytest.mark.parametrize("preset", _presets("d4rl"))
def test_every_d4rl_preset_scores_and_compares_with_the_papers_numbers(preset: str) -> None:
    cfg = load_params(ROOT / "params.yaml", preset=preset).data
    bench = make_benchmark(cfg)
    assert cfg.source is None, "a source's own references would replace D4RL's"
    random, expert, _ = bench.reference_returns()
    assert (random, expert) == D4RL_REFERENCES[cfg.env]
    want = DT_PAPER.get((cfg.env, cfg.level))
    published = bench.published()
    if want is None:  # the DT paper has no random or expert rows
        assert published is None
    else:
        assert published == {"label": "DT (paper, D4RL v2)", "value": want, "metric": "score_mean"}
    assert bench.target_return(None, 0, "dt_paper") == DT_PAPER_RTG[cfg.env]  # type: ignore[arg-type]
    label, ok = bench.quality_target("expert", {"score_mean": D4RL_EXPERT_TARGET})
    assert label == f">= {D4RL_EXPERT_TARGET:g} D4RL-normalised" and ok
    assert not bench.quality_target("expert", {"score_mean": D4RL_EXPERT_TARGET - 0.1})[1]


def test_every_d4rl_row_of_the_dt_paper_has_a_preset() -> None:
    from cmt.benchmarks.d4rl import DT_PAPER_SCORES

    assert DT_PAPER_SCORES == DT_PAPER
    cfgs = [load_params(ROOT / "params.yaml", preset=p).data for p in _presets("d4rl")]
    assert set(DT_PAPER) <= {(c.env, c.level) for c in cfgs}


@pytest.mark.parametrize("family", sorted(PROMPT_DT))
def test_meta_rl_families_compare_with_prompt_dts_numbers(family: str) -> None:
    bench = make_benchmark(load_params(ROOT / "params.yaml", preset=family).data)
    want = PROMPT_DT[family]
    assert bench.published() == {
        "label": "Prompt-DT (published)",
        "value": want,
        "metric": "return_mean",
    }
    assert bench.quality_reference() == f"Prompt-DT agents: {want:g}"
    assert bench.quality_target("expert", {"return_mean": want})[1]
    assert not bench.quality_target("expert", {"return_mean": want - 0.1})[1]


def test_every_mujoco_meta_family_has_prompt_dts_number() -> None:
    from cmt.benchmarks.mujoco_meta import PROMPT_DT_PUBLISHED, MujocoMetaData

    assert PROMPT_DT_PUBLISHED == PROMPT_DT
    families = MujocoMetaData.model_fields["benchmark"].annotation.__args__  # type: ignore[union-attr]
    assert set(families) == set(PROMPT_DT) and set(PROMPT_DT) <= set(preset_names())


@pytest.mark.parametrize("preset", _presets("smax"))
def test_smax_good_tier_targets(preset: str) -> None:
    cfg = load_params(ROOT / "params.yaml", preset=preset).data
    bench = make_benchmark(cfg)
    want = SMAX_GOOD_TIER[cfg.map]
    assert bench.quality_target("good", {"score_mean": want}) == (f">= {want:g} % wins", True)
    assert not bench.quality_target("good", {"score_mean": want - 0.1})[1]

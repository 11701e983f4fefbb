"""D4RL scoring constants: reference returns, the normalised score, and what a random
policy's episodes score (to tell a file's level from its returns).

The reference returns are D4RL's own ``REF_MIN_SCORE`` / ``REF_MAX_SCORE`` for the Gym-MuJoCo
tasks (random policy and expert policy returns), so scores are comparable with published tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = [
    "GYM_IDS",
    "RANDOM_BANDS",
    "REF_RETURNS",
    "RandomBand",
    "d4rl_env_name",
    "level_mismatch",
    "normalized_score",
]

# Read-only so nobody can silently change the reference a published score is measured against.
REF_RETURNS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "halfcheetah": (-280.178953, 12135.0),
        "hopper": (-20.272305, 3234.3),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }
)
"""Environment -> (random return, expert return)."""

GYM_IDS: Mapping[str, str] = MappingProxyType(
    {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
)
"""D4RL environment -> the Gymnasium v5 environment this project generates and evaluates on."""


def d4rl_env_name(dataset_name: str) -> str:
    """Environment of a D4RL dataset name: ``"hopper-medium-replay-v2"`` -> ``"hopper"``.

    Parses the prefix before the first '-' (exact match, not substring matching, so e.g.
    "ant" never matches "antmaze-..."). Raises KeyError listing the known names.
    """
    env = dataset_name.split("-", 1)[0]
    if env not in REF_RETURNS:
        raise KeyError(
            f"unknown D4RL environment {env!r} (from {dataset_name!r}); "
            f"known: {', '.join(sorted(REF_RETURNS))}"
        )
    return env


def normalized_score(env: str, returns: np.ndarray | float) -> np.ndarray | float:
    """D4RL normalised score ``100 * (R - random) / (expert - random)``.

    ``env`` may be an environment ("hopper") or a dataset name ("hopper-medium-v2").
    Returns a float for a scalar input and an array for an array input.
    """
    low, high = REF_RETURNS[d4rl_env_name(env)]
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)
    if np.ndim(score) == 0:
        return float(score)
    return score


@dataclass(frozen=True)
class RandomBand:
    """D4RL normalised scores that random-policy data stays within on one environment, with
    a margin: measured by ``perf/outlier_check.py`` (uniform actions and randomly
    initialised tanh-Gaussian MLP policies on the v5 environment, D4RL's *random* level)."""

    mean_max: float
    """A *random* file whose mean episode score is higher is refused."""
    best_max: float
    """A file of any other level whose best episode scores no higher is refused."""


# Measured (perf/results/outlier_check.json, 200k steps per env and policy kind): the
# highest mean score of one random policy was 1.8 (hopper), 1.0 (halfcheetah), 0.2 (walker2d);
# the best single episode of about 18k / 400 / 21k episodes scored 8.8, 1.8 and 1.8.
# mean_max leaves 3+ points above every policy's mean; best_max is the best episode + ~10%,
# kept low because this project's own walker2d medium-replay data peaks at a score of 7.9.
RANDOM_BANDS: Mapping[str, RandomBand] = MappingProxyType(
    {
        "halfcheetah": RandomBand(mean_max=5.0, best_max=2.0),
        "hopper": RandomBand(mean_max=5.0, best_max=10.0),
        "walker2d": RandomBand(mean_max=5.0, best_max=2.0),
    }
)
"""Environment -> its random-policy band (environments without one are not checked)."""


def level_mismatch(env: str, level: str, returns: np.ndarray) -> str | None:
    """Why episode ``returns`` of ``env`` cannot be data of ``level``; None when they can.

    Only random against not random can be told from returns: a *random* file is judged on its
    mean score (one lucky episode proves nothing), any other level on its best episodes (a
    medium-replay buffer holds mostly near-random episodes). Medium and expert overlap too
    much on these to be told apart.
    """
    band = RANDOM_BANDS.get(env)
    returns = np.asarray(returns, dtype=np.float64)
    if band is None or returns.size == 0:
        return None
    scores = np.asarray(normalized_score(env, returns))
    summary = (
        f"{scores.size} episodes, D4RL normalised score mean {scores.mean():.2f}, "
        f"best {scores.max():.2f}"
    )
    if level == "random" and scores.mean() > band.mean_max:
        return (
            f"level 'random' named, but the returns are not a random policy's ({summary}; "
            f"random-policy data on {env} has a mean score of at most {band.mean_max:g})"
        )
    if level != "random" and scores.max() <= band.best_max:
        return (
            f"level {level!r} named, but the returns look like a random policy's ({summary}; "
            f"random-policy episodes on {env} score up to {band.best_max:g}, and this file "
            "has none above that)"
        )
    return None

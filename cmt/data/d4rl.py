"""D4RL scoring constants: reference returns and the normalised score.

The numbers are D4RL's own ``REF_MIN_SCORE`` / ``REF_MAX_SCORE`` for the Gym-MuJoCo tasks
(random policy and expert policy returns), so scores are comparable with published tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

__all__ = ["GYM_IDS", "REF_RETURNS", "d4rl_env_name", "normalized_score"]

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

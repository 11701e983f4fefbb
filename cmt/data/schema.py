"""The in-memory record of an offline dataset, in D4RL's flat transition layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
"""Bumped whenever the on-disk layout changes; checked on load."""


@dataclass(frozen=True)
class TransitionData:
    """Flat transitions of one or more tasks, episodes stored back to back.

    Terminations (``terminals``) and truncations (``timeouts``) are kept apart: an
    episode ends at the first index where either is true.
    """

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    next_observations: np.ndarray  # (N, obs_dim) float32
    task_ids: np.ndarray  # (N,) int64
    infos: dict[str, np.ndarray] = field(default_factory=dict)  # each (N, ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able scalars and strings

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

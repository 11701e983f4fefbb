"""The in-memory record of an offline dataset, in D4RL's flat transition layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
"""Bumped whenever the on-disk layout changes; checked on load."""

AGENT_ID = "agent_id"
"""``infos`` key of the agent id of every transition of a folded team dataset."""


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
    avail_actions: np.ndarray | None = None  # (N, n) bool, discrete actions only

    def take(self, idx: np.ndarray) -> TransitionData:
        """The transitions ``idx`` (1-D), every per-transition array indexed alike."""
        return TransitionData(
            observations=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            terminals=self.terminals[idx],
            timeouts=self.timeouts[idx],
            next_observations=self.next_observations[idx],
            task_ids=self.task_ids[idx],
            infos={k: v[idx] for k, v in self.infos.items()},
            metadata=dict(self.metadata),
            avail_actions=None if self.avail_actions is None else self.avail_actions[idx],
        )

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

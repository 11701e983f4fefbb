"""The in-memory record of an offline dataset, in D4RL's flat transition layout.

Single-agent data has observations (N, obs_dim) and float actions (N, act_dim). Multi-agent
data (SMAX) adds an agent axis: observations (N, num_agents, obs_dim), integer actions
(N, num_agents) and the available-action masks ``avail_actions`` (N, num_agents, num_actions);
rewards, flags and task ids stay per team step (N,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
"""Bumped whenever the on-disk layout changes; checked on load. 2 added the agent axis and
``avail_actions`` (multi-agent files); 1 (single-agent only) files still read."""

READABLE_SCHEMA_VERSIONS = (1, 2)
"""Versions the reader accepts: a version-1 file is a single-agent version-2 file."""

AGENT_ID = "agent_id"
"""``infos`` key of the agent id of every transition of a folded team dataset."""

LEVEL = "level"
"""``infos`` key of the behaviour level (or SMAX tier) index of every generated transition;
real dataset files have none."""


@dataclass(frozen=True)
class TransitionData:
    """Flat transitions of one or more tasks, episodes stored back to back.

    Terminations (``terminals``) and truncations (``timeouts``) are kept apart: an
    episode ends at the first index where either is true.
    """

    observations: np.ndarray  # (N, obs_dim) or (N, A, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32, or (N, A) int64
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    next_observations: np.ndarray  # like observations
    task_ids: np.ndarray  # (N,) int64
    infos: dict[str, np.ndarray] = field(default_factory=dict)  # each (N, ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able scalars and strings
    avail_actions: np.ndarray | None = None  # (N, A, n) team data, (N, n) folded; bool

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
    def multi_agent(self) -> bool:
        """Team layout with an agent axis (a folded team dataset, :mod:`cmt.data.agents`, is
        single-agent in layout: one-hot actions and (N, n) masks)."""
        return self.observations.ndim == 3

    @property
    def num_agents(self) -> int:
        return int(self.observations.shape[1]) if self.multi_agent else 1

    @property
    def num_actions(self) -> int:
        """Discrete actions per agent (multi-agent data only)."""
        if self.avail_actions is None:
            raise AttributeError("single-agent data has continuous actions, no num_actions")
        return int(self.avail_actions.shape[-1])

    @property
    def obs_dim(self) -> int:
        """Observation width (per agent in multi-agent data)."""
        return int(self.observations.shape[-1])

    @property
    def act_dim(self) -> int:
        """Action width: the continuous action size, or (multi-agent) ``num_actions``, the
        width of a one-hot action."""
        return self.num_actions if self.multi_agent else int(self.actions.shape[1])

"""A team environment seen as single-agent rows, the way the shared policy sees it.

Evaluation folds the agent axis into the batch exactly as training does
(:mod:`cmt.data.agents`): ``B`` team episodes of ``A`` agents become ``B * A`` rows, row
``b * A + a`` being agent ``a`` of episode ``b``. Actions come back one-hot and are turned into
integer actions per agent; the team reward and episode end are repeated per agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from cmt.envs.registry import MultiAgentBatchedEnv


@runtime_checkable
class TeamRows(Protocol):
    """What a rollout needs beyond :class:`~cmt.envs.registry.BatchedEnv` for teams."""

    num_agents: int
    agent_ids: np.ndarray  # (B * A,) agent id of every row
    won: np.ndarray  # (B,) whether each episode was won (valid once it ended)

    def action_mask(self) -> np.ndarray:
        """(B * A, n) bool: the actions available to every row now."""
        ...


class FoldedTeamEnv:
    """A :class:`MultiAgentBatchedEnv` as a ``BatchedEnv`` of ``B * A`` rows (module docstring)."""

    def __init__(self, env: MultiAgentBatchedEnv) -> None:
        self.env = env
        self.num_agents = env.num_agents
        self.num_envs = env.num_envs * env.num_agents
        self.agent_ids = np.tile(np.arange(env.num_agents), env.num_envs)
        self.won = np.zeros(env.num_envs, dtype=bool)
        self._ended = np.zeros(env.num_envs, dtype=bool)
        self._avail: np.ndarray | None = None

    def reset(self, seed: int) -> np.ndarray:
        obs, avail = self.env.reset(seed)  # (B, A, obs), (B, A, n)
        self.won[:] = False
        self._ended[:] = False
        self._avail = np.array(avail, dtype=bool).reshape(self.num_envs, -1)
        return self._rows(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        B, A = self.env.num_envs, self.num_agents
        chosen = np.asarray(actions).reshape(B, A, -1).argmax(-1)  # (B, A) one-hot -> index
        obs, avail, reward, terminated, truncated, won = self.env.step(chosen)
        self.won |= won & ~self._ended  # an episode's outcome is fixed when it ends
        self._ended |= terminated | truncated
        self._avail = np.array(avail, dtype=bool).reshape(self.num_envs, -1)
        rows = lambda x: np.repeat(x, A)  # noqa: E731  (B,) -> (B * A,)
        return self._rows(obs), rows(reward), rows(terminated), rows(truncated)

    def _rows(self, obs: np.ndarray) -> np.ndarray:
        """(B, A, obs) -> (B * A, obs), a writable copy (jax hands out read-only arrays)."""
        return np.array(obs, dtype=np.float32).reshape(self.num_envs, -1)

    def action_mask(self) -> np.ndarray:
        if self._avail is None:
            raise RuntimeError("reset the environment before asking for its action mask")
        return self._avail

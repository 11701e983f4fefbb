"""Folding a team's agent axis into the batch, exactly and reversibly.

A team dataset stores one row per environment step with an agent axis: observations
(N, A, obs), integer actions (N, A), available actions (N, A, n), one team reward (N,). Agents
share one policy (MADT; docs/method.md), so for training each agent's trajectory becomes an
episode of its own: the *folded* dataset holds, for every episode, agent 0's steps, then agent
1's, ..., with actions one-hot, the team reward and episode ends repeated per agent, and the
agent id in ``infos["agent_id"]``. :func:`unfold_agents` inverts it exactly.
"""

from __future__ import annotations

import numpy as np

from cmt.data.hdf5 import episode_bounds
from cmt.data.schema import AGENT_ID, TransitionData


def fold_agents(team: TransitionData) -> TransitionData:
    """Team layout (N, A, ...) -> one episode per (episode, agent), agent-major per episode."""
    if team.observations.ndim != 3 or team.avail_actions is None:
        raise ValueError(
            "fold_agents needs a team dataset: observations (N, A, obs), avail_actions"
        )
    N, A, _ = team.observations.shape
    n = team.avail_actions.shape[-1]
    starts, lengths = episode_bounds(team.terminals, team.timeouts)
    episode = np.repeat(np.arange(len(starts)), lengths)  # (N,)
    step = np.tile(np.arange(N), A)  # (N * A,) row of every (agent, step) pair
    agent = np.repeat(np.arange(A), N)  # (N * A,)
    order = np.lexsort((step, agent, episode[step]))  # by episode, then agent, then step
    t, a = step[order], agent[order]  # (N * A,) each
    infos = {k: v[t] for k, v in team.infos.items()}
    infos[AGENT_ID] = a.astype(np.int64)
    return TransitionData(
        observations=team.observations[t, a],
        actions=np.eye(n, dtype=np.float32)[team.actions[t, a]],  # (N * A, n) one-hot
        rewards=team.rewards[t],
        terminals=team.terminals[t],
        timeouts=team.timeouts[t],
        next_observations=team.next_observations[t, a],
        task_ids=team.task_ids[t],
        infos=infos,
        metadata={**team.metadata, "num_agents": A},
        avail_actions=team.avail_actions[t, a],
    )


def unfold_agents(folded: TransitionData) -> TransitionData:
    """Inverse of :func:`fold_agents`: back to one row per step with an agent axis."""
    A = int(folded.metadata["num_agents"])
    agent = folded.infos[AGENT_ID]
    starts, lengths = episode_bounds(folded.terminals, folded.timeouts)
    if len(starts) % A or np.any(agent[starts] != np.arange(len(starts)) % A):
        raise ValueError(f"not a folded dataset of {A} agents: episodes are not agent-major")
    team_len = lengths[::A]  # (E,) each team episode's length (every agent's is the same)
    team_start = np.concatenate([[0], np.cumsum(team_len)[:-1]])
    rows = np.repeat(team_start[np.arange(len(starts)) // A], lengths)  # (N * A,)
    t = rows + (np.arange(len(folded)) - np.repeat(starts, lengths))  # team row of each fold row
    N = int(team_len.sum())
    first = agent == 0  # per-step quantities are repeated per agent: read agent 0's copy

    def gather(x: np.ndarray) -> np.ndarray:
        out = np.empty((N, A, *x.shape[1:]), dtype=x.dtype)
        out[t, agent] = x
        return out

    order = np.argsort(t[first], kind="stable")
    step_rows = np.flatnonzero(first)[order]  # (N,) agent 0's fold row of each team row
    metadata = {k: v for k, v in folded.metadata.items() if k != "num_agents"}
    return TransitionData(
        observations=gather(folded.observations),
        actions=gather(folded.actions.argmax(-1).astype(np.int64)),
        rewards=folded.rewards[step_rows],
        terminals=folded.terminals[step_rows],
        timeouts=folded.timeouts[step_rows],
        next_observations=gather(folded.next_observations),
        task_ids=folded.task_ids[step_rows],
        infos={k: v[step_rows] for k, v in folded.infos.items() if k != AGENT_ID},
        metadata=metadata,
        avail_actions=None if folded.avail_actions is None else gather(folded.avail_actions),
    )

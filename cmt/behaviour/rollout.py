"""What every benchmark's dataset generation shares.

The core is :func:`rollout`: a batched behaviour policy runs one episode per task id in a
:class:`~cmt.envs.registry.BatchedEnv`, and the episodes are laid out back to back in D4RL's
flat layout. Each benchmark (``cmt/benchmarks/``) supplies its own behaviour policies
(scripted for the point robot, SAC for the MuJoCo benchmarks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from cmt.data.schema import LEVEL, TransitionData
from cmt.envs.registry import TaskFamily

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Batched behaviour policy: (obs (B, obs_dim), task_ids (B,)) -> actions (B, act_dim)."""

LEVELS: tuple[str, ...] = ("random", "medium", "expert", "medium_replay")
"""Behaviour levels of the generated data; a transition's ``infos/level`` indexes this tuple
(the point robot has the first three, the SAC benchmarks add the replay data)."""


def rollout(
    family: TaskFamily,
    task_ids: np.ndarray,
    policy: Policy,
    seed: int,
    make_env: Callable[[np.ndarray], Any] | None = None,
) -> tuple[TransitionData, np.ndarray]:
    """Run one episode per entry of ``task_ids`` together; return (data, episode returns (B,)).

    Episodes appear in the order of ``task_ids``; each ends at its first terminated or
    truncated step. ``make_env`` (default: ``family.make_batched_env``) builds the env.
    """
    task_ids = np.asarray(task_ids, dtype=np.int64)
    env = (make_env or family.make_batched_env)(task_ids)
    b, t_max = env.num_envs, family.horizon
    obs = env.reset(seed=seed)

    observations = np.zeros((b, t_max, family.obs_dim), dtype=np.float32)
    next_observations = np.zeros_like(observations)
    actions = np.zeros((b, t_max, family.act_dim), dtype=np.float32)
    rewards = np.zeros((b, t_max), dtype=np.float32)
    terminals = np.zeros((b, t_max), dtype=bool)
    timeouts = np.zeros((b, t_max), dtype=bool)
    lengths = np.zeros(b, dtype=np.int64)
    alive = np.ones(b, dtype=bool)

    for t in range(t_max):
        act = np.asarray(policy(obs, task_ids), dtype=np.float32)
        next_obs, rew, term, trunc = env.step(act)
        observations[:, t] = obs
        actions[:, t] = act
        rewards[:, t] = rew
        next_observations[:, t] = next_obs
        terminals[:, t] = term
        timeouts[:, t] = trunc
        lengths += alive
        alive &= ~(np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool))
        if not alive.any():
            break
        obs = next_obs
    if alive.any():
        # The family's env must end every episode by its horizon; otherwise the flat layout
        # would hold episodes without an end flag.
        raise RuntimeError(
            f"{int(alive.sum())} episodes of family {family.name!r} did not end within "
            f"horizon={t_max} steps"
        )

    keep = np.arange(t_max)[None, :] < lengths[:, None]  # (B, T): C-order => episode-major
    data = TransitionData(
        observations=observations[keep],
        actions=actions[keep],
        rewards=rewards[keep],
        terminals=terminals[keep],
        timeouts=timeouts[keep],
        next_observations=next_observations[keep],
        task_ids=np.repeat(task_ids, lengths),
    )
    returns = np.where(keep, rewards, 0.0).sum(axis=1, dtype=np.float64)
    return data, returns


def concat_transitions(
    parts: list[TransitionData], metadata: dict[str, Any] | None = None
) -> TransitionData:
    """Concatenate datasets (episodes stay back to back); infos must share the same keys, and
    all parts must be single-agent or all multi-agent."""
    keys = set(parts[0].infos)
    if any(set(p.infos) != keys for p in parts):
        raise ValueError(f"cannot concatenate datasets with different infos keys: {sorted(keys)}")
    multi = {p.multi_agent for p in parts}
    if len(multi) > 1:
        raise ValueError("cannot concatenate single-agent and multi-agent datasets")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return TransitionData(
        observations=cat("observations"),
        actions=cat("actions"),
        rewards=cat("rewards"),
        terminals=cat("terminals"),
        timeouts=cat("timeouts"),
        next_observations=cat("next_observations"),
        task_ids=cat("task_ids"),
        infos={k: np.concatenate([p.infos[k] for p in parts]) for k in sorted(keys)},
        metadata=dict(metadata or {}),
        avail_actions=cat("avail_actions") if multi == {True} else None,
    )


def with_level(data: TransitionData, level: str) -> TransitionData:
    """``data`` with ``infos/level`` set to ``level`` (an index into :data:`LEVELS`)."""
    infos = dict(data.infos)
    infos[LEVEL] = np.full(len(data), LEVELS.index(level), dtype=np.int8)
    return dataclasses.replace(data, infos=infos)


def random_streams(seed: int, names: tuple[str, ...]) -> dict[str, np.random.Generator]:
    """One independent generator per name, spawned from ``seed`` in the order of ``names``
    (so new streams must be appended to keep existing datasets bit-identical)."""
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children, strict=True)}


def seed_from(rng: np.random.Generator) -> int:
    """An environment seed drawn from ``rng``."""
    return int(rng.integers(2**31 - 1))

"""Episodes over flat D4RL transitions, normalisation statistics, and task/episode selection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmt.data.hdf5 import episode_bounds
from cmt.data.schema import AGENT_ID, LEVEL, TransitionData
from cmt.integrity import NonFiniteError


@dataclass(frozen=True)
class Normalizer:
    """Statistics fixed at pretraining time and stored in every checkpoint."""

    state_mean: np.ndarray  # (obs_dim,)
    state_std: np.ndarray  # (obs_dim,)
    reward_scale: float  # rewards are divided by this for the reward head and the encoder
    return_scale: float  # returns-to-go are divided by this

    def __post_init__(self) -> None:
        # Refused here, so no checkpoint can carry them: an inf std (data with a corrupted
        # value far beyond float32's square root) silently zeroes that state dimension.
        for name in ("state_mean", "state_std", "reward_scale", "return_scale"):
            values = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.argmax(bad))
                raise NonFiniteError(
                    f"normaliser {name} is not finite ({int(bad.sum())} values, first at index "
                    f"{i}: {values[i]}): the data's statistics overflow or hold NaN"
                )
            if name != "state_mean" and (values <= 0).any():
                i = int(np.argmax(values <= 0))
                raise ValueError(f"normaliser {name} must be > 0, got {values[i]} at index {i}")

    @classmethod
    def fit(cls, data: TransitionData, returns: np.ndarray) -> Normalizer:
        with np.errstate(over="ignore"):  # an overflow is refused by name in __post_init__
            std = data.observations.std(0)
        return cls(
            state_mean=data.observations.mean(0).astype(np.float32),
            # Constant dimensions (std 0) would blow up; 1e-6 keeps them at zero instead.
            state_std=np.maximum(std, 1e-6).astype(np.float32),
            reward_scale=float(max(np.abs(data.rewards).std(), 1e-6)),
            return_scale=float(max(np.abs(returns).max(), 1e-6)),
        )

    @classmethod
    def identity(cls, obs_dim: int) -> Normalizer:
        """Statistics that change nothing (speed and shape tests of untrained models)."""
        return cls(
            state_mean=np.zeros(obs_dim, np.float32),
            state_std=np.ones(obs_dim, np.float32),
            reward_scale=1.0,
            return_scale=1.0,
        )

    def states(self, x: np.ndarray) -> np.ndarray:
        return (x - self.state_mean) / self.state_std

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "state_mean": torch.from_numpy(self.state_mean),
            "state_std": torch.from_numpy(self.state_std),
            "reward_scale": torch.tensor(self.reward_scale),
            "return_scale": torch.tensor(self.return_scale),
        }

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> Normalizer:
        return cls(
            state_mean=d["state_mean"].numpy(),
            state_std=d["state_std"].numpy(),
            reward_scale=float(d["reward_scale"]),
            return_scale=float(d["return_scale"]),
        )


class OfflineDataset:
    """Transitions plus a per-episode index and the per-transition quantities a sampler needs.

    Owns a seeded ``np.random.Generator`` so that sampling never touches global RNG state.
    """

    def __init__(self, data: TransitionData, seed: int = 0) -> None:
        self.data = data
        self.rng = np.random.default_rng(seed)
        starts, lengths = episode_bounds(data.terminals, data.timeouts)
        self.ep_start = starts  # (E,)
        self.ep_len = lengths  # (E,)
        self.ep_task = data.task_ids[starts]  # (E,)
        # (N,) episode index of every transition, and its step inside the episode.
        self.episode_of = np.repeat(np.arange(len(starts)), lengths)
        self.timesteps = np.arange(len(data)) - np.repeat(starts, lengths)
        # Undiscounted return-to-go: reverse cumulative sum inside each episode.
        csum = np.concatenate([[0.0], np.cumsum(data.rewards, dtype=np.float64)])
        ep_end = starts + lengths
        self.ep_return = (csum[ep_end] - csum[starts]).astype(np.float32)
        self.rtg = (csum[np.repeat(ep_end, lengths)] - csum[:-1]).astype(np.float32)
        self.tasks = np.unique(self.ep_task)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def num_agents(self) -> int:
        """Agents of the team whose trajectories were folded into this dataset (1: none)."""
        return int(self.data.metadata.get("num_agents", 1))

    @property
    def agent_of(self) -> np.ndarray | None:
        """(N,) agent id of every transition of a team's folded dataset
        (:mod:`cmt.data.agents`); None for single-agent data."""
        return self.data.infos.get(AGENT_ID)

    @property
    def num_episodes(self) -> int:
        return len(self.ep_start)

    def select_episodes(self, episodes: np.ndarray, seed: int = 0) -> OfflineDataset:
        """A new dataset holding only the given episodes (in the given order)."""
        idx = np.concatenate(
            [np.arange(self.ep_start[e], self.ep_start[e] + self.ep_len[e]) for e in episodes]
        )
        sub = self.data.take(idx)
        return OfflineDataset(sub, seed=seed)

    @property
    def ep_group(self) -> np.ndarray:
        """(E,) what an episode's context stands for: its task, and its behaviour level (or
        SMAX tier) where the data records one (docs/method.md, "context")."""
        levels = self.data.infos.get(LEVEL)
        if levels is None:
            return self.ep_task.astype(np.int64)
        n_levels = int(levels.max()) + 1
        return self.ep_task.astype(np.int64) * n_levels + levels[self.ep_start].astype(np.int64)

    def top_episodes_per_task(self, fraction: float, at_least: int = 2) -> np.ndarray:
        """(E,) bool: each task's ``fraction`` highest-return episodes (at least
        ``at_least``, or all it has)."""
        top = np.zeros(self.num_episodes, dtype=bool)
        for task in self.tasks:
            eps = np.flatnonzero(self.ep_task == task)
            n = max(at_least, int(np.ceil(fraction * len(eps))))
            top[eps[np.argsort(-self.ep_return[eps], kind="stable")[:n]]] = True
        return top

    def top_episodes(self, fraction: float, at_least: int = 1) -> np.ndarray:
        """Indices of the ``fraction`` highest-return episodes (at least ``at_least``), in
        dataset order; ties keep dataset order."""
        n = max(at_least, int(np.ceil(fraction * self.num_episodes)))
        return np.sort(np.argsort(-self.ep_return, kind="stable")[:n])

    def select_tasks(self, task_ids: list[int] | np.ndarray, seed: int = 0) -> OfflineDataset:
        """A new dataset holding only the episodes of ``task_ids``."""
        keep = np.flatnonzero(np.isin(self.ep_task, np.asarray(task_ids)))
        if len(keep) == 0:
            raise ValueError(f"no episodes for tasks {list(task_ids)}")
        return self.select_episodes(keep, seed=seed)

    def split_episodes(
        self, val_fraction: float, seed: int
    ) -> tuple[OfflineDataset, OfflineDataset]:
        """Split episodes into (train, validation), each with at least one episode."""
        if self.num_episodes < 2:
            raise ValueError("need at least 2 episodes to hold some out for validation")
        perm = np.random.default_rng(seed).permutation(self.num_episodes)
        n_val = held_out_count(self.num_episodes, val_fraction)
        return (
            self.select_episodes(np.sort(perm[n_val:]), seed=seed),
            self.select_episodes(np.sort(perm[:n_val]), seed=seed + 1),
        )


MIN_VAL_EPISODES = 2
"""Validation episodes of a prompt's early stopping, where there are enough: one
demonstration alone made the stopping point a coin flip (docs/method.md)."""


def held_out_count(n: int, val_fraction: float) -> int:
    """Episodes (or team episodes) to hold out of ``n`` for validation: ``val_fraction`` of
    them, at least :data:`MIN_VAL_EPISODES`, and at least one left to fit on."""
    return min(max(MIN_VAL_EPISODES, round(val_fraction * n)), n - 1)


@dataclass(frozen=True)
class PromptData:
    """The data of one task's prompt: the zero-shot prompt and tuning use ``fit``, early
    stopping uses ``val`` (never seen by any prompt), and the ``return_weighted`` objective
    samples ``pool`` (``fit`` when None)."""

    fit: OfflineDataset
    val: OfflineDataset
    pool: OfflineDataset | None = None

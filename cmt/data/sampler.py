"""Vectorised batch builder: K-step segments, their context, and everything the losses need.

All random numbers for a batch are drawn first (:meth:`SegmentSampler.draw`) and the batch is
then built from them with array operations only (:meth:`SegmentSampler.build`), so a slow
per-sample reference can be checked against it on the very same draws.

Segments are *right*-padded: a segment that hits the end of its episode keeps its real steps
first. Together with the prompt placed in front, a plain causal mask then gives exactly the
visibility we want (docs/method.md) and real tokens never see padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cmt.data.dataset import Normalizer, OfflineDataset

ContextKind = Literal["none", "set", "segment"]
ContextSource = Literal["same_trajectory", "same_task"]


@dataclass
class Batch:
    """One training batch; shapes use B=batch, K=context_len, C=context_size, S=segment_len."""

    states: torch.Tensor  # (B, K, obs) normalised
    actions: torch.Tensor  # (B, K, act)
    rewards: torch.Tensor  # (B, K) scaled
    rtg: torch.Tensor  # (B, K) scaled return-to-go
    timesteps: torch.Tensor  # (B, K) int64
    mask: torch.Tensor  # (B, K) bool, True on real steps
    next_states: torch.Tensor  # (B, K, obs) normalised
    ep_return: torch.Tensor  # (B,) unscaled return of the segment's episode
    unit: torch.Tensor  # (B,) int64: the episode's group (task, and level where recorded)
    context: torch.Tensor | None = None  # (B, C, F) transitions for the encoder
    context2: torch.Tensor | None = None  # (B, C, F) a second draw (InfoNCE positive)
    segment: dict[str, torch.Tensor] | None = None  # raw Prompt-DT segment, (B, S, ...) each
    avail: torch.Tensor | None = None  # (B, K, n) bool: available discrete actions
    agents: torch.Tensor | None = None  # (B,) int64: agent id of each sequence (teams)

    def to(self, device: torch.device | str) -> Batch:
        def mv(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: v.to(device, non_blocking=True) for k, v in x.items()}
            return x.to(device, non_blocking=True)

        return Batch(**{k: mv(v) for k, v in self.__dict__.items()})


def transition_features(ds: OfflineDataset, norm: Normalizer, idx: np.ndarray) -> np.ndarray:
    """Encoder input for transitions ``idx`` (any shape): [s, a, r, s'] -> (*idx.shape, F)."""
    d = ds.data
    return np.concatenate(
        [
            norm.states(d.observations[idx]),
            d.actions[idx],
            (d.rewards[idx] / norm.reward_scale)[..., None],
            norm.states(d.next_observations[idx]),
        ],
        axis=-1,
    ).astype(np.float32)


def feature_dim(obs_dim: int, act_dim: int) -> int:
    return 2 * obs_dim + act_dim + 1


def segment_tensors(
    ds: OfflineDataset, norm: Normalizer, idx: np.ndarray
) -> dict[str, torch.Tensor]:
    """Raw trajectory tokens (Prompt-DT prompt) for transition indices ``idx`` (B, S)."""
    d = ds.data
    return {
        "states": torch.from_numpy(norm.states(rows(d.observations, idx)).astype(np.float32)),
        "actions": torch.from_numpy(rows(d.actions, idx)),
        "rtg": torch.from_numpy(rows(ds.rtg, idx) / norm.return_scale),
        "timesteps": torch.from_numpy(rows(ds.timesteps, idx)),
    }


def rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]`` for an integer array ``idx`` over the first axis: ``np.take`` gathers the same
    rows 2-3x faster than fancy indexing (measured on the batch builder's gathers)."""
    return np.take(a, idx, axis=0)


def _floor_index(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Map uniform [0, 1) draws to integers in [0, n) (n >= 1, broadcast)."""
    return np.minimum((u.astype(np.float64) * n).astype(np.int64), n - 1)


class EpisodeGroups:
    """Eligible episodes grouped by a key (task, or task and level), so that "another eligible
    episode of the same group" is index arithmetic rather than a Python loop per sample."""

    def __init__(self, key: np.ndarray, eligible: np.ndarray) -> None:
        eps = np.flatnonzero(eligible)
        self.order = eps[np.argsort(key[eps], kind="stable")]  # eligible episodes by key
        self.key = key
        n_keys = int(key.max()) + 1 if len(key) else 1
        self.count = np.bincount(key[eps], minlength=n_keys)  # per key
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]])  # per key
        self.rank = np.full(len(key), -1, dtype=np.int64)  # slot inside its group, -1: none
        self.rank[self.order] = np.arange(len(self.order)) - self.first[key[self.order]]

    def other(self, ep: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A uniformly drawn eligible episode of ``ep``'s group other than ``ep``; -1 where
        the group has none."""
        if len(self.order) == 0:
            return np.full(len(ep), -1, dtype=np.int64)
        k = self.key[ep]
        n = self.count[k]
        own = self.rank[ep] >= 0
        m = n - own  # candidates
        r = _floor_index(u, np.maximum(m, 1))
        r = r + (own & (r >= self.rank[ep]))  # skip the episode's own slot
        slot = np.minimum(self.first[k] + r, len(self.order) - 1)  # in range where m == 0 too
        return np.where(m > 0, self.order[slot], -1)


class NoContext(ValueError):
    """A segment has no context that leaves its predicted steps out (docs/method.md)."""


class SegmentSampler:
    """Builds whole batches with array operations (no Python loop per sample).

    Context rules (docs/method.md, "context"): a context never holds a step whose action the
    segment predicts. The set context (CMT) comes from the own episode's other steps when
    there are at least C of them (``same_trajectory``), else from another episode of the
    same group (task, and behaviour level where recorded); its contrastive second view from
    another episode of the group, so that InfoNCE positives share the group and negatives
    are other groups. The raw segment (Prompt-DT) comes from another of the task's
    demonstration episodes, its ``demo_fraction`` highest-return ones."""

    def __init__(
        self,
        ds: OfflineDataset,
        norm: Normalizer,
        context_len: int,
        *,
        context: ContextKind = "none",
        context_size: int = 32,
        segment_len: int = 5,
        source: ContextSource = "same_trajectory",
        contrastive: bool = False,
        demo_fraction: float = 0.2,
        own_context_min: int | None = None,
    ) -> None:
        self.ds, self.norm, self.K = ds, norm, context_len
        self.context, self.C, self.S = context, context_size, segment_len
        self.source, self.contrastive = source, contrastive
        # Default C // 2: the point robot's validation goals preferred own contexts of 30
        # steps (C = 32) to other episodes' (docs/method.md); a few steps repeated to fill C
        # (the tails of short SMAX episodes) still come from another episode.
        self.own_min = max(1, context_size // 2) if own_context_min is None else own_context_min
        # Normalise once per dataset, so that building a batch is nothing but gathers.
        d = ds.data
        self._states = norm.states(d.observations).astype(np.float32)
        self._next_states = norm.states(d.next_observations).astype(np.float32)
        self._rewards = (d.rewards / norm.reward_scale).astype(np.float32)
        self._rtg = (ds.rtg / norm.return_scale).astype(np.float32)
        self._features = (
            transition_features(ds, norm, np.arange(len(ds))) if context == "set" else None
        )
        self.group = ds.ep_group
        every = np.ones(ds.num_episodes, dtype=bool)
        self._groups = EpisodeGroups(self.group, every) if context == "set" else None
        self._demos = (
            EpisodeGroups(ds.ep_task.astype(np.int64), ds.top_episodes_per_task(demo_fraction))
            if context == "segment"
            else None
        )

    def draw(self, batch_size: int, rng: np.random.Generator | None = None) -> dict:
        """All random numbers one batch needs."""
        rng = self.ds.rng if rng is None else rng
        B = batch_size
        draws: dict[str, np.ndarray] = {
            "start": rng.integers(0, len(self.ds), size=B),
            "other": rng.random(B),
        }
        if self.context == "set":
            draws["ctx"] = rng.random((B, self.C), dtype=np.float32)
            if self.contrastive:
                draws["other2"] = rng.random(B)
                draws["ctx2"] = rng.random((B, self.C), dtype=np.float32)
        elif self.context == "segment":
            draws["seg"] = rng.random(B)
        return draws

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> Batch:
        return self.build(self.draw(batch_size, rng))

    def build(self, draws: dict) -> Batch:
        ds, K = self.ds, self.K
        d = ds.data
        start = draws["start"]  # (B,)
        ep = ds.episode_of[start]
        ep_start, ep_len = ds.ep_start[ep], ds.ep_len[ep]
        offset = start - ep_start  # step of the segment start inside its episode
        seg_len = np.minimum(K, ep_len - offset)  # (B,) real steps in the segment
        steps = np.arange(K)
        mask = steps[None, :] < seg_len[:, None]  # (B, K)
        idx = start[:, None] + np.minimum(steps[None, :], seg_len[:, None] - 1)  # (B, K)

        def zero_pad(x: np.ndarray) -> np.ndarray:
            x[~mask] = 0  # x is a fresh gather, safe to modify in place
            return x

        batch = Batch(
            states=torch.from_numpy(zero_pad(rows(self._states, idx))),
            actions=torch.from_numpy(zero_pad(rows(d.actions, idx))),
            rewards=torch.from_numpy(zero_pad(rows(self._rewards, idx))),
            rtg=torch.from_numpy(zero_pad(rows(self._rtg, idx))),
            timesteps=torch.from_numpy(zero_pad(rows(ds.timesteps, idx))),
            mask=torch.from_numpy(mask),
            next_states=torch.from_numpy(zero_pad(rows(self._next_states, idx))),
            ep_return=torch.from_numpy(ds.ep_return[ep]),
            unit=torch.from_numpy(self.group[ep]),
        )
        if d.avail_actions is not None:
            avail = d.avail_actions[idx]  # (B, K, n)
            avail[~mask] = True  # padding: any action, so its (ignored) loss stays finite
            batch.avail = torch.from_numpy(avail)
        if ds.agent_of is not None:
            batch.agents = torch.from_numpy(ds.agent_of[start])
        if self.context == "set":
            assert self._features is not None  # built for set contexts
            own_ok = self.source == "same_trajectory"
            idx1 = self._set_index(ep, offset, seg_len, draws["other"], draws["ctx"], own_ok)
            batch.context = torch.from_numpy(rows(self._features, idx1))
            if self.contrastive:
                idx2 = self._set_index(ep, offset, seg_len, draws["other2"], draws["ctx2"], False)
                batch.context2 = torch.from_numpy(rows(self._features, idx2))
        elif self.context == "segment":
            idx_seg = self._segment_index(ep, offset, seg_len, draws["other"], draws["seg"])
            batch.segment = segment_tensors(ds, self.norm, idx_seg)
        return batch

    def _set_index(
        self,
        ep: np.ndarray,
        offset: np.ndarray,
        seg_len: np.ndarray,
        u_ep: np.ndarray,
        u: np.ndarray,
        own_first: bool,
    ) -> np.ndarray:
        """C transition indices (B, C): the own episode's steps outside the segment if
        ``own_first`` and there are at least ``own_context_min`` (default C // 2) of them, else all
        steps of another episode of the group, else (a group of one episode) the own steps
        outside the segment."""
        ds = self.ds
        assert self._groups is not None  # built for set contexts
        outside = ds.ep_len[ep] - seg_len  # (B,) own steps outside the segment
        other = self._groups.other(ep, u_ep)
        use_own = (other < 0) | (own_first & (outside >= self.own_min))
        _no_context(use_own & (outside <= 0), ep, "a context")
        ctx_ep = np.where(use_own, ep, other)
        n = np.where(use_own, outside, ds.ep_len[ctx_ep])[:, None]  # (B, 1) candidates
        k = _floor_index(u, np.maximum(n, 1))  # (B, C)
        k = np.where(use_own[:, None], k + (k >= offset[:, None]) * seg_len[:, None], k)
        return ds.ep_start[ctx_ep][:, None] + k

    def _segment_index(
        self, ep: np.ndarray, offset: np.ndarray, seg_len: np.ndarray, u_ep: np.ndarray, u
    ) -> np.ndarray:
        """S consecutive indices (B, S) of another demonstration episode of the task, or (a
        task with one demonstration, the own one) of the own episode, clear of the segment."""
        ds, S = self.ds, self.S
        assert self._demos is not None  # built for segment prompts
        other = self._demos.other(ep, u_ep)
        use_own = other < 0
        L = ds.ep_len[np.where(use_own, ep, other)]
        # Own windows that do not overlap [offset, offset + seg_len): before it or after it.
        n_before = np.maximum(0, offset - S + 1)
        n_after = np.maximum(0, L - S - (offset + seg_len) + 1)
        _no_context(use_own & (n_before + n_after <= 0), ep, "a prompt segment")
        n = np.where(use_own, n_before + n_after, np.maximum(1, L - S + 1))
        k = _floor_index(u, np.maximum(n, 1))
        w = np.where(use_own & (k >= n_before), offset + seg_len + (k - n_before), k)
        # Episodes shorter than S repeat their last step rather than padding the prompt.
        steps = np.minimum(w[:, None] + np.arange(S)[None, :], L[:, None] - 1)
        return ds.ep_start[np.where(use_own, ep, other)][:, None] + steps


def _no_context(bad: np.ndarray, ep: np.ndarray, what: str) -> None:
    """Refuse a batch in which some segment has no context clear of its predicted steps."""
    if bad.any():
        e = int(ep[np.argmax(bad)])
        raise NoContext(
            f"episode {e} is alone in its group and its segment covers it: {what} clear of "
            "the predicted steps cannot be drawn; use more episodes per task (or level), "
            "or a shorter context_len"
        )

"""The vectorised batch builder against a slow, obviously-correct per-sample reference."""

from __future__ import annotations

import numpy as np
import pytest

from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.sampler import SegmentSampler
from cmt.data.schema import TransitionData

K, C, S = 6, 5, 3


def random_dataset(seed: int, n_tasks: int = 4) -> OfflineDataset:
    """Random transitions, episodes of random lengths 1..15 (some shorter than K or S)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 16, size=25)
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    is_term = rng.random(len(ends)) < 0.5
    terminals[ends[is_term]] = True
    timeouts[ends[~is_term]] = True
    task = np.repeat(rng.integers(0, n_tasks, size=len(lengths)), lengths)
    data = TransitionData(
        observations=rng.normal(size=(n, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(size=(n, 3)).astype(np.float32),
        task_ids=task.astype(np.int64),
    )
    return OfflineDataset(data, seed=seed)


def reference(ds: OfflineDataset, norm: Normalizer, draws: dict, source: str) -> dict:
    """Per-sample loops implementing the documented sampling rules literally."""
    d = ds.data
    out = {k: [] for k in ("states", "actions", "rtg", "timesteps", "mask", "ctx", "seg", "unit")}
    for b, start in enumerate(draws["start"]):
        ep = int(np.searchsorted(ds.ep_start, start, side="right") - 1)
        es, L = int(ds.ep_start[ep]), int(ds.ep_len[ep])
        off = start - es
        seg_len = min(K, L - off)
        rows = list(range(start, start + seg_len))
        pad = K - seg_len
        states = [(d.observations[i] - norm.state_mean) / norm.state_std for i in rows]
        out["states"].append(np.array(states + [np.zeros(3)] * pad))
        out["actions"].append(np.array([d.actions[i] for i in rows] + [np.zeros(2)] * pad))
        rtg = [sum(d.rewards[i : es + L]) / norm.return_scale for i in rows]
        out["rtg"].append(np.array(rtg + [0.0] * pad))
        out["timesteps"].append(np.array([i - es for i in rows] + [0] * pad))
        out["mask"].append(np.array([True] * seg_len + [False] * pad))
        out["unit"].append(ep if source == "same_trajectory" else int(ds.ep_task[ep]))
        # Context episode: the own one, or another episode of the same task.
        if source == "same_trajectory":
            cep = ep
        else:
            same_task = [e for e in range(ds.num_episodes) if ds.ep_task[e] == ds.ep_task[ep]]
            others = [e for e in same_task if e != ep]
            cep = others[int(draws["other"][b] * len(others))] if others else ep
        cs, cL = int(ds.ep_start[cep]), int(ds.ep_len[cep])
        # Set context: from the own episode, only steps outside the segment window.
        if cep == ep and L - seg_len > 0:
            allowed = [k for k in range(L) if not off <= k < off + seg_len]
        else:
            allowed = list(range(cL))
        out["ctx"].append([cs + allowed[int(float(u) * len(allowed))] for u in draws["ctx"][b]])
        # Segment: S consecutive steps; windows overlapping the segment are excluded.
        if cep == ep:
            windows = [w for w in range(L - S + 1) if w + S <= off or w >= off + seg_len]
        else:
            windows = []
        if not windows:
            windows = list(range(max(1, cL - S + 1)))
        w = windows[int(draws["seg"][b] * len(windows))]
        out["seg"].append([cs + min(w + j, cL - 1) for j in range(S)])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("source", ["same_trajectory", "same_task"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_sampler_matches_reference(source, seed):
    ds = random_dataset(seed)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    kw = dict(context_size=C, segment_len=S, source=source)
    set_sampler = SegmentSampler(ds, norm, K, context="set", **kw)
    seg_sampler = SegmentSampler(ds, norm, K, context="segment", **kw)
    draws = set_sampler.draw(64, np.random.default_rng(seed + 10))
    draws["seg"] = np.random.default_rng(seed + 20).random(64)
    ref = reference(ds, norm, draws, source)
    b = set_sampler.build(draws)
    np.testing.assert_allclose(b.states.numpy(), ref["states"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.actions.numpy(), ref["actions"])
    np.testing.assert_allclose(b.rtg.numpy(), ref["rtg"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(b.timesteps.numpy(), ref["timesteps"])
    np.testing.assert_array_equal(b.mask.numpy(), ref["mask"])
    np.testing.assert_array_equal(b.unit.numpy(), ref["unit"])
    # Context features are computed from the chosen indices: compare the indices' features.
    d = ds.data
    ctx_obs = (d.observations[ref["ctx"]] - norm.state_mean) / norm.state_std
    np.testing.assert_allclose(b.context[..., :3].numpy(), ctx_obs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.context[..., 3:5].numpy(), d.actions[ref["ctx"]])
    seg = seg_sampler.build(draws).segment
    np.testing.assert_array_equal(seg["actions"].numpy(), d.actions[ref["seg"]])
    np.testing.assert_array_equal(seg["timesteps"].numpy(), ds.timesteps[ref["seg"]])


def test_same_trajectory_context_never_overlaps_the_segment():
    ds = random_dataset(5)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    s = SegmentSampler(ds, norm, K, context="set", context_size=C)
    draws = s.draw(512, np.random.default_rng(0))
    draws["seg"] = np.zeros(512)
    ref = reference(ds, norm, draws, "same_trajectory")
    for b, start in enumerate(draws["start"]):
        seg = set(range(start, start + int(ref["mask"][b].sum())))
        ep = ds.episode_of[start]
        if ds.ep_len[ep] > len(seg):
            assert not seg & set(ref["ctx"][b])
        assert all(ds.episode_of[i] == ep for i in ref["ctx"][b])


def test_dataset_rtg_and_episode_index():
    ds = random_dataset(7)
    for e in range(ds.num_episodes):
        s, L = ds.ep_start[e], ds.ep_len[e]
        r = ds.data.rewards[s : s + L].astype(np.float64)
        np.testing.assert_allclose(
            ds.rtg[s : s + L], np.cumsum(r[::-1])[::-1], rtol=1e-5, atol=1e-5
        )
        assert ds.ep_return[e] == pytest.approx(r.sum(), rel=1e-5, abs=1e-5)
        assert (ds.timesteps[s : s + L] == np.arange(L)).all()


def test_split_and_select_keep_whole_episodes():
    ds = random_dataset(3)
    train, val = ds.split_episodes(0.25, seed=0)
    assert train.num_episodes + val.num_episodes == ds.num_episodes
    assert len(train) + len(val) == len(ds)
    task = int(ds.ep_task[0])
    sub = ds.select_tasks([task])
    assert set(sub.ep_task.tolist()) == {task}
    with pytest.raises(ValueError, match="no episodes"):
        ds.select_tasks([99])

"""The vectorised batch builder against a slow, obviously-correct per-sample reference."""

from __future__ import annotations

import numpy as np
import pytest

from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.sampler import NoContext, SegmentSampler
from cmt.data.schema import TransitionData

K, C, S = 6, 5, 3


def random_dataset(
    seed: int, n_tasks: int = 4, lengths: np.ndarray | None = None, levels: int = 0
) -> OfflineDataset:
    """Random transitions, episodes of random lengths 1..15 (some shorter than K or S); the
    observation's first feature is the transition's index, so a context names its rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 16, size=25) if lengths is None else np.asarray(lengths)
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    is_term = rng.random(len(ends)) < 0.5
    terminals[ends[is_term]] = True
    timeouts[ends[~is_term]] = True
    task = np.repeat(rng.integers(0, n_tasks, size=len(lengths)), lengths)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    infos = {}
    if levels:
        infos["level"] = np.repeat(rng.integers(0, levels, size=len(lengths)), lengths).astype(
            np.int8
        )
    data = TransitionData(
        observations=obs,
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(size=(n, 3)).astype(np.float32),
        task_ids=task.astype(np.int64),
        infos=infos,
    )
    return OfflineDataset(data, seed=seed)


def group_of(ds: OfflineDataset, e: int) -> tuple[int, int]:
    """The documented context group: the task, and the level where the data records one."""
    level = ds.data.infos.get("level")
    return int(ds.ep_task[e]), -1 if level is None else int(level[ds.ep_start[e]])


def pick(u: float, items: list[int]) -> int:
    return items[int(float(u) * len(items))]


def reference_context(
    ds, ep, off, seg_len, u_ep, u_ctx, own_first: bool, own_min=C // 2
) -> list[int]:
    """The set-context rule, literally: own steps outside the segment if there are >= own_min
    (C // 2 by default; and the own episode comes first), else every step of another episode of
    the group."""
    es, L = int(ds.ep_start[ep]), int(ds.ep_len[ep])
    others = [e for e in range(ds.num_episodes) if e != ep and group_of(ds, e) == group_of(ds, ep)]
    outside = [es + k for k in range(L) if not off <= k < off + seg_len]
    if others and not (own_first and len(outside) >= own_min):
        cep = pick(u_ep, others)
        allowed = list(range(int(ds.ep_start[cep]), int(ds.ep_start[cep] + ds.ep_len[cep])))
    else:
        allowed = outside
    return [pick(u, allowed) for u in u_ctx]


def reference_segment(ds, ep, off, seg_len, u_ep, u_seg, demo_fraction=0.2) -> list[int]:
    """The Prompt-DT rule: S steps of another of the task's top-return episodes."""
    task = int(ds.ep_task[ep])
    eps = [e for e in range(ds.num_episodes) if ds.ep_task[e] == task]
    n_top = max(2, int(np.ceil(demo_fraction * len(eps))))
    top = sorted(sorted(eps, key=lambda e: -ds.ep_return[e])[:n_top])
    others = [e for e in top if e != ep]
    L = int(ds.ep_len[ep])
    if others:
        cep = pick(u_ep, others)
        cL = int(ds.ep_len[cep])
        w = pick(u_seg, list(range(max(1, cL - S + 1))))
    else:
        cep, cL = ep, L
        w = pick(u_seg, [w for w in range(L - S + 1) if w + S <= off or w >= off + seg_len])
    return [int(ds.ep_start[cep]) + min(w + j, cL - 1) for j in range(S)]


def reference(
    ds: OfflineDataset, norm: Normalizer, draws: dict, source: str, own_min: int = C // 2
) -> dict:
    """Per-sample loops implementing the documented sampling rules literally."""
    d = ds.data
    keys = ("states", "actions", "rtg", "timesteps", "mask", "ctx", "ctx2", "seg", "unit")
    out = {k: [] for k in keys}
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
        out["unit"].append(group_of(ds, ep))
        own_first = source == "same_trajectory"
        ctx = reference_context(
            ds, ep, off, seg_len, draws["other"][b], draws["ctx"][b], own_first, own_min
        )
        out["ctx"].append(ctx)
        ctx2 = reference_context(ds, ep, off, seg_len, draws["other2"][b], draws["ctx2"][b], False)
        out["ctx2"].append(ctx2)
        out["seg"].append(
            reference_segment(ds, ep, off, seg_len, draws["other"][b], draws["seg"][b])
        )
    return {k: np.array(v) for k, v in out.items()}


def context_rows(x) -> np.ndarray:
    """Transition indices of a context (B, C, F): feature 0 is the index (identity norm)."""
    return np.rint(x[..., 0].numpy()).astype(np.int64)


def samplers(ds, source="same_trajectory", norm=None, own_min=None):
    norm = Normalizer.identity(3) if norm is None else norm
    kw = dict(context_size=C, segment_len=S, source=source, own_context_min=own_min)
    return (
        SegmentSampler(ds, norm, K, context="set", contrastive=True, **kw),
        SegmentSampler(ds, norm, K, context="segment", **kw),
    )


@pytest.mark.parametrize("source", ["same_trajectory", "same_task"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [0, 2])
@pytest.mark.parametrize("own_min", [None, 1])
def test_batched_sampler_matches_reference(source, seed, levels, own_min):
    ds = random_dataset(seed, levels=levels)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    set_sampler, seg_sampler = samplers(ds, source, norm, own_min)
    draws = set_sampler.draw(64, np.random.default_rng(seed + 10))
    draws["seg"] = np.random.default_rng(seed + 20).random(64)
    ref = reference(ds, norm, draws, source, C // 2 if own_min is None else own_min)
    b = set_sampler.build(draws)
    np.testing.assert_allclose(b.states.numpy(), ref["states"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.actions.numpy(), ref["actions"])
    np.testing.assert_allclose(b.rtg.numpy(), ref["rtg"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(b.timesteps.numpy(), ref["timesteps"])
    np.testing.assert_array_equal(b.mask.numpy(), ref["mask"])
    # One unit per group: the same unit exactly where the reference's groups agree.
    unit = b.unit.numpy()
    same_ref = (ref["unit"][:, None, :] == ref["unit"][None, :, :]).all(-1)
    np.testing.assert_array_equal(unit[:, None] == unit[None, :], same_ref)
    # Context features are computed from the chosen indices: compare the indices' features.
    d = ds.data
    for key, got in (("ctx", b.context), ("ctx2", b.context2)):
        obs = (d.observations[ref[key]] - norm.state_mean) / norm.state_std
        np.testing.assert_allclose(got[..., :3].numpy(), obs, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[..., 3:5].numpy(), d.actions[ref[key]])
    seg = seg_sampler.build(draws).segment
    np.testing.assert_array_equal(seg["actions"].numpy(), d.actions[ref["seg"]])
    np.testing.assert_array_equal(seg["timesteps"].numpy(), ds.timesteps[ref["seg"]])


def predicted_rows(ds: OfflineDataset, batch) -> list[set[int]]:
    """The transitions whose actions each segment of ``batch`` predicts."""
    first = np.rint(batch.states[:, 0, 0].numpy()).astype(np.int64)
    return [set(range(f, f + int(m.sum()))) for f, m in zip(first, batch.mask, strict=True)]


@pytest.mark.parametrize("source", ["same_trajectory", "same_task"])
@pytest.mark.parametrize("lengths", ["short", "long", "mixed"])
@pytest.mark.parametrize("own_min", [None, 1])
def test_contexts_never_hold_a_predicted_step(source, lengths, own_min):
    """The sampler itself: no context or prompt segment holds a step the segment predicts,
    on episodes shorter than K (where the whole episode is predicted) and longer ones."""
    n = {"short": [4] * 24, "long": [40] * 24, "mixed": [3, 40] * 12}[lengths]
    ds = random_dataset(3, lengths=np.array(n))
    set_sampler, seg_sampler = samplers(ds, source, own_min=own_min)
    for seed in range(3):
        draws = set_sampler.draw(256, np.random.default_rng(seed))
        draws["seg"] = np.random.default_rng(seed + 7).random(256)
        batch = set_sampler.build(draws)
        predicted = predicted_rows(ds, batch)
        segment = seg_sampler.build(draws).segment
        seg_rows = np.rint(segment["states"][..., 0].numpy()).astype(np.int64)
        for rows, ctx, ctx2, seg in zip(
            predicted,
            context_rows(batch.context),
            context_rows(batch.context2),
            seg_rows,
            strict=True,
        ):
            assert not rows & set(ctx.tolist())
            assert not rows & set(ctx2.tolist())
            assert not rows & set(seg.tolist())


def test_short_episode_context_comes_from_another_episode_of_its_group():
    """Fewer than C // 2 own steps outside the segment (here: segments that start in the
    first 2 steps of 5-step episodes): the context is another episode of the group."""
    ds = random_dataset(4, n_tasks=3, lengths=np.full(60, 5), levels=2)
    set_sampler, _ = samplers(ds)
    batch = set_sampler.sample(512, np.random.default_rng(0))
    first = np.rint(batch.states[:, 0, 0].numpy()).astype(np.int64)
    ep, outside = ds.episode_of[first], first - ds.ep_start[ds.episode_of[first]]
    ctx_eps = ds.episode_of[context_rows(batch.context)]  # (B, C)
    assert (outside < C // 2).sum() > 100 and (outside >= C // 2).sum() > 100
    for e, n, ce in zip(ep, outside, ctx_eps, strict=True):
        assert len(set(ce.tolist())) == 1, "a context is one episode's"
        assert (ce[0] != e) == (n < C // 2)
        assert group_of(ds, int(ce[0])) == group_of(ds, int(e))


def test_contrastive_positives_share_the_task_and_level_not_the_episode():
    """InfoNCE's unit is the group (task and level), and its second view is another of the
    group's episodes: the encoder learns what the group's episodes share."""
    ds = random_dataset(6, n_tasks=3, lengths=np.full(30, 40), levels=2)
    set_sampler, _ = samplers(ds)
    batch = set_sampler.sample(256, np.random.default_rng(1))
    ep = ds.episode_of[np.rint(batch.states[:, 0, 0].numpy()).astype(np.int64)]
    groups = [group_of(ds, int(e)) for e in ep]
    unit = batch.unit.numpy()
    for i in range(len(ep)):
        for j in range(len(ep)):
            assert (unit[i] == unit[j]) == (groups[i] == groups[j])
    view2 = ds.episode_of[context_rows(batch.context2)][:, 0]
    assert (view2 != ep).all()
    assert [group_of(ds, int(e)) for e in view2] == groups


def test_prompt_dt_segments_come_from_the_tasks_best_episodes():
    ds = random_dataset(8, n_tasks=2, lengths=np.full(40, 12))
    _, seg_sampler = samplers(ds)
    draws = seg_sampler.draw(512, np.random.default_rng(2))
    batch = seg_sampler.build(draws)
    ep = ds.episode_of[np.rint(batch.states[:, 0, 0].numpy()).astype(np.int64)]
    seg_ep = ds.episode_of[np.rint(batch.segment["states"][:, 0, 0].numpy()).astype(np.int64)]
    for task in range(2):
        eps = np.flatnonzero(ds.ep_task == task)
        n_best = int(np.ceil(0.2 * len(eps)))  # demo_fraction's default
        best = set(eps[np.argsort(-ds.ep_return[eps])][:n_best].tolist())
        mine = ds.ep_task[ep] == task
        assert set(seg_ep[mine].tolist()) == best
    assert (ds.ep_task[seg_ep] == ds.ep_task[ep]).all()
    assert (seg_ep != ep).all()


def test_a_lone_episode_covered_by_its_segment_is_refused():
    ds = random_dataset(9, n_tasks=1, lengths=np.array([4]))
    set_sampler, _ = samplers(ds)
    with pytest.raises(NoContext, match="alone in its group"):
        set_sampler.sample(8, np.random.default_rng(0))


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

"""Discrete actions and teams in the one SequencePolicy: masked-logits head, agent folding of
data (exact and reversible), agent ids in batches, training and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmt.checkpoint import load_policy, save_policy
from cmt.config import ModelConfig, PretrainConfig
from cmt.data.agents import fold_agents, unfold_agents
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.schema import AGENT_ID, TransitionData
from cmt.models.heads import MaskedLogitsHead
from cmt.models.policy import SequencePolicy
from cmt.train.pretrain import make_sampler, pretrain_loss

A, OBS, N_ACT = 3, 5, 7


def team_data(seed: int = 0, lengths: tuple[int, ...] = (4, 9, 2, 6)) -> TransitionData:
    """A team dataset in the on-disk layout: (N, A, ...) rows, every action available."""
    rng = np.random.default_rng(seed)
    N = sum(lengths)
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(N, bool), np.zeros(N, bool)
    terminals[ends[:-1]] = True
    timeouts[ends[-1]] = True
    avail = rng.random((N, A, N_ACT)) < 0.5
    avail[..., 4] = True  # stop is always available (as in SMAX)
    actions = np.array(
        [[rng.choice(np.flatnonzero(avail[i, a])) for a in range(A)] for i in range(N)]
    )
    return TransitionData(
        observations=rng.normal(size=(N, A, OBS)).astype(np.float32),
        actions=actions.astype(np.int64),
        rewards=rng.random(N).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(size=(N, A, OBS)).astype(np.float32),
        task_ids=np.zeros(N, np.int64),
        infos={"won": terminals.copy(), "level": np.repeat(np.arange(len(lengths)), lengths)},
        metadata={"map": "test"},
        avail_actions=avail,
    )


def test_agent_axis_folds_and_unfolds_exactly() -> None:
    team = team_data()
    folded = fold_agents(team)
    N = len(team)
    assert folded.observations.shape == (N * A, OBS) and folded.actions.shape == (N * A, N_ACT)
    ds = OfflineDataset(folded)
    # One episode per (team episode, agent), agent-major, each as long as its team episode.
    assert ds.num_episodes == 4 * A and ds.num_agents == A
    np.testing.assert_array_equal(ds.ep_len, np.repeat([4, 9, 2, 6], A))
    np.testing.assert_array_equal(folded.infos[AGENT_ID][ds.ep_start], np.tile(np.arange(A), 4))
    # Every agent's trajectory carries the team's return.
    per_team = ds.ep_return.reshape(4, A)
    np.testing.assert_allclose(per_team, np.repeat(per_team[:, :1], A, axis=1))
    back = unfold_agents(folded)
    for key in (
        "observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "next_observations",
        "task_ids",
        "avail_actions",
    ):
        np.testing.assert_array_equal(getattr(back, key), getattr(team, key), err_msg=key)
    assert back.infos.keys() == team.infos.keys() and back.metadata == team.metadata
    for key in team.infos:
        np.testing.assert_array_equal(back.infos[key], team.infos[key])


def test_discrete_head_never_picks_an_unavailable_action() -> None:
    head = MaskedLogitsHead(8, N_ACT)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, N_ACT, generator=g) * 10
    avail = torch.rand(4096, N_ACT, generator=g) < 0.3
    avail[torch.arange(4096), torch.randint(N_ACT, (4096,), generator=g)] = True
    chosen = head.choose(logits, avail).argmax(-1)
    assert avail[torch.arange(4096), chosen].all()
    # It is the best available one, and the unmasked best is often unavailable (the test bites).
    masked = logits.masked_fill(~avail, float("-inf"))
    torch.testing.assert_close(chosen, masked.argmax(-1))
    assert (~avail[torch.arange(4096), logits.argmax(-1)]).float().mean() > 0.3


def test_masked_cross_entropy_ignores_unavailable_actions() -> None:
    head = MaskedLogitsHead(8, N_ACT)
    logits = torch.zeros(1, 2, N_ACT, requires_grad=True)
    target = torch.nn.functional.one_hot(torch.tensor([[1, 4]]), N_ACT).float()
    avail = torch.zeros(1, 2, N_ACT, dtype=torch.bool)
    avail[0, 0, [1, 2]] = True  # two choices: loss log 2
    avail[0, 1, 4] = True  # one choice: loss 0
    err = head.error(logits, target, avail)
    torch.testing.assert_close(err, torch.tensor([[np.log(2.0), 0.0]], dtype=torch.float32))
    err.sum().backward()
    assert logits.grad[~avail].abs().max() == 0  # no gradient through unavailable actions


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(n_layer=1, d_model=32, n_head=2, context_len=4, context_size=6, **kw)


@pytest.mark.parametrize("prompt,rtg", [("encoder", False), ("none", True)])
def test_team_batches_train_a_shared_discrete_policy(prompt: str, rtg: bool, tmp_path) -> None:
    ds = OfflineDataset(fold_agents(team_data()))
    cfg = _cfg(prompt=prompt, condition_on_rtg=rtg, dynamics_heads=prompt == "encoder")
    pcfg = PretrainConfig(steps=1, batch_size=32)
    torch.manual_seed(0)
    model = SequencePolicy.for_dataset(cfg, ds)
    assert model.discrete and model.num_agents == A and model.embed_agent is not None
    norm = Normalizer.fit(ds.data, ds.ep_return)
    batch = make_sampler(ds, norm, cfg, pcfg).sample(32, np.random.default_rng(0))
    assert batch.avail.shape == (32, 4, N_ACT) and batch.agents.shape == (32,)
    # Real steps' target actions are available; agent ids are those of the segments' rows.
    real = batch.mask
    assert batch.avail[real].gather(-1, batch.actions[real].argmax(-1, keepdim=True)).all()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, terms = pretrain_loss(model, batch, pcfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(terms["action"].detach()))
    assert losses[-1] < 0.5 * losses[0]  # cross-entropy on one batch: it can be memorised
    # Agent ids matter: the same history as another agent gives other logits.
    model.eval()
    other = batch.agents.clone()
    other = (other + 1) % A
    out = model.forward_batch(batch, model.batch_prompt(batch)).actions
    batch.agents = other
    assert not torch.allclose(out, model.forward_batch(batch, model.batch_prompt(batch)).actions)
    # The checkpoint rebuilds the same discrete team policy.
    save_policy(tmp_path / "m.pt", model, norm, {})
    loaded, _, _ = load_policy(tmp_path / "m.pt")
    assert loaded.discrete and loaded.num_agents == A
    torch.testing.assert_close(
        loaded.forward_batch(batch, loaded.batch_prompt(batch)).actions,
        model.forward_batch(batch, model.batch_prompt(batch)).actions,
    )


def test_a_team_model_needs_agent_ids() -> None:
    model = SequencePolicy(_cfg(prompt="none"), OBS, N_ACT, discrete=True, num_agents=A)
    x = torch.zeros(2, 4, OBS)
    with pytest.raises(ValueError, match="needs agent ids"):
        model(x, torch.zeros(2, 4, N_ACT), None, torch.zeros(2, 4, dtype=torch.long), None)

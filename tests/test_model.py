"""Model behaviour: causality, prompt visibility, padding invariance, set-function encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmt.config import ModelConfig
from cmt.models.ops import attention, keep_mask
from cmt.models.policy import SequencePolicy

OBS, ACT, B, K = 3, 2, 4, 6


def make(prompt: str = "encoder", rtg: bool = False, **kw) -> SequencePolicy:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2,
        d_model=32,
        n_head=2,
        context_len=K,
        prompt=prompt,
        condition_on_rtg=rtg,
        context_size=7,
        **kw,
    )
    return SequencePolicy(cfg, OBS, ACT).eval()


def history(T: int = K) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "states": torch.randn(B, T, OBS, generator=g),
        "actions": torch.rand(B, T, ACT, generator=g) * 2 - 1,
        "rtg": torch.randn(B, T, generator=g),
        "timesteps": torch.arange(T).expand(B, T),
    }


def run(model: SequencePolicy, h: dict, prompt: torch.Tensor | None):
    rtg = h["rtg"] if model.cfg.condition_on_rtg else None
    return model(h["states"], h["actions"], rtg, h["timesteps"], prompt)


@pytest.mark.parametrize("prompt_kind,rtg", [("encoder", False), ("none", True), ("segment", True)])
def test_future_tokens_do_not_change_earlier_outputs(prompt_kind, rtg):
    model = make(prompt_kind, rtg)
    prompt = None if prompt_kind == "none" else torch.randn(B, 5, 32)
    h = history()
    base = run(model, h, prompt)
    t = 3
    changed = {k: v.clone() for k, v in h.items()}
    changed["states"][:, t:] += 5.0
    changed["actions"][:, t:] = -changed["actions"][:, t:]
    changed["rtg"][:, t:] += 3.0
    out = run(model, changed, prompt)
    torch.testing.assert_close(out.actions[:, :t], base.actions[:, :t])
    assert not torch.allclose(out.actions[:, t:], base.actions[:, t:])
    # The action at step t is predicted from the state token: it must not see action t.
    only_action = {k: v.clone() for k, v in h.items()}
    only_action["actions"][:, t] += 1.0
    out2 = run(model, only_action, prompt)
    torch.testing.assert_close(out2.actions[:, : t + 1], base.actions[:, : t + 1])
    assert not torch.allclose(out2.next_states[:, t], base.next_states[:, t])


def test_prompt_is_visible_to_every_position():
    model = make()
    h = history()
    prompt = torch.randn(B, 5, 32)
    base = run(model, h, prompt)
    for j in range(5):  # each single prompt vector reaches every history position
        p = prompt.clone()
        p[:, j] += 1.0
        diff = (run(model, h, p).actions - base.actions).abs().amax(dim=(0, 2))  # (K,)
        assert (diff > 0).all(), f"prompt vector {j} not seen at positions {diff == 0}"


def test_right_padding_leaves_real_outputs_unchanged():
    model = make()
    prompt = torch.randn(B, 5, 32)
    h = history(K)
    short = {k: v[:, :4] for k, v in h.items()}
    padded = {k: v.clone() for k, v in h.items()}
    for k in ("states", "actions", "rtg"):
        padded[k][:, 4:] = 123.0  # garbage where the sampler puts padding
    torch.testing.assert_close(
        run(model, padded, prompt).actions[:, :4], run(model, short, prompt).actions
    )


def test_encoder_is_a_set_function():
    model = make()
    ctx = torch.randn(B, 7, 2 * OBS + ACT + 1)
    perm = torch.randperm(7)
    torch.testing.assert_close(
        model.prompt_from_context(ctx),
        model.prompt_from_context(ctx[:, perm]),
        rtol=1e-5,
        atol=1e-5,
    )
    assert model.prompt_from_context(ctx).shape == (B, model.cfg.prompt_len, 32)


def test_segment_prompt_has_one_token_per_modality_and_step():
    model = make("segment", rtg=True)
    seg = {k: v[:, :5] for k, v in history().items()}
    assert model.prompt_from_segment(seg).shape == (B, 5 * 3, 32)


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_attention_matches_reference_sdpa(causal):
    q, k, v = (torch.randn(2, 2, 9, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(attention(q, k, v, causal, 0.0), ref, rtol=1e-5, atol=1e-5)


def test_keep_mask_rate_and_determinism():
    torch.manual_seed(3)
    m = keep_mask(torch.Size([200, 1000]), 0.1, torch.device("cpu"))
    assert m.dtype == torch.bool and m.shape == (200, 1000)
    assert abs(m.float().mean().item() - 0.9) < 0.003
    torch.manual_seed(3)
    assert torch.equal(m, keep_mask(torch.Size([200, 1000]), 0.1, torch.device("cpu")))


def test_weight_decay_only_on_matrices():
    model = make()
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

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
    defaults = {"n_layer": 2, "d_model": 32, "n_head": 2, "context_len": K, "context_size": 7}
    cfg = ModelConfig(**{**defaults, **kw}, prompt=prompt, condition_on_rtg=rtg)
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


def test_cpu_attention_with_a_mask_matches_reference_sdpa():
    q, k, v = (torch.randn(2, 2, 9, 8) for _ in range(3))
    mask = torch.rand(9, 9) > 0.5
    mask.fill_diagonal_(True)  # every query sees at least itself
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q, k, v, False, 0.0, mask)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ banded attention

BANDED = [("encoder", False), ("segment", True), ("none", True), ("none", False)]


def banded_pair(prompt_kind: str, rtg: bool) -> tuple[SequencePolicy, SequencePolicy]:
    """A window and a banded model with the same weights (3 layers, K = 6)."""
    window = make(prompt_kind, rtg, n_layer=3)
    banded = make(prompt_kind, rtg, n_layer=3, attention="banded", train_len=2 * K)
    banded.load_state_dict(window.state_dict())
    return window, banded


def prompt_for(prompt_kind: str, T: int = 5) -> torch.Tensor | None:
    if prompt_kind == "none":
        return None
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, T if prompt_kind == "encoder" else 3 * T, 32, generator=g)


@pytest.mark.parametrize("prompt_kind,rtg", BANDED)
def test_incremental_decoding_equals_the_full_banded_forward(prompt_kind, rtg):
    """The rolling cache computes, step by step, the banded function of the whole episode."""
    _, model = banded_pair(prompt_kind, rtg)
    T = 4 * K  # the band slides: the cache drops tokens from step K on
    h, prompt = history(T), prompt_for(prompt_kind)
    full = run(model, h, prompt).actions  # (B, T, act)
    state = model.start_decoding(prompt)
    with torch.no_grad():
        for t in range(T):
            step = {k: v[:, max(0, t - 1) : t + 1] for k, v in h.items()}
            action = model.decode_step(state, **{**step, "rtg": step["rtg"] if rtg else None})
            torch.testing.assert_close(action, full[:, t], rtol=1e-5, atol=1e-5)
    n = model.tokens_per_step
    # Memory stays bounded: the prompt, and a ring holding the (K + 1) * n newest history
    # positions up to state T-1 (action T-1 is not known yet).
    P = 0 if prompt is None else prompt.shape[1]
    assert state.cache.k[0].shape[2] == P + (K + 1) * n
    assert sorted(state.pos.tolist()) == list(range((T - K - 1) * n - 1, T * n - 1))


@pytest.mark.parametrize("banded", [False, True])
def test_last_layer_computes_only_the_rows_asked_for(banded):
    """``out_rows`` skips outputs no one reads, without changing the ones kept."""
    from cmt.models.gpt import GPT

    torch.manual_seed(0)
    gpt = GPT(3, 32, 2, 0.0).eval()
    x = torch.randn(B, 12, 32)
    mask = torch.rand(12, 12) > 0.3 if banded else None
    if mask is not None:
        mask |= torch.eye(12, dtype=torch.bool)  # every query sees at least itself
    full = gpt(x, mask)
    for rows in (slice(-1, None), slice(4, 9), slice(0, 12, 3)):
        torch.testing.assert_close(gpt(x, mask, out_rows=rows), full[:, rows])


@pytest.mark.parametrize("prompt_kind,rtg", BANDED)
def test_banded_equals_causal_within_k_steps_and_differs_beyond(prompt_kind, rtg):
    window, banded = banded_pair(prompt_kind, rtg)
    prompt = prompt_for(prompt_kind)
    h = history(K)
    torch.testing.assert_close(run(banded, h, prompt).actions, run(window, h, prompt).actions)
    h = history(2 * K)
    a_band, a_causal = run(banded, h, prompt).actions, run(window, h, prompt).actions
    torch.testing.assert_close(a_band[:, :K], a_causal[:, :K])
    assert not torch.allclose(a_band[:, K:], a_causal[:, K:])


def test_banded_token_does_not_see_steps_before_its_band():
    """One layer: the action at step t depends on steps t-K+1..t and the prompt only."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layer=1, context_len=K, attention="banded", train_len=3 * K)
    model = SequencePolicy(cfg, OBS, ACT).eval()
    h, prompt = history(3 * K), torch.randn(B, 5, 32)
    base = run(model, h, prompt).actions
    t = 2 * K
    changed = {k: v.clone() for k, v in h.items()}
    changed["states"][:, : t - K + 1] += 5.0
    out = run(model, changed, prompt).actions
    torch.testing.assert_close(out[:, t], base[:, t])
    assert not torch.allclose(out[:, t - 1], base[:, t - 1])


def test_banded_config_needs_segments_at_least_the_band():
    with pytest.raises(ValueError, match="train_len=4 is shorter than context_len=6"):
        ModelConfig(context_len=6, attention="banded", train_len=4)
    assert ModelConfig(context_len=6, attention="banded", train_len=9).sample_len == 9
    assert ModelConfig(context_len=6, train_len=9).sample_len == 6
    assert ModelConfig(context_len=6, attention="banded").sample_len == 6  # default L = K


def test_decoding_needs_a_banded_model():
    with pytest.raises(ValueError, match="attention='banded'"):
        make().start_decoding(None)


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

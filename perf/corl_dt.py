"""An independent re-implementation of CORL's Decision Transformer model and training step,
the reference for training speed (perf/train_step.py, perf/gpu_pretrain.py).

Written from a reading of CORL's ``algorithms/offline/dt.py`` (github.com/tinkoff-ai/CORL,
commit 2c308c8), not copied from it; what matters for speed is kept as there:

- tokens (R_t, s_t, a_t) per step, each plus a learned timestep embedding, then LayerNorm and
  embedding dropout over the interleaved sequence (B, 3K, d);
- pre-LayerNorm blocks built on ``nn.MultiheadAttention`` (attention dropout inside it) with a
  boolean causal mask *and* a key-padding mask, residual dropout after attention and the MLP;
- a final LayerNorm, a tanh action head on state tokens;
- the step: masked MSE on actions, ``zero_grad``, backward, gradient clipping to 0.25, AdamW
  (betas 0.9/0.999, weight decay 1e-4 on every parameter), a LambdaLR warm-up step.

Defaults are CORL's D4RL configuration: 3 layers, width 128, 1 head, K = 20, dropout 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CorlBlock(nn.Module):
    def __init__(self, tokens: int, d: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_head, dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout)
        )
        # True = may not attend (nn.MultiheadAttention's convention).
        self.register_buffer("future", ~torch.ones(tokens, tokens, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        T = x.shape[1]
        h = self.ln1(x)
        a = self.attn(
            h, h, h, attn_mask=self.future[:T, :T], key_padding_mask=pad, need_weights=False
        )[0]
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x))


class CorlDT(nn.Module):
    """CORL's Decision Transformer: (B, K, ...) history -> (B, K, act) actions."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        context_len: int = 20,
        episode_len: int = 1000,
        d: int = 128,
        n_layer: int = 3,
        n_head: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.d = d
        self.time = nn.Embedding(episode_len + context_len, d)
        self.state, self.action, self.ret = (
            nn.Linear(obs_dim, d),
            nn.Linear(act_dim, d),
            nn.Linear(1, d),
        )
        self.ln_in, self.drop_in, self.ln_out = (
            nn.LayerNorm(d),
            nn.Dropout(dropout),
            nn.LayerNorm(d),
        )
        self.blocks = nn.ModuleList(
            CorlBlock(3 * context_len, d, n_head, dropout) for _ in range(n_layer)
        )
        self.head = nn.Sequential(nn.Linear(d, act_dim), nn.Tanh())
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, states, actions, rtg, timesteps, pad: torch.Tensor | None = None):
        B, K, _ = states.shape
        t = self.time(timesteps)  # (B, K, d)
        tokens = [self.ret(rtg.unsqueeze(-1)) + t, self.state(states) + t, self.action(actions) + t]
        x = torch.stack(tokens, dim=2).reshape(B, 3 * K, self.d)  # (B, 3K, d): R, s, a, R, ...
        if pad is not None:
            pad = pad.repeat_interleave(3, dim=1)  # (B, 3K)
        x = self.drop_in(self.ln_in(x))
        for block in self.blocks:
            x = block(x, pad)
        return self.head(self.ln_out(x)[:, 1::3])  # (B, K, act) from state tokens


def corl_step_fn(model: CorlDT, warmup_steps: int = 10_000):
    """CORL's training step on a pre-built batch (states, actions, rtg, timesteps, mask)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup_steps, 1))

    def step(states, actions, rtg, timesteps, mask) -> torch.Tensor:
        pred = model(states, actions, rtg, timesteps, ~mask)
        loss = (F.mse_loss(pred, actions, reduction="none") * mask.unsqueeze(-1)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        sched.step()
        return loss

    return step

"""Context encoder E: a set of transitions of one task -> m prompt vectors (docs/method.md)."""

from __future__ import annotations

import torch
from torch import nn

from cmt.models.gpt import MLP, Block
from cmt.models.ops import attention


class ContextEncoder(nn.Module):
    """Per-transition MLP, a bidirectional set transformer, then m learned queries that
    cross-attend to the set. No positional information anywhere, so E is a set function."""

    def __init__(
        self,
        feat_dim: int,
        d_model: int,
        prompt_len: int,
        n_layer: int,
        n_head: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Linear(feat_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, dropout, causal=False) for _ in range(n_layer)
        )
        self.queries = nn.Parameter(torch.randn(prompt_len, d_model) * 0.02)
        self.ln_q, self.ln_kv = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)
        self.ln_out = nn.LayerNorm(d_model)
        self.n_head = n_head

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """(B, C, F) transitions -> (B, m, d) prompt."""
        x = self.embed(context)  # (B, C, d)
        for block in self.blocks:
            x = block(x)
        B, C, d = x.shape
        m, nh = self.queries.shape[0], self.n_head
        q = self.q(self.ln_q(self.queries)).expand(B, m, d)  # (B, m, d)
        k, v = self.kv(self.ln_kv(x)).split(d, dim=2)  # 2 x (B, C, d)
        q = q.reshape(B, m, nh, d // nh).transpose(1, 2)  # (B, nh, m, hs)
        k, v = (t.view(B, C, nh, d // nh).transpose(1, 2) for t in (k, v))  # (B, nh, C, hs)
        y = attention(q, k, v, causal=False, dropout=0.0).transpose(1, 2).reshape(B, m, d)
        y = self.queries + self.proj(y)  # (B, m, d)
        y = y + self.mlp(self.ln_mlp(y))
        return self.ln_out(y)

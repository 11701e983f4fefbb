"""A small pre-LayerNorm GPT (after nanoGPT), with an optional bidirectional mode, an
optional attention mask, and a key/value cache for incremental decoding."""

from __future__ import annotations

import math

import torch
from torch import nn

from cmt.models.ops import Dropout, attention


class KVCache:
    """Keys and values of earlier tokens, per layer, for incremental decoding.

    Preallocated ring buffers of ``size`` slots per layer (allocated at the first write, when
    batch, heads and dtype are known): each forward through the cache writes its tokens' keys
    and values into the slots ``at`` names, and its queries read every slot, so the caller's
    mask says which slots hold keys they may see. Writing in place instead of concatenating
    and re-indexing saves two copies of the whole cache per layer and step."""

    def __init__(self, n_layer: int, size: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.size = size
        self.at = torch.zeros(0, dtype=torch.long)  # (T,) slots of the next forward's tokens

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new (B, nh, T, hs) keys and values at slots ``at``; returns all slots."""
        if self.k[layer] is None:
            shape = (*k.shape[:2], self.size, k.shape[3])
            self.k[layer] = k.new_zeros(shape)  # (B, nh, size, hs)
            self.v[layer] = v.new_zeros(shape)
        ck, cv = self.k[layer], self.v[layer]
        assert ck is not None and cv is not None
        ck.index_copy_(2, self.at, k.to(ck.dtype))
        cv.index_copy_(2, self.at, v.to(cv.dtype))
        return ck, cv


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.n_head, self.dropout, self.causal = n_head, dropout, causal
        self.resid_drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``rows``, only those tokens query: (B, T_rows, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, nh, Tk, hs): every slot of the cache
        if rows is not None:
            if mask is None:  # the causal mask, explicit before some queries are dropped
                Tk = k.shape[2]
                mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
            q, mask = q[:, :, rows], mask[rows]  # (B, nh, Tq, hs), (Tq, Tk)
        y = attention(
            q, k, v, self.causal, self.dropout if self.training else 0.0, mask
        )  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).reshape(B, q.shape[2], C)  # (B, Tq, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.act = nn.GELU()
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, causal: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_head, dropout, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        rows: slice | None = None,
    ) -> torch.Tensor:
        y = self.attn(self.ln1(x), mask, cache, layer, rows)
        x = (x if rows is None else x[:, rows]) + y
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Causal transformer over token embeddings: (B, T, d) -> (B, T, d).

    ``mask`` (T, Tk) bool replaces the causal mask; with ``cache``, the T tokens attend to
    the cache's slots too (their keys and values are written there first). ``out_rows``
    keeps only those tokens' outputs: the last layer then runs its attention queries, output
    projection and MLP for them alone (every layer's keys and values need all tokens)."""

    def __init__(self, n_layer: int, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        out_rows: slice | None = None,
    ) -> torch.Tensor:
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i, out_rows if i == last else None)
        return self.ln_f(x)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation; residual projections scaled by 1/sqrt(2 * n_layer) (nanoGPT)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)

"""A small pre-LayerNorm GPT (after nanoGPT), with an optional bidirectional mode, an
optional attention mask, and a key/value cache for incremental decoding."""

from __future__ import annotations

import math

import torch
from torch import nn

from cmt.models.ops import Dropout, attention


class KVCache:
    """Keys and values of earlier tokens, per layer, for incremental decoding.

    Each forward through the cache appends its tokens' keys and values; :meth:`keep` drops
    tokens no later query may attend to (the rolling window of a banded mask)."""

    def __init__(self, n_layer: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new (B, nh, T, hs) keys and values; returns all cached ones, new last."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)  # (B, nh, T_old + T, hs)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the cached tokens at positions ``index`` (1-D, into the token axis)."""
        for i, (k, v) in enumerate(zip(self.k, self.v, strict=True)):
            if k is not None:
                self.k[i], self.v[i] = k[:, :, index], v[:, :, index]

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


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
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, nh, Tk, hs): cached tokens, then these
        y = attention(
            q, k, v, self.causal, self.dropout if self.training else 0.0, mask
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
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
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Causal transformer over token embeddings: (B, T, d) -> (B, T, d).

    ``mask`` (T, Tk) bool replaces the causal mask; with ``cache``, the T tokens attend to
    the cached ones too (Tk = cached + T) and their keys and values join the cache."""

    def __init__(self, n_layer: int, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        return self.ln_f(x)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation; residual projections scaled by 1/sqrt(2 * n_layer) (nanoGPT)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)

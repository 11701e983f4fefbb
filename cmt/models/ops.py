"""Attention and dropout tuned per device (measured in perf/throughput.py).

On a 2-core CPU, PyTorch's flash-attention kernel is 2.6x slower than plain batched
matmuls at our sequence lengths (~60 tokens), and ``F.dropout`` spends most of its time
drawing one Philox number per element. On CUDA the stock kernels are the fast ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_INT16_SPAN = 1 << 16


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    dropout: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, nh, T, hs) tensors.

    ``mask`` (Tq, Tk) bool, True where a query may attend, replaces the causal mask."""
    if q.is_cuda:
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
    att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, nh, Tq, Tk)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    elif causal:
        Tq, Tk = att.shape[-2:]
        keep = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        att = att.masked_fill(~keep, float("-inf"))
    att = dropout_(att.softmax(-1).to(v.dtype), dropout)
    return att @ v  # (B, nh, Tq, hs)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(1 - p) mask from 16-bit slices of 64-bit random words: 4 masks per draw.

    The drop probability is rounded to a multiple of 1/65536 (0.1 -> 0.100006)."""
    n = 1
    for s in shape:
        n *= s
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    threshold = -(_INT16_SPAN // 2) + round(p * _INT16_SPAN)
    return (words.view(torch.int16)[:n] >= threshold).view(shape)


def dropout_(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout; callers pass p=0 outside training."""
    if p <= 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, training=True)
    return x * (keep_mask(x.shape, p, x.device).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(torch.nn.Module):
    """Drop-in for ``nn.Dropout`` that uses :func:`dropout_`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout_(x, self.p if self.training else 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"

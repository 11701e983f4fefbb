"""Action heads: how a hidden state becomes an action, its training error, and a choice.

Continuous actions (MuJoCo) are tanh-squashed regression; discrete actions (SMAX) are logits
whose unavailable entries are masked out (docs/method.md, "Action heads"). Discrete actions
travel through the rest of the code as one-hot vectors, so the action embedding (a linear map
of a one-hot vector is an embedding lookup), the context encoder's transition features and the
batch builder are the same for both kinds; only this module knows the difference.

Both heads are ``nn.Linear`` subclasses, so a checkpoint's ``action_head.weight`` keys and
the initialisation order are those of the plain linear layer they replaced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ActionHead(nn.Linear):
    """What every action head provides beyond its linear map."""

    discrete: bool

    def error(
        self, pred: torch.Tensor, target: torch.Tensor, avail: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-step training error of predictions against targets: (B, K, act) -> (B, K)."""
        raise NotImplementedError

    def choose(self, pred: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        """The action to take from one step's prediction: (B, act) -> (B, act)."""
        raise NotImplementedError


class TanhHead(ActionHead):
    """Continuous actions in [-1, 1]: ``tanh(W h)``, trained by mean squared error."""

    discrete = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(h))  # (..., act)

    def error(
        self, pred: torch.Tensor, target: torch.Tensor, avail: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-step squared error, mean over action dims: (B, K, act) -> (B, K)."""
        return (pred.float() - target).pow(2).mean(-1)

    def choose(self, pred: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        """The action to take from one step's prediction (B, act)."""
        return pred.float()


class MaskedLogitsHead(ActionHead):
    """Discrete actions: logits over ``act_dim`` actions, unavailable ones masked out;
    trained by cross-entropy against the one-hot target, acted on by masked argmax."""

    discrete = True

    @staticmethod
    def mask(logits: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        """Logits with unavailable actions at the dtype's lowest value (not -inf, so a step
        whose mask is all False, which only padding has, stays finite)."""
        if avail is None:
            return logits
        return logits.masked_fill(~avail, torch.finfo(logits.dtype).min)

    def error(
        self, pred: torch.Tensor, target: torch.Tensor, avail: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-step cross-entropy of the masked logits: (B, K, n) -> (B, K)."""
        logits = self.mask(pred.float(), avail)  # (B, K, n)
        B, K, n = logits.shape
        labels = target.argmax(-1)  # (B, K) the one-hot target's action
        return F.cross_entropy(
            logits.reshape(B * K, n), labels.reshape(B * K), reduction="none"
        ).view(B, K)

    def choose(self, pred: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        """One-hot of the best available action: (B, n) logits -> (B, n)."""
        best = self.mask(pred.float(), avail).argmax(-1)  # (B,)
        return F.one_hot(best, pred.shape[-1]).float()


def make_action_head(d_model: int, act_dim: int, discrete: bool) -> ActionHead:
    return (MaskedLogitsHead if discrete else TanhHead)(d_model, act_dim)

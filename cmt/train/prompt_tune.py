"""Per-task prompt tuning with backbone and encoder frozen (docs/method.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from cmt.data.dataset import Normalizer, OfflineDataset, PromptData
from cmt.data.sampler import Batch, SegmentSampler
from cmt.integrity import NonFiniteError
from cmt.models.policy import SequencePolicy
from cmt.sections import PromptTuneConfig
from cmt.train.pretrain import MetricsCallback, masked_mean

VAL_SEGMENTS = 256  # fixed validation batch size: enough windows to make early stopping stable


@dataclass
class TuneResult:
    prompt: torch.Tensor  # (P, d) best prompt on the validation split
    val_loss_init: float  # held-out action loss of the initial (zero-shot) prompt
    val_loss_best: float
    best_step: int
    steps_run: int
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, train, val


def action_loss(
    model: SequencePolicy,
    batch: Batch,
    prompt: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked action error (MSE, or cross-entropy for discrete actions) with one prompt
    (P, d) shared by the whole batch."""
    B = batch.states.shape[0]
    out = model.forward_batch(batch, prompt.unsqueeze(0).expand(B, -1, -1))
    per_step = model.action_error(out, batch)  # (B, K)
    if weights is not None:
        per_step = per_step * weights[:, None]
    return masked_mean(per_step, batch.mask)


def return_weights(batch: Batch, ds: OfflineDataset, beta: float) -> torch.Tensor:
    """exp(beta * normalised episode return), normalised to mean 1 over the batch."""
    lo, hi = float(ds.ep_return.min()), float(ds.ep_return.max())
    z = (batch.ep_return - lo) / max(hi - lo, 1e-8)
    w = torch.exp(beta * z)
    return w / w.mean()


def anchor_penalty(prompt: torch.Tensor, init: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * ||prompt - init||² / ||init||²``: the pull toward the initial prompt."""
    scale = init.pow(2).sum().clamp(min=1e-8)
    return weight * (prompt - init).pow(2).sum() / scale


def _prompt_step(
    model: SequencePolicy,
    prompt: torch.nn.Parameter,
    opt: torch.optim.Optimizer,
    batch: Batch,
    weights: torch.Tensor | None,
    step: int,
    anchor: tuple[torch.Tensor, float],
) -> float:
    """One Adam step on the prompt; its action loss. A non-finite loss or gradient stops
    tuning."""
    action = action_loss(model, batch, prompt, weights)
    loss = action + anchor_penalty(prompt, *anchor)
    loss_value = float(action.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad = prompt.grad
    if not (math.isfinite(loss_value) and grad is not None and bool(torch.isfinite(grad).all())):
        raise NonFiniteError(f"prompt tuning: non-finite loss or gradient at step {step}")
    opt.step()
    return loss_value


def tune_prompt(
    model: SequencePolicy,
    norm: Normalizer,
    data: PromptData,
    init_prompt: torch.Tensor,
    cfg: PromptTuneConfig,
    seed: int,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> TuneResult:
    """Optimise only the prompt: the action loss on ``data.fit`` (``filtered_bc``) or on
    ``data.pool`` weighted by episode return (``return_weighted``); early-stop on the held-out
    ``data.val`` episodes; a pull toward the initial prompt (``cfg.anchor``) keeps it near
    what the backbone was trained on."""
    train_ds = data.pool if cfg.objective == "return_weighted" and data.pool else data.fit
    val_ds = data.val
    device = init_prompt.device
    model.eval()  # frozen backbone: no dropout noise in its features either
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(seed)
    train_sampler = SegmentSampler(train_ds, norm, model.cfg.sample_len)
    val_sampler = SegmentSampler(val_ds, norm, model.cfg.sample_len)
    val_batch = val_sampler.sample(VAL_SEGMENTS, np.random.default_rng(seed + 1)).to(device)

    init_p = init_prompt.detach().clone()
    prompt = torch.nn.Parameter(init_p.clone())
    opt = torch.optim.Adam([prompt], lr=cfg.lr)

    def val_loss() -> float:
        with torch.no_grad():
            return float(action_loss(model, val_batch, prompt))

    best = init = val_loss()
    best_prompt, best_step, stale, step = prompt.detach().clone(), 0, 0, 0
    history = [(0, float("nan"), init)]
    bar = tqdm(range(1, cfg.steps + 1), desc="prompt-tune", disable=not progress, leave=False)
    for step in bar:
        batch = train_sampler.sample(cfg.batch_size, rng).to(device)
        weighted = cfg.objective == "return_weighted"
        w = return_weights(batch, train_ds, cfg.beta) if weighted else None
        loss_value = _prompt_step(model, prompt, opt, batch, w, step, (init_p, cfg.anchor))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            v = val_loss()
            history.append((step, loss_value, v))
            if on_metrics is not None:
                on_metrics(step, {"tune/train_loss": loss_value, "tune/val_loss": v})
            bar.set_postfix(val=f"{v:.4f}")
            if v < best:
                best, best_prompt, best_step, stale = v, prompt.detach().clone(), step, 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    bar.close()
    return TuneResult(best_prompt, init, best, best_step, step, history)

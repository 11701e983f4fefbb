"""Self-supervised pretraining on all training tasks (docs/method.md), resumable."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cmt.checkpoint import CheckpointError, atomic_torch_save, policy_state, safe_load, save_policy
from cmt.config import ModelConfig, PretrainConfig
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.sampler import Batch, SegmentSampler
from cmt.device import autocast, pick_device
from cmt.integrity import NonFiniteError
from cmt.models.policy import SequencePolicy
from cmt.seeding import seed_everything

MetricsCallback = Callable[[int, dict[str, float]], None]
RESUME_FILES = ("last.pt", "prev.pt")  # newest first: a corrupt newest falls back to the other


def make_sampler(
    ds: OfflineDataset, norm: Normalizer, mcfg: ModelConfig, pcfg: PretrainConfig
) -> SegmentSampler:
    """The sampler a model's prompt mode needs: context set, raw segment, or nothing."""
    kind = {"encoder": "set", "segment": "segment", "none": "none"}[mcfg.prompt]
    return SegmentSampler(
        ds,
        norm,
        mcfg.context_len,
        context=kind,
        context_size=mcfg.context_size,
        segment_len=mcfg.segment_len,
        source=pcfg.context_source,
        contrastive=mcfg.prompt == "encoder" and pcfg.w_con > 0,
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-step values x (B, K) over real steps only."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, unit: torch.Tensor, tau: float) -> torch.Tensor:
    """Contexts of the same unit are positives; other units in the batch are negatives.

    Off-diagonal pairs that share a unit are removed from the denominator rather than
    counted as negatives (they are not)."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / tau  # (B, B)
    same = unit[:, None] == unit[None, :]
    eye = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(unit), device=unit.device))


def pretrain_loss(
    model: SequencePolicy, batch: Batch, cfg: PretrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_action + w_dyn (L_next_state + L_reward) + w_con InfoNCE (docs/method.md)."""
    prompt = model.batch_prompt(batch)
    out = model.forward_batch(batch, prompt)
    l_act = masked_mean((out.actions.float() - batch.actions).pow(2).mean(-1), batch.mask)
    terms = {"action": l_act}
    loss = l_act
    if out.next_states is not None and cfg.w_dyn > 0:
        terms["next_state"] = masked_mean(
            (out.next_states.float() - batch.next_states).pow(2).mean(-1), batch.mask
        )
        terms["reward"] = masked_mean((out.rewards.float() - batch.rewards).pow(2), batch.mask)
        loss = loss + cfg.w_dyn * (terms["next_state"] + terms["reward"])
    if batch.context2 is not None and cfg.w_con > 0:
        # The second view is a fixed key, as in MoCo: no backward through it, which saves
        # a fifth of the step's FLOPs; the gradient still shapes E through the first view.
        with torch.no_grad():
            z2 = model.prompt_from_context(batch.context2)
        terms["contrastive"] = info_nce(prompt.mean(1), z2.mean(1), batch.unit, cfg.temperature)
        loss = loss + cfg.w_con * terms["contrastive"]
    terms["total"] = loss
    return loss, terms


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak rate."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    ds: OfflineDataset,
    mcfg: ModelConfig,
    pcfg: PretrainConfig,
    out_dir: str | Path,
    seed: int,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> Path:
    """Pretrain a policy on ``ds``; writes ``out_dir/model.pt`` and returns its path.

    ``out_dir/last.pt`` holds a resumable state every ``checkpoint_every`` steps (and
    ``prev.pt`` the one before); a rerun with the same configuration and seed continues from
    the newest one that loads, replaying its logged metrics to ``on_metrics`` first, so the
    learning curve keeps the steps before the resume point.

    Raises :class:`~cmt.integrity.NonFiniteError` naming the first step whose loss or gradient
    norm is not finite, before anything is saved from that state.
    """
    out_dir = Path(out_dir)
    device = pick_device(pcfg.device)
    seed_everything(seed)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    model = SequencePolicy(mcfg, ds.data.obs_dim, ds.data.act_dim).to(device)
    opt = torch.optim.AdamW(
        model.optimizer_groups(pcfg.weight_decay),
        lr=pcfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, pcfg))
    rng = np.random.default_rng(seed)
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    fingerprint = json.dumps(
        {
            "model": mcfg.model_dump(),
            "pretrain": pcfg.model_dump(exclude={"device"}),
            "seed": seed,
            "n": len(ds),
            "return_sum": float(ds.ep_return.sum()),
        },
        sort_keys=True,
    )
    start, history = _maybe_resume(out_dir, fingerprint, model, opt, sched, rng)
    if pcfg.compile:
        # In place, so that the losses' calls through batch_prompt/forward_batch reach the
        # compiled forward, and state_dict keys stay those of the plain module.
        model.compile()
    meta = {"seed": seed, "steps": pcfg.steps, "pretrain": pcfg.model_dump()}

    for step, metrics in history:
        if on_metrics is not None:
            on_metrics(step, metrics)
    # First step with a non-finite loss or gradient norm, kept on the device so that the loop
    # does not wait for the accelerator every step; read where the loop syncs anyway.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def check_finite() -> None:
        bad = int(first_bad)
        if bad >= 0:
            raise NonFiniteError(
                f"pretraining: non-finite loss or gradient norm at step {bad} "
                f"(lr {sched.get_last_lr()[0]:.3g}); nothing was saved from this state"
            )

    model.train()
    bar = tqdm(
        range(start, pcfg.steps),
        desc="pretrain",
        disable=not progress,
        initial=start,
        total=pcfg.steps,
    )
    for step in bar:
        batch = sampler.sample(pcfg.batch_size, rng).to(device)
        with autocast(device, pcfg.bf16):
            loss, terms = pretrain_loss(model, batch, pcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), pcfg.grad_clip)
        finite = torch.isfinite(loss.detach().float() + grad_norm.float())
        first_bad = torch.where(finite | (first_bad >= 0), first_bad, step)
        opt.step()
        sched.step()
        if step % pcfg.log_every == 0 or step == pcfg.steps - 1:
            check_finite()
            metrics = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
            metrics["train/lr"] = sched.get_last_lr()[0]
            metrics["train/grad_norm"] = float(grad_norm)
            bar.set_postfix(loss=f"{metrics['train/total']:.4f}")
            history.append((step, metrics))
            if on_metrics is not None:
                on_metrics(step, metrics)
        if (step + 1) % pcfg.checkpoint_every == 0 and step + 1 < pcfg.steps:
            check_finite()
            _save_resume(out_dir, fingerprint, step + 1, model, norm, opt, sched, rng, history)
    bar.close()
    check_finite()
    model.eval()
    final = out_dir / "model.pt"
    save_policy(final, model, norm, meta)
    for name in RESUME_FILES:
        (out_dir / name).unlink(missing_ok=True)
    return final


def _save_resume(out_dir, fingerprint, step, model, norm, opt, sched, rng, history) -> None:
    state = policy_state(model, norm, {"fingerprint": fingerprint})
    state.update(
        kind="resume",
        step=step,
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng=json.dumps(rng.bit_generator.state),
        torch_rng=torch.get_rng_state(),
        history=json.dumps(history),
    )
    last, prev = (out_dir / name for name in RESUME_FILES)
    if last.exists():
        os.replace(last, prev)
    atomic_torch_save(state, last)


def _maybe_resume(
    out_dir: Path, fingerprint, model, opt, sched, rng
) -> tuple[int, list[tuple[int, dict[str, float]]]]:
    """Restore the newest usable resume state; returns its step and the metrics logged
    before it (``(0, [])``: start over)."""
    for name in RESUME_FILES:
        path = out_dir / name
        if not path.exists():
            continue
        try:
            state = safe_load(path)
        except CheckpointError as err:
            # A corrupt state must not block every rerun: the one before it is still good.
            warnings.warn(f"{err}; trying an older resume state", stacklevel=3)
            continue
        if json.loads(state["meta"]).get("fingerprint") != fingerprint:
            # A different configuration: its partial state is not ours to continue.
            path.unlink()
            continue
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history = [(int(s), m) for s, m in json.loads(state.get("history", "[]"))]
        return int(state["step"]), history
    return 0, []

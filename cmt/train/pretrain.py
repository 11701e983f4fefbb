"""Self-supervised pretraining on all training tasks (docs/method.md), resumable."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cmt.checkpoint import CheckpointError, atomic_torch_save, policy_state, safe_load, save_policy
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.sampler import Batch, ContextKind, SegmentSampler
from cmt.device import autocast, pick_device
from cmt.integrity import NonFiniteError
from cmt.models.policy import SequencePolicy
from cmt.sections import ModelConfig, PretrainConfig
from cmt.seeding import seed_everything
from cmt.train import distributed

MetricsCallback = Callable[[int, dict[str, float]], None]
RESUME_FILES = ("last.pt", "prev.pt")  # newest first: a corrupt newest falls back to the other


def make_sampler(
    ds: OfflineDataset, norm: Normalizer, mcfg: ModelConfig, pcfg: PretrainConfig
) -> SegmentSampler:
    """The sampler a model's prompt mode needs: context set, raw segment, or nothing."""
    kinds: dict[str, ContextKind] = {"encoder": "set", "segment": "segment", "none": "none"}
    kind = kinds[mcfg.prompt]
    return SegmentSampler(
        ds,
        norm,
        mcfg.sample_len,
        context=kind,
        context_size=mcfg.context_size,
        segment_len=mcfg.segment_len,
        source=pcfg.context_source,
        contrastive=mcfg.prompt == "encoder" and pcfg.w_con > 0,
        demo_fraction=pcfg.demo_fraction,
        own_context_min=pcfg.own_context_min,
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
    l_act = masked_mean(model.action_error(out, batch), batch.mask)
    terms = {"action": l_act}
    loss = l_act
    if out.next_states is not None and out.rewards is not None and cfg.w_dyn > 0:
        terms["next_state"] = masked_mean(
            (out.next_states.float() - batch.next_states).pow(2).mean(-1), batch.mask
        )
        terms["reward"] = masked_mean((out.rewards.float() - batch.rewards).pow(2), batch.mask)
        loss = loss + cfg.w_dyn * (terms["next_state"] + terms["reward"])
    if batch.context2 is not None and prompt is not None and cfg.w_con > 0:
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


class PretrainObjective(torch.nn.Module):
    """:func:`pretrain_loss` as a module: what ``DistributedDataParallel`` wraps, since it
    synchronises gradients only for work done inside a wrapped module's ``forward``."""

    def __init__(self, policy: SequencePolicy, cfg: PretrainConfig) -> None:
        super().__init__()
        self.policy, self.cfg = policy, cfg

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return pretrain_loss(self.policy, batch, self.cfg)


def make_optimizer(
    model: SequencePolicy, pcfg: PretrainConfig, device: torch.device, capturable: bool = False
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused on CUDA: one kernel for all tensors) and the warm-up + cosine schedule.

    ``capturable`` (for :class:`GraphedStep`) keeps the learning rate and step counts in device
    tensors, which a replayed CUDA graph reads; the schedule writes the rate in place."""
    lr: float | torch.Tensor = torch.tensor(pcfg.lr, device=device) if capturable else pcfg.lr
    opt = torch.optim.AdamW(
        model.optimizer_groups(pcfg.weight_decay),
        lr=lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
        capturable=capturable,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, pcfg))
    if capturable:  # plain floats: computing each step's rate then needs no device sync
        sched.base_lrs = [pcfg.lr] * len(opt.param_groups)
    return opt, sched


def train_step(
    objective: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    batch: Batch,
    pcfg: PretrainConfig,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on ``batch`` (already on ``device``); returns the loss terms and the
    gradient norm before clipping, as tensors (reading them would synchronise a GPU)."""
    with autocast(device, pcfg.bf16):
        loss, terms = objective(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), pcfg.grad_clip)
    opt.step()
    sched.step()
    return terms, grad_norm


def _tensors(batch: Batch) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for v in batch.__dict__.values():
        if isinstance(v, dict):
            out.extend(v[k] for k in sorted(v))
        elif v is not None:
            out.append(v)
    return out


class GraphedStep:
    """The whole of :func:`train_step` but the schedule, captured once as a CUDA graph and
    replayed (``pretrain.cuda_graph``).

    At the default size an eager step is mostly kernel launches (16 ms on an H100 for a few ms
    of GPU work, perf/gpu_pretrain.py); a replay launches them all at once. Each batch is
    copied into fixed input tensors. Capture needs warm-up steps first (AdamW creates its state
    lazily); they run on the first batch, after which weights and optimizer state are put back,
    so training starts from the same state as without the graph.
    """

    def __init__(
        self,
        objective: torch.nn.Module,
        opt: torch.optim.Optimizer,
        pcfg: PretrainConfig,
        first: Batch,
    ) -> None:
        self.objective, self.opt, self.pcfg = objective, opt, pcfg
        self.inputs = first  # on the device; replays read these tensors
        params = list(objective.parameters())
        saved = [p.detach().clone() for p in params]
        saved_state = {
            p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)}
            for p, st in opt.state.items()
        }
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for param, s in zip(params, saved, strict=True):
                param.copy_(s)
            for p, st in opt.state.items():
                for k, v in st.items():
                    if not torch.is_tensor(v):
                        continue
                    if p in saved_state:  # resumed: the loaded state
                        v.copy_(saved_state[p][k])
                    else:  # fresh: AdamW's initial state is all zeros
                        v.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms, self.grad_norm = self._step()

    def _step(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # Autocast's weight cache must be off under capture (PyTorch's CUDA graph notes).
        with torch.autocast("cuda", torch.bfloat16, enabled=self.pcfg.bf16, cache_enabled=False):
            loss, terms = self.objective(self.inputs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.objective.parameters(), self.pcfg.grad_clip)
        self.opt.step()
        return terms, grad_norm

    def __call__(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        for dst, src in zip(_tensors(self.inputs), _tensors(batch), strict=True):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.terms, self.grad_norm


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
    learning curve keeps the steps before the resume point. With ``pcfg.distributed`` (under
    ``torchrun``) every process trains on its share of each batch and rank 0 alone writes
    files and reports metrics (:mod:`cmt.train.distributed`).

    Raises :class:`~cmt.integrity.NonFiniteError` naming the first step whose loss or gradient
    norm is not finite, before anything is saved from that state.
    """
    out_dir = Path(out_dir)
    device = pick_device(pcfg.device)
    job = distributed.setup(pcfg.distributed, device.type)
    try:
        return _pretrain(ds, mcfg, pcfg, out_dir, seed, on_metrics, progress, job, device)
    finally:
        distributed.teardown(job)


def _pretrain(ds, mcfg, pcfg, out_dir, seed, on_metrics, progress, job, device) -> Path:
    device = distributed.device_for(job, device)
    if pcfg.batch_size % job.world:
        raise ValueError(
            f"pretrain.batch_size={pcfg.batch_size} does not split over {job.world} processes"
        )
    seed_everything(seed)  # the same initial weights on every rank
    norm = Normalizer.fit(ds.data, ds.ep_return)
    model = SequencePolicy.for_dataset(mcfg, ds).to(device)
    graphed = pcfg.cuda_graph and device.type == "cuda"
    if graphed and (pcfg.compile or job.world > 1):
        raise ValueError("pretrain.cuda_graph cannot be combined with compile or distributed")
    opt, sched = make_optimizer(model, pcfg, device, capturable=graphed)
    # Rank 0 draws exactly what a single process draws; other ranks draw their own batches
    # and dropout masks.
    rng = np.random.default_rng(seed if job.is_main else [seed, job.rank])
    if not job.is_main:
        torch.manual_seed(seed * 1_000_003 + job.rank)
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    fingerprint = _fingerprint(ds, mcfg, pcfg, seed, job)
    start, history = _maybe_resume(out_dir, fingerprint, model, opt, sched, rng, job)
    if start and not job.is_main:
        rng = np.random.default_rng([seed, job.rank, start])
    if pcfg.compile:
        # In place, so that the losses' calls through batch_prompt/forward_batch reach the
        # compiled forward, and state_dict keys stay those of the plain module.
        model.compile()
    for step, metrics in history:
        if on_metrics is not None:
            on_metrics(step, metrics)
    run = _Run(model, norm, opt, sched, sampler, rng, pcfg, job, device, out_dir, fingerprint)
    _train_loop(run, start, history, on_metrics, progress, graphed)
    model.eval()
    final = out_dir / "model.pt"
    if job.is_main:
        save_policy(
            final, model, norm, {"seed": seed, "steps": pcfg.steps, "pretrain": pcfg.model_dump()}
        )
        for name in RESUME_FILES:
            (out_dir / name).unlink(missing_ok=True)
    distributed.barrier(job)  # nobody returns a path before the file is there
    return final


def _fingerprint(ds, mcfg, pcfg, seed, job) -> str:
    """What makes a run this run: a resume state of another fingerprint is not resumed."""
    setup = {
        "model": mcfg.model_dump(),
        # Settings that change only speed or placement do not make a run a different one.
        "pretrain": pcfg.model_dump(exclude={"device", "distributed", "cuda_graph"}),
        "seed": seed,
        "n": len(ds),
        "return_sum": float(ds.ep_return.sum()),
    }
    if job.world > 1:  # other ranks' batches depend on the number of processes
        setup["world_size"] = job.world
    return json.dumps(setup, sort_keys=True)


@dataclass
class _Run:
    """What the training loop works on."""

    model: SequencePolicy
    norm: Normalizer
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: SegmentSampler
    rng: np.random.Generator
    pcfg: PretrainConfig
    job: distributed.Dist
    device: torch.device
    out_dir: Path
    fingerprint: str


def _train_loop(
    run: _Run,
    start: int,
    history: list,
    on_metrics: MetricsCallback | None,
    progress: bool,
    graphed: bool,
) -> None:
    """Steps ``start`` to the end: log every ``log_every``, save a resume state every
    ``checkpoint_every``, and stop at the first non-finite loss or gradient norm."""
    model, opt, sched, pcfg, job, device = (
        run.model,
        run.opt,
        run.sched,
        run.pcfg,
        run.job,
        run.device,
    )
    local_batch = pcfg.batch_size // job.world
    watch = _NonFiniteWatch(device, sched)
    model.train()
    objective: torch.nn.Module = PretrainObjective(model, pcfg)
    if job.world > 1:
        # Broadcasts rank 0's weights, then averages gradients during backward. The graph is
        # the same every step (static), which also covers heads that no loss term reads.
        objective = torch.nn.parallel.DistributedDataParallel(objective, static_graph=True)
    shown = progress and job.is_main
    bar = tqdm(range(start, pcfg.steps), desc="pretrain", disable=not shown, initial=start,
               total=pcfg.steps)  # fmt: skip
    graph: GraphedStep | None = None
    for step in bar:
        batch = run.sampler.sample(local_batch, run.rng)
        if graphed:
            if graph is None:
                graph = GraphedStep(objective, opt, pcfg, batch.to(device))
            terms, grad_norm = graph(batch)
            sched.step()
        else:
            terms, grad_norm = train_step(objective, opt, sched, batch.to(device), pcfg, device)
        watch.update(step, terms["total"], grad_norm)
        if step % pcfg.log_every == 0 or step == pcfg.steps - 1:
            watch.check()
            metrics = _step_metrics(terms, grad_norm, sched, job, device)
            bar.set_postfix(loss=f"{metrics['train/total']:.4f}")
            history.append((step, metrics))
            if on_metrics is not None and job.is_main:
                on_metrics(step, metrics)
        if (step + 1) % pcfg.checkpoint_every == 0 and step + 1 < pcfg.steps:
            watch.check()
            if job.is_main:
                _save_resume(run.out_dir, run.fingerprint, step + 1, model, run.norm, opt, sched,
                             run.rng, history)  # fmt: skip
    bar.close()
    watch.check()


class _NonFiniteWatch:
    """The first step with a non-finite loss or gradient norm, kept on the device so that the
    loop does not wait for the accelerator every step; read where the loop syncs anyway."""

    def __init__(self, device: torch.device, sched: torch.optim.lr_scheduler.LRScheduler):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.sched = sched

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach().float() + grad_norm.float())
        self.first_bad = torch.where(finite | (self.first_bad >= 0), self.first_bad, step)

    def check(self) -> None:
        bad = int(self.first_bad)
        if bad >= 0:
            raise NonFiniteError(
                f"pretraining: non-finite loss or gradient norm at step {bad} "
                f"(lr {self.sched.get_last_lr()[0]:.3g}); nothing was saved from this state"
            )


def _step_metrics(terms, grad_norm, sched, job, device) -> dict[str, float]:
    """The logged metrics of a step: every loss term (averaged over ranks), lr, grad norm."""
    values = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
    metrics = distributed.mean_across(job, values, device)
    metrics["train/lr"] = sched.get_last_lr()[0]
    metrics["train/grad_norm"] = float(grad_norm)
    return metrics


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
    out_dir: Path, fingerprint, model, opt, sched, rng, job
) -> tuple[int, list[tuple[int, dict[str, float]]]]:
    """Restore the newest usable resume state; returns its step and the metrics logged
    before it (``(0, [])``: start over). Every rank reads it (a shared directory)."""
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
        distributed.barrier(job)  # rank 0 may unlink a stale file below only after all read it
        if json.loads(state["meta"]).get("fingerprint") != fingerprint:
            # A different configuration: its partial state is not ours to continue.
            if job.is_main:
                path.unlink()
            continue
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if job.is_main:  # the file holds rank 0's random streams; the caller reseeds the others
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
        history = [(int(s), m) for s, m in json.loads(state.get("history", "[]"))]
        return int(state["step"]), history
    return 0, []

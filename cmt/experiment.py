"""The steps of an experiment, as plain library functions with paths in and paths out.

The ``cmt compare`` command chains them in one process; the pipeline runs each as its own
stage. Nothing here touches Prefect or MLflow: callers pass an ``on_metrics`` callback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmt.benchmarks import Benchmark, Data, PromptData, make_benchmark
from cmt.checkpoint import load_policy, load_prompt, save_prompt
from cmt.config import BackboneName, Params
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.sampler import segment_tensors, transition_features
from cmt.methods import BACKBONES, backbone_config, get_method
from cmt.models.policy import SequencePolicy
from cmt.train.pretrain import MetricsCallback, pretrain
from cmt.train.prompt_tune import tune_prompt


def load_data(params: Params, data_dir: str | Path) -> Data:
    """The benchmark's dataset directory, read and validated."""
    return make_benchmark(params.data).load(data_dir)


def task_seed(seed: int, task: int) -> int:
    """A distinct, reproducible seed per (training seed, task)."""
    return seed * 10_007 + task


def pretrain_backbone(
    params: Params,
    backbone: BackboneName,
    seed: int,
    data: Data,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> Path:
    """Pretrain one backbone on the training data (filtered BC: on its best episodes);
    returns the checkpoint path."""
    mcfg = backbone_config(params.model, backbone)
    train = top_episodes(data.train, BACKBONES[backbone].data_fraction)
    return pretrain(train, mcfg, params.pretrain, out_dir, seed, on_metrics, progress)


def top_episodes(ds: OfflineDataset, fraction: float) -> OfflineDataset:
    """The ``fraction`` highest-return episodes of ``ds`` (all of it for 1.0), in order."""
    return ds if fraction >= 1.0 else ds.select_episodes(ds.top_episodes(fraction))


def prompt_data(params: Params, bench: Benchmark, data: Data, task: int, seed: int) -> PromptData:
    """A task's prompt data, split into fitting and validation episodes; the same split is
    used for the zero-shot context, the Prompt-DT segment and prompt tuning, so validation
    episodes are never seen by any prompt."""
    return bench.prompt_data(data, task, params.prompt_tune.val_fraction, task_seed(seed, task))


def initial_prompt(
    model: SequencePolicy, norm: Normalizer, target: OfflineDataset, seed: int
) -> torch.Tensor:
    """A task's prompt from its demonstration episodes, without any tuning: (P, d)."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    with torch.no_grad():
        if model.cfg.prompt == "encoder":
            idx = rng.integers(0, len(target), size=model.cfg.context_size)
            ctx = torch.from_numpy(transition_features(target, norm, idx))[None].to(device)
            return model.prompt_from_context(ctx)[0]
        if model.cfg.prompt == "segment":
            # A random window of K* consecutive steps from one demonstration (as Prompt-DT).
            ep = int(rng.integers(target.num_episodes))
            L, S = int(target.ep_len[ep]), model.cfg.segment_len
            w = int(rng.integers(max(1, L - S + 1)))
            idx = target.ep_start[ep] + np.minimum(w + np.arange(S), L - 1)
            seg = {k: v[None].to(device) for k, v in segment_tensors(target, norm, idx).items()}
            return model.prompt_from_segment(seg)[0]
    raise ValueError("model has no prompt")


def make_prompts(
    params: Params,
    method_name: str,
    checkpoint: str | Path,
    data: Data,
    seed: int,
    out_dir: str | Path | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
    tasks: tuple[int, ...] | None = None,
) -> dict[int, dict[str, Any]]:
    """Prompt of every evaluated task (or of ``tasks``) for a method; tuned prompts are saved
    to ``out_dir``.

    Returns ``{task: {"prompt": (P, d) tensor or None, **stats}}``; tuning stats include its
    wall time in seconds (kept out of the prompt file, which stays byte-reproducible).
    """
    bench = make_benchmark(params.data)
    method = get_method(method_name)
    model, norm, _ = load_policy(checkpoint)
    out: dict[int, dict[str, Any]] = {}
    for task in bench.eval_tasks if tasks is None else tasks:
        if model.cfg.prompt == "none":
            out[task] = {"prompt": None}
            continue
        pdata = prompt_data(params, bench, data, task, seed)
        prompt = initial_prompt(model, norm, pdata.fit, task_seed(seed, task))
        if not method.tuned:
            out[task] = {"prompt": prompt}
            continue
        start = time.perf_counter()
        result = tune_prompt(
            model,
            norm,
            pdata,
            prompt,
            params.prompt_tune,
            task_seed(seed, task),
            on_metrics=None if on_metrics is None else _prefixed(on_metrics, f"task_{task}/"),
            progress=progress,
        )
        stats = {
            "val_loss_zero_shot": result.val_loss_init,
            "val_loss_tuned": result.val_loss_best,
            "best_step": result.best_step,
            "steps_run": result.steps_run,
        }
        if out_dir is not None:
            save_prompt(
                Path(out_dir) / f"task_{task}.pt",
                result.prompt,
                {"task": task, "seed": seed, "method": method_name, **stats},
            )
        out[task] = {"prompt": result.prompt, **stats, "seconds": time.perf_counter() - start}
    return out


def load_tuned_prompts(prompt_dir: str | Path, tasks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    return {t: load_prompt(Path(prompt_dir) / f"task_{t}.pt")[0] for t in tasks}


def _prefixed(cb: MetricsCallback, prefix: str) -> MetricsCallback:
    return lambda step, m: cb(step, {k.replace("/", f"/{prefix}", 1): v for k, v in m.items()})

"""The steps of an experiment, as plain library functions with paths in and paths out.

The ``cmt compare`` command chains them in one process; the pipeline runs each as its own
stage. Nothing here touches Prefect or MLflow: callers pass an ``on_metrics`` callback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmt.checkpoint import load_policy, load_prompt, save_prompt
from cmt.config import Params
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.hdf5 import read_hdf5
from cmt.data.sampler import segment_tensors, transition_features
from cmt.envs.registry import make_family
from cmt.evaluate import evaluate_tasks, normalized_score
from cmt.methods import Backbone, backbone_config, get_method
from cmt.models.policy import SequencePolicy
from cmt.train.pretrain import MetricsCallback, pretrain
from cmt.train.prompt_tune import tune_prompt

TRAIN_FILE, DEMOS_FILE, REFERENCES_FILE = "train.hdf5", "demos.hdf5", "references.json"


@dataclass(frozen=True)
class Data:
    train: OfflineDataset  # training tasks, mixed quality
    demos: OfflineDataset  # few-shot expert demonstrations of the unseen test tasks
    references: dict[int, tuple[float, float]]  # task -> (random, expert) return


def load_data(data_dir: str | Path) -> Data:
    data_dir = Path(data_dir)
    refs = json.loads((data_dir / REFERENCES_FILE).read_text())
    return Data(
        train=OfflineDataset(read_hdf5(data_dir / TRAIN_FILE)),
        demos=OfflineDataset(read_hdf5(data_dir / DEMOS_FILE)),
        references={
            int(k): (float(v["random"]), float(v["expert"])) for k, v in refs.items() if k.isdigit()
        },
    )


def task_seed(seed: int, task: int) -> int:
    """A distinct, reproducible seed per (training seed, task)."""
    return seed * 10_007 + task


def pretrain_backbone(
    params: Params,
    backbone: Backbone,
    seed: int,
    data: Data,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> Path:
    """Pretrain one backbone on the training tasks; returns the checkpoint path."""
    mcfg = backbone_config(params.model, backbone)
    return pretrain(data.train, mcfg, params.pretrain, out_dir, seed, on_metrics, progress)


def demo_split(params: Params, data: Data, task: int, seed: int) -> tuple[OfflineDataset, ...]:
    """(train, validation) episodes of a test task's demonstrations; the same split is used
    for the zero-shot context, the Prompt-DT segment and prompt tuning, so validation
    episodes are never seen by any prompt."""
    target = data.demos.select_tasks([task])
    return target.split_episodes(params.prompt_tune.val_fraction, task_seed(seed, task))


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
) -> dict[int, dict[str, Any]]:
    """Prompt of every test task for a method; tuned prompts are saved to ``out_dir``.

    Returns ``{task: {"prompt": (P, d) tensor or None, **stats}}``.
    """
    method = get_method(method_name)
    model, norm, _ = load_policy(checkpoint)
    out: dict[int, dict[str, Any]] = {}
    for task in params.data.test_tasks:
        if model.cfg.prompt == "none":
            out[task] = {"prompt": None}
            continue
        train_demo, _ = demo_split(params, data, task, seed)
        prompt = initial_prompt(model, norm, train_demo, task_seed(seed, task))
        if not method.tuned:
            out[task] = {"prompt": prompt}
            continue
        result = tune_prompt(
            model,
            norm,
            data.demos.select_tasks([task]),
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
        out[task] = {"prompt": result.prompt, **stats}
    return out


def load_tuned_prompts(prompt_dir: str | Path, tasks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    return {t: load_prompt(Path(prompt_dir) / f"task_{t}.pt")[0] for t in tasks}


def _prefixed(cb: MetricsCallback, prefix: str) -> MetricsCallback:
    return lambda step, m: cb(step, {k.replace("/", f"/{prefix}", 1): v for k, v in m.items()})


def evaluate_method(
    params: Params,
    checkpoint: str | Path,
    prompts: dict[int, torch.Tensor | None],
    data: Data,
    seed: int,
) -> dict[str, Any]:
    """Roll out a backbone with given per-task prompts on the test tasks (all in one batch)."""
    model, norm, _ = load_policy(checkpoint)
    tasks = list(params.data.test_tasks)
    targets = None
    if model.cfg.condition_on_rtg:
        if params.evaluate.target_return == "demo":
            targets = {t: float(data.demos.select_tasks([t]).ep_return.mean()) for t in tasks}
        else:
            targets = dict.fromkeys(tasks, float(data.train.ep_return.max()))
    use_prompts = None if model.cfg.prompt == "none" else {t: prompts[t] for t in tasks}
    returns = evaluate_tasks(
        model,
        norm,
        make_family(params.data),
        tasks,
        params.evaluate.episodes,
        params.evaluate.seed + seed,
        use_prompts,
        targets,
        params.evaluate.bf16,
    )
    per_task = {}
    for t in tasks:
        random, expert = data.references[t]
        score = normalized_score(returns[t], random, expert)
        per_task[t] = {
            "return_mean": float(returns[t].mean()),
            "return_std": float(returns[t].std()),
            "score_mean": float(score.mean()),
            "score_std": float(score.std()),
        }
    return {
        "return_mean": float(np.mean([v["return_mean"] for v in per_task.values()])),
        "score_mean": float(np.mean([v["score_mean"] for v in per_task.values()])),
        "per_task": per_task,
    }

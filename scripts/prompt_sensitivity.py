"""How much the prompt moves a pretrained prompted policy's decisions, on a comparison's
checkpoints (``cmt compare --out DIR``): the same segments of each evaluated task's prompt
data, acted on under different prompts.

    python scripts/prompt_sensitivity.py DIR --backbone cmt --seed 0 [--preset smax_3m]

Prompts: the task's zero-shot prompt E(its demonstrations), its tuned prompt (when the
comparison saved one), another evaluated task's zero-shot prompt (where there are several),
and E(context of the task's worst episodes) (single-task data). Discrete actions: the share
of real steps whose greedy (masked argmax) action differs from the zero-shot prompt's;
continuous actions: the mean absolute change of the action, beside the mean distance to the
data's own actions. ``DIR/prompt_sensitivity_<backbone>_seed<k>.json`` gets the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cmt.atomic import write_json
from cmt.benchmarks import make_benchmark
from cmt.checkpoint import load_policy, load_prompt
from cmt.cli import add_config_options, params_from_args
from cmt.data.sampler import Batch, SegmentSampler
from cmt.experiment import initial_prompt, load_data, prompt_data, task_seed
from cmt.models.policy import SequencePolicy

SEGMENTS = 512


def act(model: SequencePolicy, batch: Batch, prompt: torch.Tensor) -> torch.Tensor:
    """The action each real step would take under ``prompt``: (B, K, act)."""
    B = batch.states.shape[0]
    with torch.no_grad():
        out = model.forward_batch(batch, prompt.unsqueeze(0).expand(B, -1, -1))
    pred = out.actions.float()
    if batch.avail is None:
        return pred
    flat = model.action_head.choose(pred.flatten(0, 1), batch.avail.flatten(0, 1))
    return flat.view_as(pred)


def change(a: torch.Tensor, b: torch.Tensor, batch: Batch) -> float:
    """Share of real steps with another greedy action (discrete), or mean |a - b| (continuous)."""
    m = batch.mask
    if batch.avail is not None:
        return float((a.argmax(-1) != b.argmax(-1))[m].float().mean())
    return float((a - b).abs().mean(-1)[m].mean())


def task_prompts(model, norm, params, bench, data, seed, task, prompt_dir) -> dict:
    """The prompts compared for ``task``."""
    pdata = prompt_data(params, bench, data, task, seed)
    prompts = {"zero_shot": initial_prompt(model, norm, pdata.fit, task_seed(seed, task))}
    tuned = prompt_dir / f"task_{task}.pt"
    if tuned.exists():
        prompts["tuned"] = load_prompt(tuned)[0]
    others = [t for t in bench.eval_tasks if t != task]
    if others:
        other = prompt_data(params, bench, data, others[0], seed)
        prompts["other_task"] = initial_prompt(model, norm, other.fit, task_seed(seed, task))
    else:  # one task: ask for the data's worst behaviour instead
        order = np.argsort(data.train.ep_return, kind="stable")
        n = max(2, len(order) // 10)
        worst = data.train.select_episodes(np.sort(order[:n]))
        prompts["worst_episodes"] = initial_prompt(model, norm, worst, task_seed(seed, task))
    return prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the comparison's --out folder")
    parser.add_argument("--backbone", default="cmt")
    parser.add_argument("--seed", type=int, default=0)
    add_config_options(parser)
    args = parser.parse_args()
    params = params_from_args(args)
    bench = make_benchmark(params.data)
    data = load_data(params, args.out / "data")
    ckpt_dir = args.out / "checkpoints" / f"{args.backbone}_seed{args.seed}"
    model, norm, _ = load_policy(ckpt_dir / "model.pt")
    model.eval()
    result = {}
    for task in bench.eval_tasks:
        prompts = task_prompts(
            model, norm, params, bench, data, args.seed, task, ckpt_dir / "prompts"
        )
        target = bench.prompt_target(data, task)
        sampler = SegmentSampler(target, norm, model.cfg.sample_len)
        batch = sampler.sample(SEGMENTS, np.random.default_rng(args.seed))
        base = act(model, batch, prompts["zero_shot"])
        row = {
            f"vs_{k}": change(base, act(model, batch, p), batch)
            for k, p in prompts.items()
            if k != "zero_shot"
        }
        row["zero_shot_vs_data"] = change(base, batch.actions, batch)
        result[str(task)] = row
        print(task, {k: round(v, 4) for k, v in row.items()})
    write_json(args.out / f"prompt_sensitivity_{args.backbone}_seed{args.seed}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation records: the statistics of a method's episodes on each task, the record of one
method and seed (means over its tasks; ``runs/<method>_seed<k>.json``), and summaries over
seeds. Every mean over tasks is computed here, once.

A record keeps each task's per-episode returns and scores (``returns``, ``scores``) beside
their means, unrounded: JSON writes a float's shortest exact form, so ``np.mean`` of a stored
list gives the stored mean bit for bit, and every table and claim can be recomputed from the
committed records (docs/method.md, "Statistics and verdicts")."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmt.benchmarks import Benchmark, Data, make_benchmark
from cmt.benchmarks.base import Episodes
from cmt.checkpoint import load_policy
from cmt.config import Params
from cmt.evaluation.rollout import evaluate_tasks
from cmt.integrity import read_json
from cmt.methods import METHODS

METRIC_KEYS = ("return_mean", "return_std", "score_mean", "score_std")
"""Statistics of a task's episodes in every record."""
EPISODE_KEYS = ("returns", "scores")
"""Each task's per-episode returns and scores in every record, from which the statistics are
recomputed."""

RECORD_KEYS = ("method", "seed", "return_mean", "score_mean", "per_task")


def task_stats(bench: Benchmark, data: Data, task: int, episodes: Episodes) -> dict[str, Any]:
    """Mean and std of the return and the benchmark's score of ``task``'s episodes, and the
    episodes' own returns and scores. The std is the spread of these episodes (population,
    ddof 0, defined for one episode too); statistics over seeds use the sample std."""
    returns = np.asarray(episodes.returns, dtype=np.float64)  # (E,)
    score = np.asarray(bench.score(data, task, episodes), dtype=np.float64)  # (E,)
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "score_mean": float(score.mean()),
        "score_std": float(score.std()),
        "returns": returns.tolist(),
        "scores": score.tolist(),
    }


def over_tasks(per_task: dict[Any, dict[str, float]]) -> dict[str, Any]:
    """The per-task statistics with their means over tasks."""
    return {
        "return_mean": float(np.mean([v["return_mean"] for v in per_task.values()])),
        "score_mean": float(np.mean([v["score_mean"] for v in per_task.values()])),
        "per_task": per_task,
    }


def seed_record(
    method: str,
    seed: int,
    checkpoint: str | Path,
    per_task: dict[Any, dict[str, float]],
    tuning: dict[Any, dict[str, Any]],
) -> dict[str, Any]:
    """The record of one method and seed, as ``runs/<method>_seed<k>.json`` holds it."""
    return {
        "method": method,
        "seed": seed,
        "checkpoint": str(checkpoint),
        **over_tasks(per_task),
        "tuning": tuning,
    }


def evaluate_method(
    params: Params,
    checkpoint: str | Path,
    prompts: Mapping[int, torch.Tensor | None],
    data: Data,
    seed: int,
    tasks: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Roll out a backbone with given per-task prompts on the evaluated tasks (or ``tasks``),
    all in one batch; returns per-task and mean returns and scores."""
    bench = make_benchmark(params.data)
    model, norm, _ = load_policy(checkpoint)
    task_list = list(bench.eval_tasks if tasks is None else tasks)
    rtg = model.cfg.condition_on_rtg
    targets = target_returns(params, bench, data, task_list) if rtg else None
    use_prompts = None if model.cfg.prompt == "none" else _given(prompts, task_list)
    episodes = evaluate_tasks(
        model,
        norm,
        bench,
        task_list,
        params.evaluate.episodes,
        params.evaluate.seed + seed,
        use_prompts,
        targets,
        params.evaluate.bf16,
    )
    return over_tasks({t: task_stats(bench, data, t, episodes[t]) for t in task_list})


def _given(prompts: Mapping[int, torch.Tensor | None], tasks: list[int]) -> dict[int, torch.Tensor]:
    """The prompt of every task, which a prompted model needs."""
    given = {t: p for t in tasks if (p := prompts[t]) is not None}
    if len(given) != len(tasks):
        missing = sorted(set(tasks) - set(given))
        raise ValueError(f"a prompted model needs a prompt for tasks {missing}")
    return given


def target_returns(
    params: Params, bench: Benchmark, data: Data, tasks: list[int]
) -> dict[int, float]:
    """Return-to-go target of each task for return-conditioned methods."""
    return {t: bench.target_return(data, t, params.evaluate.target_return) for t in tasks}


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """The run records ``out_dir/runs/*.json``, each checked against its content hash."""
    paths = sorted((Path(out_dir) / "runs").glob("*.json"))
    return [read_json(p, required=RECORD_KEYS) for p in paths]


def sample_std(values: np.ndarray) -> float | None:
    """The sample standard deviation (ddof 1) of per-seed values; None for a single seed,
    which has no spread to estimate (tables show "–")."""
    return float(np.std(values, ddof=1)) if values.size > 1 else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; None for one seed) over seeds of the per-seed mean over
    tasks, per method (and the per-task mean score)."""
    summary: dict[str, Any] = {}
    for name in METHODS:
        runs = sorted((r for r in records if r["method"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        scores = np.array([r["score_mean"] for r in runs], dtype=np.float64)
        returns = np.array([r["return_mean"] for r in runs], dtype=np.float64)
        tasks = sorted({int(t) for r in runs for t in r["per_task"]})
        summary[name] = {
            "label": METHODS[name].label,
            "seeds": [r["seed"] for r in runs],
            "score_mean": float(scores.mean()),
            "score_std": sample_std(scores),
            "return_mean": float(returns.mean()),
            "return_std": sample_std(returns),
            "per_task_score": {
                t: float(np.mean([r["per_task"][str(t)]["score_mean"] for r in runs]))
                for t in tasks
            },
        }
    return summary


def per_task_csv(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """Per-task returns and scores (mean over seeds) of every method, for ``dvc plots``;
    ``label`` names the task only where there are several (a single-task dataset has no
    "task 0" to speak of)."""
    lines = ["label,method,task,return_mean,score_mean"]
    several = len({t for r in records for t in r["per_task"]}) > 1
    for method in summary:
        runs = [r for r in records if r["method"] == method]
        for t in sorted({int(t) for r in runs for t in r["per_task"]}):
            ret = float(np.mean([r["per_task"][str(t)]["return_mean"] for r in runs]))
            score = summary[method]["per_task_score"][t]
            label = f"task {t} | {method}" if several else method
            lines.append(f"{label},{method},{t},{ret:.6g},{score:.6g}")
    return "\n".join(lines) + "\n"

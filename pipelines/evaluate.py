"""Stage ``evaluate``: roll out every method, seed and unseen task (one mapped Prefect task
each), write the run records the comparison reads, log the policy as a pyfunc model, register
it and move the ``champion`` / ``challenger`` alias."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, unmapped

from cmt import tracking
from cmt.atomic import write_json, write_text
from cmt.config import Params
from cmt.evaluation.records import EPISODE_KEYS, METRIC_KEYS, seed_record
from cmt.integrity import check_finite, sealed_json
from cmt.methods import get_method
from pipelines import describe
from pipelines.common import (
    dataset_dir,
    eval_tasks,
    run_entry,
    run_stage_flow,
    stage_parser,
    stage_run,
    stage_task,
)
from pipelines.preflight import dataset_files, verify_inputs
from pipelines.runner import make_task_runner


def checkpoint_path(checkpoints: str | Path, method: str, seed: int) -> Path:
    """The checkpoint of the method's backbone for ``seed`` (the layout of dvc.yaml)."""
    return Path(checkpoints) / f"{get_method(method).backbone}_seed{seed}" / "model.pt"


def input_files(params: Params, checkpoints: str, prompts_dir: str) -> list[Path]:
    """Every checkpoint and tuned prompt the stage reads."""
    files: dict[Path, None] = {}
    for method, seed in itertools.product(params.compare.methods, params.compare.seeds):
        files[checkpoint_path(checkpoints, method, seed)] = None
        if get_method(method).tuned:
            for t in eval_tasks(params):
                files[Path(prompts_dir) / f"seed{seed}" / f"task_{t}.pt"] = None
    return list(files)


def method_prompts(
    params: Params,
    method: str,
    checkpoint: Path,
    data: Any,
    seed: int,
    prompts_dir: str | Path,
    tasks: tuple[int, ...],
) -> dict[int, Any]:
    """The method's prompt of each task: tuned ones from the prompt_tune stage's files, the
    others computed from the task's prompt data."""
    from cmt.experiment import load_tuned_prompts, make_prompts

    if get_method(method).tuned:
        return load_tuned_prompts(Path(prompts_dir) / f"seed{seed}", tasks)
    made = make_prompts(params, method, checkpoint, data, seed, progress=False, tasks=tasks)
    return {t: made[t]["prompt"] for t in tasks}


@stage_task(name="evaluate", task_run_name="eval/{method}/seed{seed}/task_{task}")
def evaluate_task(
    params: Params,
    method: str,
    seed: int,
    task: int,
    data_dir: str,
    checkpoints: str,
    prompts_dir: str,
) -> dict[str, Any]:
    """Episodes of one (method, seed, task); returns that task's return and score stats and
    its episodes' returns and scores."""
    from cmt.evaluation.records import evaluate_method
    from cmt.experiment import load_data

    data = load_data(params, data_dir)
    ckpt = checkpoint_path(checkpoints, method, seed)
    prompts = method_prompts(params, method, ckpt, data, seed, prompts_dir, (task,))
    result = evaluate_method(params, ckpt, prompts, data, seed, (task,))
    return {"method": method, "seed": seed, "task": task, **result["per_task"][task]}


def build_records(
    params: Params, results: list[dict[str, Any]], checkpoints: str, prompts_dir: str
) -> list[dict[str, Any]]:
    """One record per (method, seed) in the format of :mod:`cmt.compare` (``runs/*.json``)."""
    from cmt.checkpoint import load_prompt

    records = []
    for method, seed in itertools.product(params.compare.methods, params.compare.seeds):
        rows = [r for r in results if r["method"] == method and r["seed"] == seed]
        per_task = {
            str(r["task"]): {k: r[k] for k in (*METRIC_KEYS, *EPISODE_KEYS)}
            for r in sorted(rows, key=lambda r: r["task"])
        }
        tuning: dict[str, dict[str, Any]] = {}
        if get_method(method).tuned:
            for t in eval_tasks(params):
                _, meta = load_prompt(Path(prompts_dir) / f"seed{seed}" / f"task_{t}.pt")
                tuning[str(t)] = {
                    k: meta[k]
                    for k in ("val_loss_zero_shot", "val_loss_tuned", "best_step", "steps_run")
                    if k in meta
                }
        ckpt = checkpoint_path(checkpoints, method, seed)
        records.append(seed_record(method, seed, ckpt, per_task, tuning))
    return records


@stage_task(name="register policy")
def register_policy(
    params: Params,
    records: list[dict[str, Any]],
    data_dir: str,
    checkpoints: str,
    prompts_dir: str,
    run: tracking.StageRun,
    datasets: list[dict[str, Any]],
) -> tracking.Promotion | None:
    """Log the registered method's best-seed policy (backbone + prompts of every test task)
    as a pyfunc model, register it as a new version and move the alias; describe the model
    and the version (``datasets``: what the run logged as its dataset inputs)."""
    from cmt.benchmarks import make_benchmark
    from cmt.serving import register_version

    cfg = params.tracking
    logger = get_run_logger()
    method = cfg.registered_method
    candidates = [r for r in records if r["method"] == method]
    if not candidates:
        logger.warning("registered method %r is not in compare.methods; nothing registered", method)
        return None
    best = max(candidates, key=lambda r: r[cfg.primary_metric])
    seed, value = best["seed"], float(best[cfg.primary_metric])
    check_finite({cfg.primary_metric: value}, f"registering {method} seed {seed}")
    ckpt = checkpoint_path(checkpoints, method, seed)
    policy = _policy_inputs(params, method, seed, ckpt, data_dir, prompts_dir)
    bench = make_benchmark(params.data)
    tags = {
        "cmt.method": method,
        "cmt.seed": str(seed),
        "cmt.checkpoint": str(ckpt),
        "cmt.pipeline_run_id": run.parent_id,
        **describe.version_tags(bench, best),
        **{key: os.environ[var] for key, var in DVC_TAGS if os.environ.get(var)},
    }
    name = cfg.model_name(params.data.name)
    version, promotion = register_version(run.client, name, policy, tags, cfg.primary_metric, value)
    run.client.update_registered_model(
        name, describe.model_description(bench, method, cfg.primary_metric)
    )
    for key, tag in describe.model_tags(bench, method).items():
        run.client.set_registered_model_tag(name, key, tag)
    run.client.update_model_version(
        name,
        version,
        describe.version_description(bench, best, datasets, promotion, cfg.primary_metric),
    )
    run.set_tags({"cmt.model_version": version, "cmt.model_alias": promotion.alias})
    run.log_metrics({f"registry/{cfg.primary_metric}": value})
    logger.info(
        "registered %s version %s (%s = %.3f, previous champion %s = %s): alias %s",
        *(name, version, cfg.primary_metric, value),
        *(promotion.previous_champion, promotion.previous_value, promotion.alias),
    )
    return promotion


DVC_TAGS = (("dvc.exp_name", "DVC_EXP_NAME"), ("dvc.stage", "DVC_STAGE"))
RECORDS_ARTIFACT = "evaluate/runs"
"""Where an evaluate run keeps its run records (``runs/*.json``) among its artifacts."""


def _policy_inputs(
    params: Params, method: str, seed: int, ckpt: Path, data_dir: str, prompts_dir: str
) -> dict[str, Any]:
    """What the registered policy is made of (``cmt.serving.register_version``): the model,
    the prompt and return target of every evaluated task (as evaluation used them), and an
    input example."""
    from cmt.benchmarks import make_benchmark
    from cmt.checkpoint import load_policy
    from cmt.evaluation.records import target_returns
    from cmt.experiment import load_data
    from cmt.serving import example_row

    bench = make_benchmark(params.data)
    data = load_data(params, data_dir)
    model, _, _ = load_policy(ckpt)
    tasks = bench.eval_tasks
    prompts = method_prompts(params, method, ckpt, data, seed, prompts_dir, tasks)
    targets = None  # the same targets as cmt.evaluation.records.evaluate_method
    if model.cfg.condition_on_rtg:
        targets = target_returns(params, bench, data, list(tasks))
    # Input example: the first step of each task's first prompt-data episode.
    example = pd.DataFrame([example_row(bench.prompt_target(data, t), t) for t in tasks])
    meta = {"method": method, "seed": seed}
    return {"checkpoint": ckpt, "model": model, "prompts": prompts, "targets": targets,
            "example": example, "meta": meta, "tasks": tasks}  # fmt: skip


@flow(name="evaluate", flow_run_name="evaluate")
def evaluate_flow(
    params: Params, data_dir: str, checkpoints: str, prompts_dir: str, out_dir: str
) -> dict[str, Any]:
    """``out_dir``: ``runs/<method>_seed<k>.json``, ``metrics.json``, ``per_task.csv``."""
    from cmt.benchmarks import make_benchmark

    out = Path(out_dir)
    tasks = eval_tasks(params)
    grid = list(itertools.product(params.compare.methods, params.compare.seeds, tasks))
    bench = make_benchmark(params.data)
    # What the report's cross-dataset table needs, without rebuilding the benchmark from MLflow.
    about = {
        "cmt.benchmark_kind": bench.kind,
        "cmt.published": json.dumps(bench.published()),
        "cmt.caption": bench.describe(params.evaluate.episodes),
    }
    with stage_run("evaluate", params, about) as run:
        datasets = run.log_datasets(data_dir, "evaluation")
        futures = evaluate_task.map(
            unmapped(params),
            [g[0] for g in grid],
            [g[1] for g in grid],
            [g[2] for g in grid],
            unmapped(data_dir),
            unmapped(checkpoints),
            unmapped(prompts_dir),
        )
        results = futures.result()
        for r in results:  # before anything is written or registered
            check_finite(
                {k: r[k] for k in METRIC_KEYS},
                f"evaluate {r['method']} seed {r['seed']} task {r['task']}",
            )
        _log_dataset_scores(run, bench, data_dir)
        records = build_records(params, results, checkpoints, prompts_dir)
        metrics = _write_outputs(out, records)
        _log_evaluation(run, metrics, results, records, tasks)
        _log_outputs(run, out, records, bench)
        text = describe.evaluate(bench, params, metrics)
        run.describe(text)
        promotion = register_policy(
            params, records, data_dir, checkpoints, prompts_dir, run, datasets
        )
        if promotion is not None:
            run.describe(
                text + describe.registered(promotion.name, promotion.version, promotion.alias)
            )
        get_run_logger().info(
            "scores: %s", {m: round(s["score_mean"], 2) for m, s in metrics.items()}
        )
    return metrics


def _write_outputs(out: Path, records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The run records, ``metrics.json`` and ``per_task.csv``; returns the metrics."""
    from cmt.evaluation.records import per_task_csv, summarize

    for rec in records:
        write_json(out / "runs" / f"{rec['method']}_seed{rec['seed']}.json", sealed_json(rec))
    summary = summarize(records)
    metrics = {
        m: {k: s[k] for k in ("score_mean", "score_std", "return_mean", "return_std")}
        for m, s in summary.items()
    }
    write_json(out / "metrics.json", metrics)
    write_text(out / "per_task.csv", per_task_csv(summary, records))
    return metrics


def _log_outputs(
    run: tracking.StageRun, out: Path, records: list[dict[str, Any]], bench: Any
) -> None:
    """The stage's files, the method comparison and the returns per task, on the run that
    measured them."""
    from cmt.evaluation.figures import plot_comparison, plot_per_task
    from cmt.evaluation.stats import score_intervals

    run.log_artifact(out / "runs", RECORDS_ARTIFACT)
    run.log_artifact(out / "metrics.json", "evaluate")
    run.log_artifact(out / "per_task.csv", "evaluate")
    # Whiskers: each method's 95% t interval of its mean score over seeds.
    comparison = plot_comparison(records, bench, score_intervals(records))
    run.log_figure(comparison, "figures/comparison.png")
    run.log_figure(plot_per_task(records, bench), "figures/per_task_returns.png")


def _log_dataset_scores(run: tracking.StageRun, bench: Any, data_dir: str) -> None:
    """The training data's own score distribution (the report's table shows it)."""
    data = bench.load(data_dir)
    scores = bench.episode_scores(data, data.train)
    run.log_metrics(
        {
            "dataset/score_mean": float(scores.mean()),
            "dataset/score_p90": float(np.percentile(scores, 90)),
            "dataset/score_max": float(scores.max()),
            **{
                f"dataset/level/{level}": float(scores[mine].mean())
                for level, mine in bench.level_episodes(data.train).items()
            },
        }
    )


def _log_evaluation(
    run: tracking.StageRun,
    metrics: dict[str, dict[str, float]],
    results: list[dict[str, Any]],
    records: list[dict[str, Any]],
    tasks: tuple[int, ...],
) -> None:
    """Per method: the summary, each task's mean over seeds, and each seed's score."""
    # A single seed's std is None (no spread over seeds): it is left out, not logged as 0.
    run.log_metrics(
        {f"eval/{m}/{k}": v for m, s in metrics.items() for k, v in s.items() if v is not None}
    )
    for m in metrics:
        for t in tasks:
            mine = [r for r in results if r["method"] == m and r["task"] == t]
            run.log_metrics(
                {
                    f"eval/{m}/task_{t}/return": float(np.mean([r["return_mean"] for r in mine])),
                    f"eval/{m}/task_{t}/score": float(np.mean([r["score_mean"] for r in mine])),
                }
            )
    for rec in records:  # stepped by the seed
        run.log_metrics({f"eval/{rec['method']}/seed_score": rec["score_mean"]}, rec["seed"])


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument(
        "--checkpoints",
        default="outputs/checkpoints",
        help="directory of BACKBONE_seedSEED/model.pt checkpoints",
    )
    parser.add_argument(
        "--prompts", default="outputs/prompts", help="directory of seedSEED/task_T.pt tuned prompts"
    )
    parser.add_argument("--out", default="outputs/evaluate", help="output directory")

    def body(args: argparse.Namespace, params: Params) -> None:
        data_dir = dataset_dir(params, args.data)
        flow_ = evaluate_flow.with_options(task_runner=make_task_runner(params.orchestration))
        run_stage_flow(flow_, params, data_dir, args.checkpoints, args.prompts, args.out)

    def inputs(args: argparse.Namespace, params: Params) -> None:
        data_dir = dataset_dir(params, args.data)
        verify_inputs(dataset_files(data_dir), input_files(params, args.checkpoints, args.prompts))

    return run_entry(parser, body, argv, inputs=inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.evaluate import main as _main

    exit_stage(_main())

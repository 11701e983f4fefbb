"""Stage ``prompt_tune``: tune the CMT prompt of every evaluated task (the unseen tasks of a
meta-RL benchmark, the one task of a D4RL dataset), one mapped Prefect task per (seed, task),
with the backbone and encoder frozen."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, unmapped

from cmt.atomic import write_json
from cmt.config import Params
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
from pipelines.preflight import dataset_files, require_member, verify_inputs
from pipelines.runner import make_task_runner


@stage_task(name="tune prompt", task_run_name="tune/seed{seed}/task_{task}")
def tune_task(
    params: Params, seed: int, task: int, data_dir: str, checkpoint: str, out_dir: str
) -> dict[str, Any]:
    """Tune one task's prompt into ``out_dir/task_<task>.pt``; returns its stats and the
    metric history (small), which the flow logs."""
    from cmt.experiment import load_data, make_prompts

    history: list[tuple[int, dict[str, float]]] = []
    result = make_prompts(
        params,
        "cmt_tuned",
        checkpoint,
        load_data(params, data_dir),
        seed,
        out_dir,
        on_metrics=lambda step, m: history.append((step, m)),
        progress=False,
        tasks=(task,),
    )
    stats = {k: v for k, v in result[task].items() if k != "prompt"}
    stats["prompt_bytes"] = (Path(out_dir) / f"task_{task}.pt").stat().st_size
    return {"task": task, **stats, "history": history}


@flow(name="prompt_tune", flow_run_name="seed{seed} · prompt_tune")
def prompt_tune_flow(
    params: Params, seed: int, data_dir: str, checkpoint: str, out_dir: str, metrics_dir: str
) -> dict[str, Any]:
    """Prompts to ``out_dir/task_<t>.pt``; ``metrics_dir/metrics.json`` with validation losses."""
    from cmt.benchmarks import make_benchmark
    from cmt.evaluation.figures import plot_tuning_curves

    logger = get_run_logger()
    tasks = list(eval_tasks(params))
    with stage_run("prompt_tune", params, {"cmt.seed": str(seed)}) as run:
        run.log_datasets(data_dir, "prompt tuning")
        futures = tune_task.map(
            unmapped(params),
            seed,
            tasks,
            unmapped(data_dir),
            unmapped(checkpoint),
            unmapped(out_dir),
        )
        results = futures.result()
        per_task: dict[str, Any] = {}
        curves: dict[int, list[tuple[int, float]]] = {}
        for res in results:
            t = res.pop("task")
            curves[t] = [(0, res["val_loss_zero_shot"])]  # step 0: the zero-shot prompt
            for step, metrics in res.pop("history"):
                run.log_metrics(metrics, step)
                if (loss := metrics.get(f"tune/task_{t}/val_loss")) is not None and step > 0:
                    curves[t].append((step, loss))
            per_task[f"task_{t}"] = res
            run.log_metrics({f"tune/task_{t}/{k}": v for k, v in res.items()})
            logger.info(
                "task %d: validation loss %.4f -> %.4f (best step %d)",
                t,
                res["val_loss_zero_shot"],
                res["val_loss_tuned"],
                res["best_step"],
            )
        metrics = {
            "val_loss_zero_shot": float(
                np.mean([r["val_loss_zero_shot"] for r in per_task.values()])
            ),
            "val_loss_tuned": float(np.mean([r["val_loss_tuned"] for r in per_task.values()])),
            # The cost of adapting to a task: wall time of one prompt's tuning, and its size.
            "seconds": float(np.mean([r["seconds"] for r in per_task.values()])),
            "prompt_bytes": float(np.mean([r["prompt_bytes"] for r in per_task.values()])),
        }
        # Means only: per-task values are in MLflow and would add a column per task to
        # `dvc exp show`.
        write_json(Path(metrics_dir) / "metrics.json", metrics)
        run.log_metrics({f"tune/{k}_mean": v for k, v in metrics.items()})
        run.log_artifact(out_dir, f"prompts/seed{seed}")
        bench = make_benchmark(params.data)
        figure = plot_tuning_curves(curves, bench, f"seed {seed}")
        run.log_figure(figure, "figures/prompt_tuning.png")
        run.describe(describe.prompt_tune(bench, seed, metrics))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="CMT checkpoint (default: outputs/checkpoints/cmt_seedSEED/model.pt)",
    )
    parser.add_argument(
        "--out", default=None, help="prompt directory (default: outputs/prompts/seedSEED)"
    )
    parser.add_argument(
        "--metrics", default=None, help="metrics directory (default: outputs/prompt_tune/seedSEED)"
    )

    def check(args: argparse.Namespace, params: Params) -> None:
        require_member("--seed", args.seed, params.compare.seeds, "compare.seeds")

    def body(args: argparse.Namespace, params: Params) -> None:
        data_dir = dataset_dir(params, args.data)
        checkpoint = args.checkpoint or f"outputs/checkpoints/cmt_seed{args.seed}/model.pt"
        flow_ = prompt_tune_flow.with_options(task_runner=make_task_runner(params.orchestration))
        run_stage_flow(
            flow_,
            params,
            args.seed,
            data_dir,
            checkpoint,
            args.out or f"outputs/prompts/seed{args.seed}",
            args.metrics or f"outputs/prompt_tune/seed{args.seed}",
        )

    def inputs(args: argparse.Namespace, params: Params) -> None:
        checkpoint = args.checkpoint or f"outputs/checkpoints/cmt_seed{args.seed}/model.pt"
        verify_inputs(dataset_files(dataset_dir(params, args.data)), [checkpoint])

    return run_entry(parser, body, argv, check, inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.prompt_tune import main as _main

    exit_stage(_main())

"""Stage ``pretrain``: pretrain one backbone (CMT or a baseline: ``compare.backbones``) with one
seed on the training data, and record its learning curve."""

from __future__ import annotations

import argparse
import time
from typing import Any, get_args

from prefect import flow, get_run_logger

from cmt.atomic import write_json, write_text
from cmt.config import BackboneName, Params
from cmt.train.distributed import launched_rank
from cmt.train.pretrain import MetricsCallback
from pipelines import describe
from pipelines.common import (
    dataset_dir,
    run_entry,
    run_stage_flow,
    stage_parser,
    stage_run,
    stage_task,
)
from pipelines.preflight import dataset_files, require_member, verify_inputs


@stage_task(name="pretrain backbone")
def train(
    params: Params,
    backbone: BackboneName,
    seed: int,
    data_dir: str,
    out_dir: str,
    on_metrics: MetricsCallback,
) -> str:
    """Load the datasets and pretrain; returns the checkpoint path."""
    from cmt.experiment import load_data, pretrain_backbone

    data = load_data(params, data_dir)
    path = pretrain_backbone(
        params, backbone, seed, data, out_dir, on_metrics=on_metrics, progress=False
    )
    return str(path)


def curve_csv(history: list[dict[str, float]]) -> str:
    """Learning curve as CSV: ``step`` and one column per logged ``train/*`` metric."""
    columns = list(dict.fromkeys(k for row in history for k in row if k != "step"))
    lines = ["step," + ",".join(c.removeprefix("train/") for c in columns)]
    for row in history:
        cells = [f"{row[c]:.6g}" if c in row else "" for c in columns]
        lines.append(",".join([str(int(row["step"])), *cells]))
    return "\n".join(lines) + "\n"


@flow(name="pretrain", flow_run_name="seed{seed} · {backbone} · pretrain")
def pretrain_flow(
    params: Params,
    backbone: BackboneName,
    seed: int,
    data_dir: str,
    out_dir: str,
    metrics_file: str,
    curve_file: str,
) -> dict[str, Any]:
    """Checkpoint to ``out_dir/model.pt``, final metrics to ``metrics_file`` (JSON) and the
    learning curve to ``curve_file`` (CSV; a figure of it on the MLflow run)."""
    from cmt.benchmarks import make_benchmark
    from cmt.evaluation.figures import plot_learning_curve

    logger = get_run_logger()
    # Every backbone, CMT and the baselines, is one stage; tag cmt.backbone tells them apart.
    name = f"{backbone}_seed{seed}"
    history: list[dict[str, float]] = []
    tags = {"cmt.backbone": backbone, "cmt.seed": str(seed)}
    with stage_run("pretrain", params, tags) as run:
        run.log_datasets(data_dir, "training", demos=False)  # pretraining sees no demonstrations

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            history.append({"step": step, **metrics})
            run.log_metrics(metrics, step)
            logger.info("%s step %d: loss %.4f", name, step, metrics.get("train/total", 0.0))

        start = time.perf_counter()
        ckpt = train(params, backbone, seed, data_dir, out_dir, on_metrics)
        seconds = time.perf_counter() - start
        final = history[-1] if history else {}
        metrics: dict[str, Any] = {
            "loss": final.get("train/total"),
            "action_loss": final.get("train/action"),
            "steps": params.pretrain.steps,
            "samples_per_s": params.pretrain.steps * params.pretrain.batch_size / seconds,
        }
        write_json(metrics_file, metrics)
        write_text(curve_file, curve_csv(history))
        run.log_metrics({"train/samples_per_s": metrics["samples_per_s"]})
        run.log_artifact(curve_file, "pretrain")
        run.set_tags({"cmt.checkpoint": ckpt})
        bench = make_benchmark(params.data)
        figure = plot_learning_curve(history, bench, f"{backbone}, seed {seed}")
        run.log_figure(figure, "figures/learning_curve.png")
        steps = params.pretrain.steps
        run.describe(describe.pretrain(bench, backbone, seed, steps, metrics, ckpt))
        logger.info("checkpoint %s (%.0f samples/s)", ckpt, metrics["samples_per_s"])
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--backbone", default="cmt", choices=get_args(BackboneName))
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument(
        "--out",
        default=None,
        help="checkpoint directory (default: outputs/checkpoints/BACKBONE_seedSEED)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="final metrics JSON (default: outputs/pretrain/BACKBONE_seedSEED/metrics.json)",
    )
    parser.add_argument(
        "--curve",
        default=None,
        help="learning curve CSV (default: outputs/curves/BACKBONE_seedSEED.csv)",
    )

    def check(args: argparse.Namespace, params: Params) -> None:
        require_member("--backbone", args.backbone, params.compare.backbones, "compare.backbones")
        require_member("--seed", args.seed, params.compare.seeds, "compare.seeds")

    def body(args: argparse.Namespace, params: Params) -> None:
        name = f"{args.backbone}_seed{args.seed}"
        data_dir = dataset_dir(params, args.data)
        if params.pretrain.distributed and launched_rank() > 0:
            # torchrun's other processes only train alongside rank 0, whose flow records the
            # run (MLflow, metrics, curve) and writes the checkpoint (docs/scale.md).
            from cmt.experiment import load_data, pretrain_backbone

            data = load_data(params, data_dir)
            out = args.out or f"outputs/checkpoints/{name}"
            pretrain_backbone(params, args.backbone, args.seed, data, out, progress=False)
            return
        run_stage_flow(
            pretrain_flow,
            params,
            args.backbone,
            args.seed,
            data_dir,
            args.out or f"outputs/checkpoints/{name}",
            args.metrics or f"outputs/pretrain/{name}/metrics.json",
            args.curve or f"outputs/curves/{name}.csv",
        )

    def inputs(args: argparse.Namespace, params: Params) -> None:
        verify_inputs(dataset_files(dataset_dir(params, args.data)))

    return run_entry(parser, body, argv, check, inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.pretrain import main as _main

    exit_stage(_main())

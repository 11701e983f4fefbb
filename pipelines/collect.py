"""Stage ``collect``: build the benchmark's dataset directory (``train.hdf5``, ``demos.hdf5``
where the benchmark has unseen tasks, ``references.json``).

The MuJoCo and SMAX benchmarks roll out committed behaviour policies (``behaviour/``,
docs/behaviour.md) or, with ``policies: train``, first train them, checkpointed under
``--behaviour`` (a persistent DVC output shared by every dataset of an environment), so a
killed or repeated collect continues where it stopped and the D4RL levels of one environment
share one run; training progress is logged to the stage's MLflow run as it trains.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cmt import tracking
from cmt.atomic import make_dir
from cmt.config import Params
from pipelines import describe
from pipelines.common import (
    dataset_dir,
    run_entry,
    run_stage_flow,
    stage_parser,
    stage_run,
    stage_task,
)


@stage_task(name="build datasets")
def build(
    params: Params, out_dir: str, behaviour_dir: str | None, run: tracking.StageRun
) -> dict[str, Any]:
    from cmt.benchmarks import make_benchmark

    logger = get_run_logger()

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step)
        logger.info("behaviour training step %d: %s", step, metrics)

    bench = make_benchmark(params.data)
    root = Path(behaviour_dir) if behaviour_dir else None
    return bench.build_datasets(Path(out_dir), root, on_metrics, progress=True)


@stage_task(name="measure data quality")
def measure_quality(params: Params, out_dir: str) -> dict[str, Any]:
    """Per behaviour level: size, return and score statistics, and the targets they are held
    to (the results/data/ tables)."""
    from cmt.benchmarks import make_benchmark

    bench = make_benchmark(params.data)
    return bench.quality_report(bench.load(out_dir))


def summary_tags(summary: dict[str, Any]) -> dict[str, str]:
    """Tags ``minari.<key>`` of a summary's ``minari`` section (a Minari source's dataset id,
    algorithm, versions, ...): strings that MLflow can search, which metrics cannot hold."""
    return {f"minari.{key}": str(value) for key, value in summary.get("minari", {}).items()}


@flow(name="collect", flow_run_name="collect")
def collect_flow(params: Params, out_dir: str, behaviour_dir: str | None = None) -> dict[str, Any]:
    """Build the benchmark's dataset directory ``out_dir``."""
    from cmt.benchmarks import make_benchmark

    if behaviour_dir:
        # Exists for every benchmark, so that DVC finds the declared output (empty when the
        # behaviour is scripted).
        make_dir(behaviour_dir)
    with stage_run("collect", params) as run:
        summary = build(params, out_dir, behaviour_dir, run)
        numbers = {
            f"data/{k}": v
            for k, v in tracking.flatten(summary, sep="/").items()
            if isinstance(v, int | float)
        }
        run.log_metrics(numbers)
        run.set_tags(summary_tags(summary))
        run.log_dict(summary, "collect/summary.json")
        quality = measure_quality(params, out_dir)
        run.log_metrics(tracking.flatten({"quality": quality["levels"]}, sep="/"))
        run.log_dict(quality, "collect/quality.json")
        # What it wrote, as the run's datasets: the start of the lineage to the registry.
        datasets = run.log_datasets(out_dir, "collected")
        run.describe(describe.collect(make_benchmark(params.data), datasets, out_dir))
        get_run_logger().info("datasets in %s: %s", out_dir, numbers)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument(
        "--behaviour",
        default=None,
        help="root of the behaviour learners' checkpoints when they train (resumes from them)",
    )

    def body(args: argparse.Namespace, params: Params) -> None:
        run_stage_flow(collect_flow, params, dataset_dir(params, args.out), args.behaviour)

    return run_entry(parser, body, argv)


if __name__ == "__main__":
    # Through the importable module, so that tasks pickle by reference (Dask workers).
    from pipelines.collect import main as _main
    from pipelines.common import exit_stage

    exit_stage(_main())

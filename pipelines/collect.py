"""Stage ``collect``: generate the task family's offline datasets (train, demos, references).

The MuJoCo families first train SAC behaviour policies, checkpointed in ``--sac-checkpoints``
(a persistent DVC output), so a killed or repeated collect continues where it stopped; SAC's
progress is logged to the stage's MLflow run as it trains.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cmt import tracking
from cmt.config import DataConfig, Params
from pipelines.common import dataset_dir, run_entry, run_tags, stage_parser, stage_task


@stage_task(name="generate datasets")
def generate(
    cfg: DataConfig, out_dir: str, sac_dir: str | None, run: tracking.StageRun
) -> dict[str, Any]:
    from cmt.envs.generate import generate_datasets

    logger = get_run_logger()

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step)
        logger.info("SAC step %d/%d: %s", step, cfg.sac.sac_steps, metrics)

    return generate_datasets(cfg, Path(out_dir), sac_dir and Path(sac_dir), on_metrics)


@flow(name="collect", flow_run_name="collect/{params.data.family}")
def collect_flow(params: Params, out_dir: str, sac_dir: str | None = None) -> dict[str, Any]:
    """Generate ``train.hdf5``, ``demos.hdf5`` and ``references.json`` into ``out_dir``."""
    if sac_dir:
        # Exists for every family, so that DVC finds the declared output (empty when the
        # behaviour is scripted).
        Path(sac_dir).mkdir(parents=True, exist_ok=True)
    with tracking.stage_run("collect", params, tags=run_tags()) as run:
        summary = generate(params.data, out_dir, sac_dir, run)
        numbers = {
            f"data/{k}": v
            for k, v in tracking.flatten(summary, sep="/").items()
            if isinstance(v, int | float)
        }
        run.log_metrics(numbers)
        run.log_dict(summary, "collect/summary.json")
        get_run_logger().info("datasets in %s: %s", out_dir, numbers)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default=None, help="dataset directory (default: data/<family>)")
    parser.add_argument(
        "--sac-checkpoints",
        default=None,
        help="SAC checkpoint directory of the MuJoCo families (resumes from it)",
    )

    def body(args: argparse.Namespace, params: Params) -> None:
        collect_flow(params, dataset_dir(params, args.out), args.sac_checkpoints)

    return run_entry(parser, body, argv)


if __name__ == "__main__":
    # Through the importable module, so that tasks pickle by reference (Dask workers).
    from pipelines.collect import main as _main

    raise SystemExit(_main())

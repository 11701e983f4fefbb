"""Stage ``collect``: generate the task family's offline datasets (train, demos, references)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cmt import tracking
from cmt.config import DataConfig, Params
from pipelines.common import run_entry, run_tags, stage_parser, stage_task


@stage_task(name="generate datasets")
def generate(cfg: DataConfig, out_dir: str) -> dict[str, Any]:
    from cmt.envs.generate import generate_datasets

    return generate_datasets(cfg, Path(out_dir))


@flow(name="collect", flow_run_name="collect/{params.data.family}")
def collect_flow(params: Params, out_dir: str) -> dict[str, Any]:
    """Generate ``train.hdf5``, ``demos.hdf5`` and ``references.json`` into ``out_dir``."""
    with tracking.stage_run("collect", params, tags=run_tags()) as run:
        summary = generate(params.data, out_dir)
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
    parser.add_argument("--out", default="data/point_robot", help="dataset directory")

    def body(args: argparse.Namespace, params: Params) -> None:
        collect_flow(params, args.out)

    return run_entry(parser, body, argv)


if __name__ == "__main__":
    # Through the importable module, so that tasks pickle by reference (Dask workers).
    from pipelines.collect import main as _main

    raise SystemExit(_main())

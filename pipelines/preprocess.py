"""Stage ``preprocess``: validate the datasets and summarise them (metrics, and a plot of the
score distribution of each behaviour level on an axis fitted to the data), so bad data stops
the pipeline here."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from cmt import tracking
from cmt.atomic import save_figure, write_json, write_text
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
from pipelines.preflight import dataset_files, verify_inputs

BINS = 30  # histogram bins between the lowest and the highest episode score of the data


@stage_task(name="validate and summarise")
def summarise(params: Params, data_dir: str) -> dict[str, Any]:
    """Load (which validates schema, dtypes, shapes and episode boundaries) and summarise:
    the return and score distribution of the data, per behaviour level where the data
    records it."""
    from cmt.benchmarks import make_benchmark

    bench = make_benchmark(params.data)
    data = bench.load(data_dir)
    train = data.train
    train_scores = bench.episode_scores(data, train)
    returns = np.asarray(train.ep_return, dtype=np.float64)
    summary: dict[str, Any] = {
        "train": {
            "transitions": len(train),
            "episodes": train.num_episodes,
            "tasks": len(train.tasks),
            "return_mean": float(returns.mean()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
            **{
                f"score_{k}": float(v)
                for k, v in zip(
                    ("p10", "p50", "p90", "max"),
                    np.percentile(train_scores, [10, 50, 90, 100]),
                    strict=True,
                )
            },
            "score_mean": float(train_scores.mean()),
        },
    }
    # A real dataset file records no behaviour levels: then the whole data is one group.
    groups = {
        level: train_scores[mine]
        for level, mine in (
            bench.level_episodes(train) or {"dataset": np.ones(train.num_episodes, dtype=bool)}
        ).items()
    }
    for level, scores in groups.items():
        summary["train"][f"{level}_episodes"] = int(len(scores))
        summary["train"][f"{level}_score_mean"] = float(scores.mean()) if len(scores) else 0.0
    if data.demos is not None:
        groups["demos"] = demo_scores = bench.episode_scores(data, data.demos)
        summary["demos"] = {
            "transitions": len(data.demos),
            "episodes": data.demos.num_episodes,
            "tasks": len(data.demos.tasks),
            "score_mean": float(demo_scores.mean()),
        }
    # The axis spans the data's own scores: a fixed one squeezes data far from 0-100.
    edges = np.histogram_bin_edges(np.concatenate(list(groups.values())), BINS)
    counts = {k: np.histogram(v, edges)[0] for k, v in groups.items()}
    centers = (edges[:-1] + edges[1:]) / 2
    rows = [
        {"score": float(c), **{k: int(v[j]) for k, v in counts.items()}}
        for j, c in enumerate(centers)
    ]
    return {"summary": summary, "histogram": rows, "edges": edges.tolist()}


def _plot(result: dict[str, Any], params: Params) -> Any:
    from cmt.benchmarks import make_benchmark
    from cmt.evaluation.figures import plot_score_histogram

    rows = result["histogram"]
    counts = {k: np.array([r[k] for r in rows]) for k in rows[0] if k != "score"}
    return plot_score_histogram(np.array(result["edges"]), counts, make_benchmark(params.data))


@flow(name="preprocess", flow_run_name="preprocess")
def preprocess_flow(params: Params, data_dir: str, out_dir: str) -> dict[str, Any]:
    """``out_dir``: ``metrics.json`` (summary), ``returns.csv`` (histogram), ``returns.png``."""
    from cmt.benchmarks import make_benchmark

    out = Path(out_dir)
    with stage_run("preprocess", params) as run:
        run.log_datasets(data_dir, "validated")
        result = summarise(params, data_dir)
        rows = result["histogram"]
        write_json(out / "metrics.json", result["summary"])
        header = list(rows[0])
        write_text(
            out / "returns.csv",
            "\n".join([",".join(header)] + [",".join(str(r[k]) for k in header) for r in rows])
            + "\n",
        )
        save_figure(_plot(result, params), out / "returns.png", dpi=110)
        run.log_metrics(tracking.flatten({"data": result["summary"]}, sep="/"))
        for name in ("metrics.json", "returns.csv"):
            run.log_artifact(out / name, "preprocess")
        run.log_artifact(out / "returns.png", "figures")
        run.describe(describe.preprocess(make_benchmark(params.data), result["summary"]))
        get_run_logger().info("data summary: %s", result["summary"])
    return result["summary"]


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument("--out", default="outputs/preprocess", help="output directory")

    def body(args: argparse.Namespace, params: Params) -> None:
        data_dir = dataset_dir(params, args.data)
        run_stage_flow(preprocess_flow, params, data_dir, args.out)

    def inputs(args: argparse.Namespace, params: Params) -> None:
        verify_inputs(dataset_files(dataset_dir(params, args.data)))

    return run_entry(parser, body, argv, inputs=inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.preprocess import main as _main

    exit_stage(_main())

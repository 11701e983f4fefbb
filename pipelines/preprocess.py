"""Stage ``preprocess``: validate the datasets and summarise them (metrics and a plot of the
return distribution of each behaviour level), so bad data stops the pipeline here."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from cmt import tracking
from cmt.atomic import save_figure, write_json, write_text
from cmt.config import Params
from pipelines.common import dataset_dir, run_entry, run_tags, stage_parser, stage_task
from pipelines.preflight import dataset_files, verify_inputs

BINS = np.linspace(-25.0, 125.0, 31)  # normalised score bins: random = 0, expert = 100


@stage_task(name="validate and summarise")
def summarise(params: Params, data_dir: str) -> dict[str, Any]:
    """Load (which validates schema, dtypes, shapes and episode boundaries) and summarise:
    the return distribution of the data, per behaviour level where the data records it."""
    from cmt.benchmarks import make_benchmark

    bench = make_benchmark(params.data)
    data = bench.load(data_dir)
    train = data.train
    train_scores = bench.episode_scores(data, train)
    summary: dict[str, Any] = {
        "train": {
            "transitions": len(train),
            "episodes": train.num_episodes,
            "tasks": len(train.tasks),
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
    histogram: dict[str, np.ndarray] = {}
    # A real dataset file records no behaviour levels: then the whole data is one group.
    groups = bench.level_episodes(train) or {"dataset": np.ones(train.num_episodes, dtype=bool)}
    for level, mine in groups.items():
        scores = train_scores[mine]
        summary["train"][f"{level}_episodes"] = int(len(scores))
        summary["train"][f"{level}_score_mean"] = float(scores.mean()) if len(scores) else 0.0
        histogram[level] = np.histogram(np.clip(scores, BINS[0], BINS[-1]), BINS)[0]
    if data.demos is not None:
        demo_scores = bench.episode_scores(data, data.demos)
        summary["demos"] = {
            "transitions": len(data.demos),
            "episodes": data.demos.num_episodes,
            "tasks": len(data.demos.tasks),
            "score_mean": float(demo_scores.mean()),
        }
        histogram["demos"] = np.histogram(np.clip(demo_scores, BINS[0], BINS[-1]), BINS)[0]
    centers = (BINS[:-1] + BINS[1:]) / 2
    rows = [
        {"score": float(c), **{k: int(v[j]) for k, v in histogram.items()}}
        for j, c in enumerate(centers)
    ]
    return {"summary": summary, "histogram": rows}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    x = [r["score"] for r in rows]
    for key in [k for k in rows[0] if k != "score"]:
        ax.step(x, [r[key] for r in rows], where="mid", label=key)
    ax.set_xlabel("normalised episode score (0 = random, 100 = expert)")
    ax.set_ylabel("episodes")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


@flow(name="preprocess", flow_run_name="preprocess/{params.data.name}")
def preprocess_flow(params: Params, data_dir: str, out_dir: str) -> dict[str, Any]:
    """``out_dir``: ``metrics.json`` (summary), ``returns.csv`` (histogram), ``returns.png``."""
    out = Path(out_dir)
    with tracking.stage_run("preprocess", params, tags=run_tags()) as run:
        result = summarise(params, data_dir)
        rows = result["histogram"]
        write_json(out / "metrics.json", result["summary"])
        header = list(rows[0])
        write_text(
            out / "returns.csv",
            "\n".join([",".join(header)] + [",".join(str(r[k]) for k in header) for r in rows])
            + "\n",
        )
        _plot(rows, out / "returns.png")
        run.log_metrics(tracking.flatten({"data": result["summary"]}, sep="/"))
        for name in ("metrics.json", "returns.csv", "returns.png"):
            run.log_artifact(out / name, "preprocess")
        get_run_logger().info("data summary: %s", result["summary"])
    return result["summary"]


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<name>)")
    parser.add_argument("--out", default="outputs/preprocess", help="output directory")

    def body(args: argparse.Namespace, params: Params) -> None:
        data_dir = dataset_dir(params, args.data)
        preprocess_flow(params, data_dir, args.out)

    def inputs(args: argparse.Namespace, params: Params) -> None:
        verify_inputs(dataset_files(dataset_dir(params, args.data)))

    return run_entry(parser, body, argv, inputs=inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.preprocess import main as _main

    exit_stage(_main())

"""Data-quality tables, one per setting, from the ``collect`` runs in MLflow.

    python scripts/data_quality.py                      # ./mlflow.db -> results/data/
    python scripts/data_quality.py --tracking-uri sqlite:///other/mlflow.db --out DIR
    python scripts/data_quality.py --keep results/data/data_quality.json   # update some rows

For every dataset (``data.name``) the newest FINISHED ``collect`` run is read: its
``collect/quality.json`` (per behaviour level or tier: episodes, transitions, return and
score statistics, with the targets of :meth:`cmt.benchmarks.base.Benchmark.quality_report`).
Written: one Markdown table per setting (``offline_meta_rl.md``, ...)
and ``data_quality.json`` (every row with its run id), each row beside the published figure
and the quality target it is held to (docs/behaviour.md), and whether it meets it.
Each row names its run and the store it came from: with ``--keep``, the rows of datasets that
have no collect run in this store are kept from an earlier ``data_quality.json`` (a new
machine's store holds only the datasets collected again there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, cast

from cmt.atomic import write_json, write_text

COLUMNS = ("episodes", "transitions", "return_mean", "return_p10", "return_p90", "return_max")
SCORE_COLUMNS = ("score_mean", "score_p10", "score_p90", "score_max")


def latest_collect_runs(client: Any) -> dict[str, Any]:
    """The newest FINISHED collect run of every dataset, over all experiments."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        "tags.`cmt.stage` = 'collect' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    latest: dict[str, Any] = {}
    for run in runs:
        name = run.data.params.get("data.name")
        if name and name not in latest:
            latest[name] = run
    return latest


def report_of(run: Any) -> dict[str, Any] | None:
    """The run's ``collect/quality.json`` (``Benchmark.quality_report``), or None."""
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/collect/quality.json")
    except Exception:  # a collect run from before quality was measured
        return None


def rows_of(latest: dict[str, Any], tracking_uri: str) -> list[dict[str, Any]]:
    rows = []
    for name, run in sorted(latest.items()):
        report = report_of(run)
        if report is None:
            continue
        levels = report["levels"]
        for level, stats in levels.items():
            if level == "all" and len(levels) > 1 + ("demos" in levels):
                continue  # the levels say it; "all" only for single-level data
            target = report["targets"].get(level)
            rows.append(
                {
                    "setting": report["kind"],
                    "score_name": report["score_name"],
                    "dataset": name,
                    "level": level,
                    **stats,
                    "reference": report["reference"],
                    "target": "" if target is None else target["target"],
                    "meets": None if target is None else target["meets"],
                    "run_id": run.info.run_id,
                    "tracking_uri": tracking_uri,
                }
            )
    return rows


def read_table(path: Path) -> dict[str, Any]:
    """An earlier ``data_quality.json``; ValueError naming the file if it is not one."""
    try:
        table = json.loads(path.read_text())
        if not isinstance(table["tracking_uri"], str) or not all(
            {"dataset", "level", "run_id"} <= set(r) for r in table["rows"]
        ):
            raise TypeError("rows without dataset, level and run_id")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--keep {path}: not a data_quality.json ({err})") from err
    return cast(dict[str, Any], table)


def kept_rows(old: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``old`` (a :func:`read_table`) whose dataset ``rows`` do not cover, each
    naming the store it came from, then ``rows``: one list, sorted by dataset."""
    fresh = {r["dataset"] for r in rows}
    kept = [
        {**r, "tracking_uri": r.get("tracking_uri", old["tracking_uri"])}
        for r in old["rows"]
        if r["dataset"] not in fresh
    ]
    return sorted(kept + rows, key=lambda r: r["dataset"])  # stable: levels keep their order


def file_name(setting: str) -> str:
    """``Offline meta-RL`` -> ``offline_meta_rl.md``."""
    return re.sub(r"[^a-z0-9]+", "_", setting.lower()).strip("_") + ".md"


def markdown(rows: list[dict[str, Any]], setting: str) -> str:
    score = rows[0]["score_name"]
    head = ["dataset", "level", "episodes", "transitions", "return mean", "p10", "p90", "max"]
    head += [f"{score} mean", "p10", "p90", "max"]
    lines = [
        f"# Data quality: {setting}",
        "",
        "Generated by `python scripts/data_quality.py` from the newest FINISHED `collect` run "
        "of each dataset in MLflow (its `collect/quality.json`; the store and run of each row: "
        "`data_quality.json`). Return and score per episode;"
        " p10 / p90 are percentiles over episodes. Targets: docs/behaviour.md.",
        "",
        "| " + " | ".join([*head, "reference", "target"]) + " |",
        "|" + "---|" * (len(head) + 2),
    ]
    for r in rows:
        cells = [r["dataset"], r["level"], *(_fmt(r[c]) for c in (*COLUMNS, *SCORE_COLUMNS))]
        target = r["target"] and f"{'meets' if r['meets'] else 'below'} {r['target']}"
        lines.append("| " + " | ".join([*cells, r["reference"], target]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 or float(x).is_integer() else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out", type=Path, default=Path("results/data"))
    parser.add_argument(
        "--keep", type=Path, help="earlier data_quality.json: keep its rows of other datasets"
    )
    args = parser.parse_args(argv)
    earlier = None
    if args.keep is not None:
        try:
            earlier = read_table(args.keep)  # refused before MLflow is read, not after
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
    rows = rows_of(latest_collect_runs(MlflowClient(args.tracking_uri)), args.tracking_uri)
    if not rows:
        print(f"no FINISHED collect run with quality.json in {args.tracking_uri}", file=sys.stderr)
        return 1
    if earlier is not None:
        rows = kept_rows(earlier, rows)
    for setting in sorted({r["setting"] for r in rows}):
        mine = [r for r in rows if r["setting"] == setting]
        write_text(args.out / file_name(setting), markdown(mine, setting))
    write_json(args.out / "data_quality.json", {"tracking_uri": args.tracking_uri, "rows": rows})
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

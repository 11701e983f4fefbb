"""Tabulate variants of one comparison into ``OUT/table.md``: one row per variant with the
settings they differ in and each method's score, then each variant's difference to a
reference variant and to the benchmark's main baseline, paired by seed with 95% t intervals;
and ``OUT/table.png``, the scores as points with std whiskers.

The variants come from folders written by ``cmt compare`` (``DIR/<variant>/results.json``
and ``runs/``), or from MLflow: the finished evaluate stages of one dataset's pipeline runs
(``dvc exp run -S ... -n NAME`` makes one variant, named by its DVC experiment).

    python scripts/variant_table.py results/attention/point_robot_test [--reference default]
    python scripts/variant_table.py --mlflow sqlite:///mlflow.db --dataset point_robot --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cmt.atomic import write_text
from cmt.benchmarks import make_benchmark
from cmt.config import parse_params
from cmt.evaluation.figures import plot_variants
from cmt.evaluation.records import load_records, summarize
from cmt.evaluation.tables import variant_differences, variants_table

Variants = tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]
"""Per variant: its results (``params`` and ``summary``), and its run records."""


def from_folders(study: Path) -> Variants:
    """The variants ``study/<variant>/results.json`` with their ``runs/``."""
    paths = sorted(study.glob("*/results.json"))
    if not paths:
        raise ValueError(f"no */results.json under {study}")
    results = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    for path, result in zip(paths, results.values(), strict=True):
        if not {"params", "summary"} <= result.keys():
            raise ValueError(f"{path}: not a comparison's results.json (no params/summary)")
    return results, {name: load_records(study / name) for name in results}


def from_mlflow(tracking_uri: str, dataset: str, experiment: str = "cmt") -> Variants:
    """The latest finished evaluate stage of each variant of ``dataset`` in MLflow, by name: a
    variant is named by its run's DVC experiment, else by its pipeline run's name."""
    import mlflow

    from pipelines.evaluate import RECORDS_ARTIFACT

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            "tags.`cmt.stage` = 'evaluate' and attributes.status = 'FINISHED' "
            f"and params.`data.name` = '{dataset}'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ValueError(f"no finished evaluate run of {dataset!r} at {tracking_uri}")
    results: dict[str, dict[str, Any]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            name = run.data.tags.get("dvc.exp_name") or _pipeline_name(client, run)
            if name in results:
                continue  # an older run of the same variant
            run_id = run.info.run_id
            folder = Path(tmp) / run_id
            config = client.download_artifacts(run_id, "config/params.yaml", str(folder))
            got = client.download_artifacts(run_id, RECORDS_ARTIFACT, str(folder / "records"))
            params = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
            records[name] = load_records(Path(got).parent)  # the folder holding runs/
            results[name] = {"params": params, "summary": summarize(records[name])}
    names = sorted(results)  # as folders list them
    return {n: results[n] for n in names}, {n: records[n] for n in names}


def _pipeline_name(client: Any, run: Any) -> str:
    parent = run.data.tags.get("mlflow.parentRunId")
    return client.get_run(parent).info.run_name if parent else run.info.run_id[:8]


def write_table(variants: Variants, out: Path, reference: str | None = None) -> str:
    """``out/table.md`` and ``out/table.png``; returns the Markdown. ``reference`` defaults to
    the variant named "default" if there is one, else the first."""
    results, records = variants
    table = variants_table(results)
    if any(records.values()):
        reference = reference or ("default" if "default" in results else next(iter(results)))
        claim = make_benchmark(parse_params(next(iter(results.values()))["params"]).data).claim
        table += "\n" + variant_differences(records, reference, claim)
    write_text(out / "table.md", table)
    plot_variants(results, out / "table.png")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, nargs="?", help="folder of one folder per variant")
    parser.add_argument("--mlflow", metavar="URI", help="read the variants from this store")
    parser.add_argument("--dataset", help="with --mlflow: the dataset (data.name)")
    parser.add_argument("--out", type=Path, help="where table.md goes (default: the study)")
    parser.add_argument(
        "--reference", help="the variant the others are paired with (default: 'default' if "
        "there is one, else the first)"
    )  # fmt: skip
    args = parser.parse_args()
    if (args.study is None) == (args.mlflow is None) or bool(args.mlflow) != bool(args.dataset):
        parser.error("give a study folder, or --mlflow URI with --dataset NAME")
    out = args.out or args.study
    if out is None:
        parser.error("--mlflow needs --out")
    try:
        variants = (
            from_folders(args.study) if args.study else from_mlflow(args.mlflow, args.dataset)
        )
        print(write_table(variants, out, args.reference))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

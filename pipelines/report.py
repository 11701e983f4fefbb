"""Stage ``report``: the method comparison table and plot of this pipeline's evaluation (with
each method's paired interval and verdict against the benchmark's main baseline, which it also
prints and logs), the tables of every dataset's latest evaluation in MLflow (beside a
published result and the data's own score distribution; one table per kind of benchmark), and
a comparison of the registered model versions and recent evaluation runs.

Also usable on its own (``python -m pipelines.report``) to refresh the MLflow tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cmt import tracking
from cmt.atomic import write_json, write_text
from cmt.config import Params
from cmt.evaluation.figures import plot_versions
from pipelines import describe
from pipelines.common import run_entry, run_stage_flow, stage_parser, stage_run, stage_task
from pipelines.preflight import verify_inputs

# Config keys shown next to each evaluation run: the ones experiments usually vary. A stage
# run logs only its own parameters, so they are read from its pipeline run (all of them).
RUN_PARAMS = (
    "pretrain.lr",
    "pretrain.steps",
    "model.d_model",
    "model.n_layer",
    "prompt_tune.steps",
    "compare.seeds",
)


@stage_task(name="results table")
def results(params: Params, evaluate_dir: str, out_dir: str) -> dict[str, Any]:
    """``results.{json,md,png}`` from the evaluate stage's run records (cmt.compare); returns
    their summary and claims."""
    from cmt.evaluation.report import write_report

    return write_report(out_dir, params, records_dir=evaluate_dir)


def log_claims(run: Any, claims: dict[str, Any]) -> None:
    """Print each comparison's verdict and log it to the report's MLflow run: the mean
    difference and interval as ``report/claim/<method>-<baseline>/...`` metrics (where
    defined) and the verdict as the tag ``cmt.verdict.<method>-<baseline>``."""
    logger = get_run_logger()
    for c in claims["comparisons"]:
        pair = f"{c['method']}-{c['baseline']}"
        values = {k: c[k] for k in ("mean_difference", "lo", "hi")}
        logger.info(
            "claim %s vs %s: %s (%s; %d paired seeds, mean difference %s, 95%% interval "
            "[%s, %s], δ = %g)",
            *(c["method"], c["baseline"], c["verdict"], c["reason"], c["n"]),
            *("–" if v is None else f"{v:.2f}" for v in values.values()),
            c["margin"],
        )
        defined = {f"report/claim/{pair}/{k}": v for k, v in values.items() if v is not None}
        run.log_metrics({**defined, f"report/claim/{pair}/n": c["n"]})
        run.set_tags({f"cmt.verdict.{pair}": c["verdict"]})


def _fmt(value: Any, digits: int = 2) -> str:
    return (
        "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


@stage_task(name="registry comparison")
def registry(params: Params, out_dir: str, max_runs: int = 20) -> dict[str, Any]:
    """``registry.{json,md,png}``: every registered version with its aliases and primary
    metric, and the latest evaluation runs with their key params and metrics."""
    import mlflow

    cfg = params.tracking
    exp_id = tracking.configure(cfg)
    client = mlflow.MlflowClient()
    name = cfg.model_name(params.data.name)
    versions = tracking.registry_rows(client, name)
    metric = f"eval/{cfg.registered_method}/{cfg.primary_metric}"
    runs = _evaluation_runs(client, exp_id, metric, max_runs)
    out = Path(out_dir)
    payload = {"model": name, "versions": versions, "runs": runs}
    write_json(out / "registry.json", payload)
    write_text(out / "registry.md", _registry_markdown(cfg, name, versions, runs, metric))
    colors = {tracking.CHAMPION: "tab:orange", tracking.CHALLENGER: "tab:green"}
    title = f"{name}: registered versions by {cfg.primary_metric}"
    plot_versions(versions, cfg.primary_metric, out / "registry.png", colors, title)
    return payload


def _evaluation_runs(client: Any, exp_id: str, metric: str, max_runs: int) -> list[dict]:
    """The latest evaluate runs: status, experiment, model version, key params, ``metric``."""
    from mlflow.exceptions import MlflowException

    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{tracking.TAG_STAGE}` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    parents: dict[str, dict[str, str]] = {}
    for r in found:
        parent = r.data.tags.get(tracking.PARENT_TAG, "")
        if parent and parent not in parents:
            parents[parent] = {}
            with contextlib.suppress(MlflowException):  # a deleted pipeline run
                parents[parent] = client.get_run(parent).data.params
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "dvc_exp": r.data.tags.get("dvc.exp_name", ""),
            "model_version": r.data.tags.get("cmt.model_version", ""),
            "alias": r.data.tags.get("cmt.model_alias", ""),
            metric: r.data.metrics.get(metric),
            **_run_params(r, parents),
        }
        for r in found
    ]


def _run_params(run: Any, parents: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """The :data:`RUN_PARAMS` of an evaluate run: its own, else its pipeline run's."""
    inherited = parents.get(run.data.tags.get(tracking.PARENT_TAG, ""), {})
    return {k: run.data.params.get(k, inherited.get(k)) for k in RUN_PARAMS}


def _registry_markdown(
    cfg: Any, name: str, versions: list[dict], runs: list[dict], metric: str
) -> str:
    lines = [
        f"## Registered versions of `{name}`",
        "",
        f"Primary metric: {cfg.primary_metric} of the registered policy on the unseen tasks "
        "(higher is better).",
        "",
        "| version | aliases | metric | value | method | seed | dvc exp | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in versions:
        lines.append(
            f"| {v['version']} | {', '.join(v['aliases'])} | {v['metric']} | {_fmt(v['value'])} "
            f"| {v['method']} | {v['seed']} | {v['dvc_exp']} | {v['run_id'][:8]} |"
        )
    lines += [
        "",
        f"## Latest evaluation runs (experiment `{cfg.experiment}`)",
        "",
        "| run | status | dvc exp | version | alias | " + " | ".join(RUN_PARAMS) + f" | {metric} |",
        "|" + "---|" * (6 + len(RUN_PARAMS)),
    ]
    for r in runs:
        cells = " | ".join(_fmt(r[k]) for k in RUN_PARAMS)
        lines.append(
            f"| {r['run_id'][:8]} | {r['status']} | {r['dvc_exp']} | {r['model_version']} "
            f"| {r['alias']} | {cells} | {_fmt(r[metric])} |"
        )
    return "\n".join(lines) + "\n"


@stage_task(name="benchmark table")
def benchmarks(params: Params, out_dir: str) -> list[dict[str, Any]]:
    """``benchmarks.{json,md}``: for every dataset with a finished evaluation in MLflow, the
    latest one's per-method results, beside a published result and the data's own score
    distribution; one table per kind of benchmark."""
    import mlflow

    from cmt.evaluation.tables import benchmark_tables

    exp_id = tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    latest: dict[str, Any] = {}
    for r in client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`{tracking.TAG_STAGE}` = 'evaluate' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=500,
    ):
        latest.setdefault(r.data.params.get("data.name", "?"), r)
    rows = [_benchmark_row(client, exp_id, name, r) for name, r in sorted(latest.items())]
    out = Path(out_dir)
    write_json(out / "benchmarks.json", rows)
    write_text(out / "benchmarks.md", benchmark_tables(rows))
    return rows


def _benchmark_row(client: Any, exp_id: str, name: str, run: Any) -> dict[str, Any]:
    """One dataset's row: the evaluate ``run``'s per-method metrics, its published result,
    the data's score distribution and the cost of a tuned prompt."""
    tags, values = run.data.tags, run.data.metrics
    # The prompt_tune runs of the same pipeline run: the cost of a tuned prompt.
    siblings = client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{tags.get('mlflow.parentRunId', '')}' "
            f"and tags.`{tracking.TAG_STAGE}` = 'prompt_tune'"
        ),
    )
    costs = [s.data.metrics for s in siblings if "tune/seconds_mean" in s.data.metrics]
    metrics: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/")  # eval/<method>/<statistic>
        if len(parts) == 3 and parts[0] == "eval" and not parts[2].startswith("seed"):
            metrics.setdefault(parts[1], {})[parts[2]] = value
    prompt = None
    if costs:
        prompt = {
            "seconds": sum(c["tune/seconds_mean"] for c in costs) / len(costs),
            "bytes": sum(c["tune/prompt_bytes_mean"] for c in costs) / len(costs),
        }
    return {
        "name": name,
        "kind": tags.get("cmt.benchmark_kind", "?"),
        "run_id": run.info.run_id,
        "dvc_exp": tags.get("dvc.exp_name", ""),
        "seeds": run.data.params.get("compare.seeds", ""),
        "caption": tags.get("cmt.caption", ""),
        "published": json.loads(tags.get("cmt.published", "null")),
        "dataset": {
            k.removeprefix("dataset/"): v for k, v in values.items() if k.startswith("dataset/")
        },
        "metrics": metrics,
        "prompt": prompt,
    }


@flow(name="report", flow_run_name="report")
def report_flow(params: Params, evaluate_dir: str, out_dir: str) -> dict[str, Any]:
    """``out_dir``: ``results.{json,md,png}`` (this evaluation), ``registry.{json,md,png}``
    (the registered versions) and ``benchmarks.{json,md}`` (every dataset, from MLflow)."""
    from cmt.benchmarks import make_benchmark

    out = Path(out_dir)
    with stage_run("report", params) as run:
        made = results(params, evaluate_dir, out_dir)
        summary = made["summary"]
        reg = registry(params, out_dir)
        benchmarks(params, out_dir)
        for name in (
            "results.md",
            "results.json",
            "registry.md",
            "registry.json",
            "benchmarks.md",
            "benchmarks.json",
        ):
            run.log_artifact(out / name, "report")
        for name in ("results.png", "registry.png"):
            run.log_artifact(out / name, "figures")
        model = params.tracking.model_name(params.data.name)
        run.describe(describe.report(make_benchmark(params.data), model, len(reg["versions"])))
        run.log_metrics({f"report/{m}/score_mean": s["score_mean"] for m, s in summary.items()})
        log_claims(run, made["claims"])
        table = "\n".join(
            (out / f).read_text() for f in ("results.md", "benchmarks.md", "registry.md")
        )
        create_markdown_artifact(table, key="cmt-report", description="CMT results and registry")
        get_run_logger().info("\n%s", (out / "results.md").read_text())
    return {"summary": summary, "claims": made["claims"], "versions": reg["versions"]}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--evaluate", default="outputs/evaluate", help="evaluate stage output (with runs/*.json)"
    )
    parser.add_argument("--out", default="outputs/report", help="output directory")

    def body(args: argparse.Namespace, params: Params) -> None:
        run_stage_flow(report_flow, params, args.evaluate, args.out)

    def inputs(args: argparse.Namespace, params: Params) -> None:
        verify_inputs(sorted((Path(args.evaluate) / "runs").glob("*.json")))

    return run_entry(parser, body, argv, inputs=inputs)


if __name__ == "__main__":
    from pipelines.common import exit_stage
    from pipelines.report import main as _main

    exit_stage(_main())

"""A comparison's results files (``results.{json,md,png}``), from its run records alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmt.atomic import save_figure, write_json, write_text
from cmt.benchmarks import make_benchmark
from cmt.config import Params
from cmt.evaluation.figures import plot_comparison
from cmt.evaluation.records import load_records, summarize
from cmt.evaluation.stats import claims, score_intervals
from cmt.evaluation.tables import claims_table, markdown_table


def write_report(
    out_dir: str | Path, params: Params, records_dir: str | Path | None = None
) -> dict[str, Any]:
    """results.json, results.md and results.png in ``out_dir`` from the run records in
    ``records_dir/runs`` (default: ``out_dir/runs``); returns results.json's ``summary`` and
    ``claims`` (each method paired by seed with the benchmark's main baseline, and the method
    under test with each other method: :func:`cmt.evaluation.stats.claims`)."""
    out_dir = Path(out_dir)
    records = load_records(out_dir if records_dir is None else records_dir)
    bench = make_benchmark(params.data)
    summary = summarize(records)
    judged = claims(records, bench.claim)
    payload = {"params": params.model_dump(mode="json"), "summary": summary, "claims": judged}
    write_json(out_dir / "results.json", payload)
    text = markdown_table(summary, params)
    if judged["comparisons"]:
        text += "\n" + claims_table(judged, bench)
    write_text(out_dir / "results.md", text)
    figure = plot_comparison(records, bench, score_intervals(records))
    save_figure(figure, out_dir / "results.png", 120)
    return {"summary": summary, "claims": judged}

"""A comparison's results files (``results.{json,md,png}``), from its run records alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmt.atomic import save_figure, write_json, write_text
from cmt.benchmarks import make_benchmark
from cmt.config import Params
from cmt.evaluation.figures import plot_comparison
from cmt.evaluation.records import load_records, summarize
from cmt.evaluation.tables import markdown_table


def write_report(
    out_dir: str | Path, params: Params, records_dir: str | Path | None = None
) -> dict[str, Any]:
    """results.json, results.md and results.png in ``out_dir`` from the run records in
    ``records_dir/runs`` (default: ``out_dir/runs``)."""
    out_dir = Path(out_dir)
    records = load_records(out_dir if records_dir is None else records_dir)
    summary = summarize(records)
    write_json(
        out_dir / "results.json", {"params": params.model_dump(mode="json"), "summary": summary}
    )
    write_text(out_dir / "results.md", markdown_table(summary, params))
    save_figure(plot_comparison(records, make_benchmark(params.data)), out_dir / "results.png", 120)
    return summary

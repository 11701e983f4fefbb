"""Every committed dataset's main claim: ``results/claims.{json,md}`` from the per-run records.

    python scripts/claims.py

Each folder under ``results/`` with run records (``runs/*.json``, copied there by
``scripts/save_results.py``) and a ``results.json`` is one dataset. Its benchmark, rebuilt from
the ``params`` in that ``results.json``, names the method under test, its main baseline and
the margin δ (``cmt.benchmarks.Claim``); the records give the difference paired by seed, its
95% t interval and the verdict (docs/method.md, "Statistics and verdicts"). This script names
no benchmark itself. Folders whose records hold no per-episode lists (written before them) are
listed as skipped, as are the validation runs under ``results/validation/``. A dataset's
**final** claim is the folder ``results/claims/<dataset>/``; other folders of the same dataset
(``*_with_ssl``, ``*_without_ssl``, ``*_first_defaults``: runs with settings that a validated
default replaced) are earlier runs, kept and tabulated apart. ``--out DIR`` writes the two
files elsewhere (to compare with the committed ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cmt.atomic import write_json, write_text
from cmt.benchmarks import make_benchmark
from cmt.config import parse_params
from cmt.evaluation.records import EPISODE_KEYS, load_records
from cmt.evaluation.stats import CONFIDENCE, UNDECIDED, compare, seeds_to_decide
from cmt.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/claims.py"
FINAL = "claims"
"""``results/claims/<dataset>/``: the dataset's final claim; the README shows these."""
EARLIER_HEADING = "## Earlier runs and variants"
"""claims.md's final table ends at its first ``## `` heading; ``scripts/update_readme.py``
shows what comes before it."""
PER_SEED_HEADING = "## Per-seed differences of the final claims"
UNDECIDED_HEADING = "## How many seeds would decide the undecided claims"
VALIDATION = "validation"
"""``results/validation/``: runs on validation tasks or seeds, which choose and claim nothing
(docs/method.md, "Validation protocol")."""


def dataset_claim(folder: Path, results_root: Path) -> dict[str, Any]:
    """The main claim of the dataset in ``folder`` (its ``results.json`` and ``runs/``)."""
    params = parse_params(_params(folder))
    bench = make_benchmark(params.data)
    claim = bench.claim
    comparison = compare(load_records(folder), claim.method, claim.baseline, claim.margin)
    projection = None
    if comparison.verdict == UNDECIDED and len(comparison.differences) > 1:
        decided = seeds_to_decide(comparison.differences, claim.margin)
        projection = None if decided is None else {"seeds": decided[0], "verdict": decided[1]}
    command = folder / "COMMAND"
    where = folder.relative_to(results_root).as_posix()
    return {
        "dataset": params.data.name,
        "folder": where,
        "final": where == f"{FINAL}/{params.data.name}",
        "kind": bench.kind,
        "score": bench.score_name,
        **comparison.as_dict(),
        "projection": projection,
        "records_command": command.read_text().strip() if command.exists() else None,
    }


def claims_markdown(rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> str:
    """The final claim of each dataset, then the earlier runs, then the folders of records
    that were skipped; one row per folder: the main claim's paired difference, interval and
    verdict."""
    final = [r for r in rows if r["final"]]
    earlier = [r for r in rows if not r["final"]]
    lines = [
        "Main claim per dataset: the method under test minus the benchmark's main baseline, "
        f"paired by seed; mean difference and {CONFIDENCE:.0%} t interval (sample std, ddof 1) "
        "in points of the dataset's score; verdicts as in docs/method.md. "
        f"Made by `{COMMAND}` from `results/**/runs/*.json`; each folder's `COMMAND` says how "
        f"its records were made. The final claims are the folders `results/{FINAL}/<dataset>/`.",
        "",
        *_claims_table(final, "_no dataset has a final claim yet_"),
    ]
    if earlier:
        lines += [
            "",
            EARLIER_HEADING,
            "",
            "Runs of the same datasets with settings that a validated default replaced "
            "(docs/method.md), kept so that the change can be recomputed:",
            "",
            *_claims_table(earlier, ""),
        ]
    if final:
        lines += ["", PER_SEED_HEADING, "", *_per_seed_table(final)]
    projected = [r for r in final if r["verdict"] == UNDECIDED and r["n"] > 1]
    if projected:
        lines += ["", UNDECIDED_HEADING, "", *_projection_table(projected)]
    if skipped:
        lines += ["", "## Skipped", "", "No claim can be recomputed from these:", ""]
        lines += [f"- `{s['folder']}/runs/`: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def _claims_table(rows: list[dict[str, Any]], empty: str) -> list[str]:
    lines = [
        "| dataset | setting | method | baseline | seeds | mean difference | 95% interval | δ "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "–" if r["mean_difference"] is None else f"{r['mean_difference']:+.1f}"
        interval = "–" if r["lo"] is None else f"[{r['lo']:.1f}, {r['hi']:.1f}]"
        lines.append(
            f"| {r['folder']} | {r['kind']} | {METHODS[r['method']].label} | "
            f"{METHODS[r['baseline']].label} | {r['n']} | {diff} | {interval} | "
            f"{r['margin']:g} | {r['verdict']} |"
        )
    if not rows:
        lines.append(f"| {empty} |" + " |" * 8)
    return lines


def _per_seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each final claim's difference on every seed: an undecided interval is often one seed
    far from the others (a pretraining that failed), which the mean and interval hide."""
    lines = [
        "The method under test minus the baseline on each seed, in the same points; the lowest "
        "seed is in bold:",
        "",
        "| dataset | seed: difference |",
        "|---|---|",
    ]
    for r in rows:
        pairs = list(zip(r["seeds"], r["differences"], strict=True))
        low = min(pairs, key=lambda p: p[1])[0] if pairs else None
        cells = [
            f"**{s}: {d:+.1f}**" if s == low and len(pairs) > 1 else f"{s}: {d:+.1f}"
            for s, d in pairs
        ]
        lines.append(f"| {r['folder']} | {' · '.join(cells) or '–'} |")
    return lines


def _projection_table(rows: list[dict[str, Any]]) -> list[str]:
    """For each of ``rows`` (undecided final claims of two or more seeds), the seed count at
    which its interval would decide if the mean difference and its spread stayed as measured
    (``seeds_to_decide``): a rough cost of deciding it, not a prediction of the verdict."""
    lines = [
        "A projection, not a result: if further seeds kept each undecided claim's mean "
        "difference and sample std as measured, the interval would first give a verdict at "
        "this many seeds:",
        "",
        "| dataset | seeds | std of the differences | seeds to decide | verdict it would reach |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        std = float(np.std(r["differences"], ddof=1))
        p = r["projection"]
        to_decide, reached = ("> 1000", "–") if p is None else (str(p["seeds"]), p["verdict"])
        lines.append(f"| {r['folder']} | {r['n']} | {std:.1f} | {to_decide} | {reached} |")
    return lines


def _params(folder: Path) -> dict[str, Any]:
    """The run parameters recorded in a dataset folder's ``results.json``."""
    params: dict[str, Any] = json.loads((folder / "results.json").read_text())["params"]
    return params


def record_folders(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The folders under ``root`` whose run records can be judged, and those skipped, with
    why: records from before per-episode lists (the attention studies) predate the claims."""
    folders, skipped = [], []
    for folder in sorted({p.parent.parent for p in root.glob("**/runs/*.json")}):
        records = load_records(folder)
        where = folder.relative_to(root).as_posix()
        if where.split("/")[0] == VALIDATION:
            skipped.append({"folder": where, "reason": "validation run: it chooses, not claims"})
        elif not all(set(EPISODE_KEYS) <= set(t) for r in records for t in r["per_task"].values()):
            skipped.append({"folder": where, "reason": "records without per-episode lists"})
        elif not (folder / "results.json").exists():
            raise SystemExit(f"{folder}: run records without a results.json beside them")
        elif _params(folder)["data"].get("validation_tasks"):
            skipped.append({"folder": where, "reason": "scored on validation tasks, not tests"})
        else:
            folders.append(folder)
    return folders, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "results", help="results folder to read"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where claims.{json,md} go (default: --results)"
    )
    args = parser.parse_args(argv)
    root = args.results.resolve()
    out = root if args.out is None else args.out
    folders, skipped = record_folders(root)
    rows = [dataset_claim(f, root) for f in folders]
    write_json(out / "claims.json", {"command": COMMAND, "datasets": rows, "skipped": skipped})
    write_text(out / "claims.md", claims_markdown(rows, skipped))
    for r in rows:
        print(f"{r['folder']}: {r['method']} vs {r['baseline']}: {r['verdict']} ({r['reason']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

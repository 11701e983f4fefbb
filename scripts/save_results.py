"""Copy a finished pipeline's report into ``results/<name>/`` with the command that made it.

    python scripts/save_results.py --command "python -m pipelines.pipeline --preset cheetah_vel"

Reads the workspace's ``params.yaml`` (the dataset id ``data.name``), ``outputs/report/``
(results, registry and the cross-dataset benchmark tables from MLflow),
``outputs/evaluate/metrics.json`` and the per-run records ``outputs/evaluate/runs/*.json``
(each task's per-episode returns and scores, from which ``tests/test_stats.py`` recomputes the
tables and ``scripts/claims.py`` the claims), ``outputs/preprocess/metrics.json`` and the
behaviour policies' log of generated data (``data/<name>/sac_log.json`` or ``tiers.json``).
``results/benchmarks.md`` gets the latest cross-family table. Then run
``python scripts/update_readme.py`` to refresh the README.

    python scripts/save_results.py --compare OUT --group claims --name point_robot --command "..."

copies a ``cmt compare --out OUT`` folder instead: ``results.{md,json,png}`` and ``runs/``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cmt.atomic import write_text
from cmt.config import load_params

ROOT = Path(__file__).resolve().parents[1]

REPORT = ("results.md", "results.json", "results.png", "registry.md", "benchmarks.md")


def copy_records(source: Path, dest: Path) -> None:
    """The evaluation's per-run records, replacing any earlier ones (a method or seed that
    this run lacks must not linger beside its tables)."""
    records = sorted(source.glob("*.json"))
    if not records:
        raise SystemExit(f"{source} holds no run records: run the pipeline first")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in records:
        shutil.copyfile(path, dest / path.name)


def save_comparison(source: Path, out: Path, command: str) -> None:
    """A ``cmt compare --out`` folder's report and per-run records into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.md", "results.json", "results.png"):
        if not (source / name).exists():
            raise SystemExit(f"{source / name} is missing: the comparison has not finished")
        shutil.copyfile(source / name, out / name)
    copy_records(source / "runs", out / "runs")
    write_text(out / "COMMAND", command.strip() + "\n")
    print(f"comparison {source} in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", required=True, help="the exact command that made them")
    parser.add_argument(
        "--group",
        default="",
        help="subdirectory of results/ (e.g. d4rl: results/d4rl/<name>/, and the cross-dataset "
        "table to results/d4rl/benchmarks.md)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a `cmt compare --out` folder instead of the pipeline's outputs: its report and run "
        "records go to results/<group>/<--name>/",
    )
    parser.add_argument("--name", default=None, help="with --compare: the folder's name")
    args = parser.parse_args()
    if args.compare is not None:
        if not args.name:
            raise SystemExit("--compare needs --name")
        save_comparison(args.compare, ROOT / "results" / args.group / args.name, args.command)
        return 0
    family = load_params(ROOT / "params.yaml").data.name
    group = ROOT / "results" / args.group
    out = group / family
    out.mkdir(parents=True, exist_ok=True)
    sources = [ROOT / "outputs" / "report" / name for name in REPORT]
    sources += [ROOT / "outputs/evaluate/metrics.json", ROOT / "outputs/preprocess/metrics.json"]
    names = [*REPORT, "evaluate_metrics.json", "preprocess_metrics.json"]
    for log in ("sac_log.json", "tiers.json"):  # how the behaviour policies were trained
        if (ROOT / "data" / family / log).exists():
            sources.append(ROOT / "data" / family / log)
            names.append(log)
    for src, name in zip(sources, names, strict=True):
        if not src.exists():
            raise SystemExit(f"{src} is missing: run the pipeline first")
        shutil.copyfile(src, out / name)
    copy_records(ROOT / "outputs" / "evaluate" / "runs", out / "runs")
    write_text(out / "COMMAND", args.command.strip() + "\n")
    shutil.copyfile(out / "benchmarks.md", group / "benchmarks.md")
    print(f"results of {family} in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

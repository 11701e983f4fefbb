"""Tabulate variants of one comparison: ``DIR/<variant>/results.json`` (written by
``cmt compare``) into ``DIR/table.md``, one row per variant with the settings they differ in,
then each variant's difference to a reference variant and to the benchmark's main baseline,
paired by seed with 95% t intervals, from the variants' run records (``<variant>/runs/``);
and ``DIR/table.png``, the scores as points with std whiskers.

    python scripts/variant_table.py results/attention/point_robot_test [--reference default]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmt.atomic import write_text
from cmt.benchmarks import make_benchmark
from cmt.config import parse_params
from cmt.evaluation.figures import plot_variants
from cmt.evaluation.records import load_records
from cmt.evaluation.tables import variant_differences, variants_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="folder holding one folder per variant")
    parser.add_argument(
        "--reference", help="the variant the others are paired with (default: 'default' if "
        "there is one, else the first by name)"
    )  # fmt: skip
    args = parser.parse_args()
    paths = sorted(args.study.glob("*/results.json"))
    if not paths:
        print(f"no */results.json under {args.study}", file=sys.stderr)
        return 1
    results = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    for path, result in zip(paths, results.values(), strict=True):
        if not {"params", "summary"} <= result.keys():
            print(f"{path}: not a comparison's results.json (no params/summary)", file=sys.stderr)
            return 1
    table = variants_table(results)
    records = {name: load_records(args.study / name) for name in results}
    if any(records.values()):
        reference = args.reference or ("default" if "default" in results else next(iter(results)))
        params = parse_params(next(iter(results.values()))["params"])
        claim = make_benchmark(params.data).claim
        table += "\n" + variant_differences(records, reference, claim)
    write_text(args.study / "table.md", table)
    plot_variants(results, args.study / "table.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tabulate variants of one comparison: ``DIR/<variant>/results.json`` (written by
``cmt compare``) into ``DIR/table.md``, one row per variant with the settings they differ in,
and ``DIR/table.png``, the same as points with std whiskers.

    python scripts/variant_table.py results/attention/point_robot_test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmt.atomic import write_text
from cmt.evaluation.figures import plot_variants
from cmt.evaluation.tables import variants_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="folder holding one folder per variant")
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
    write_text(args.study / "table.md", table)
    plot_variants(results, args.study / "table.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

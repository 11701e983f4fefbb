"""CI check: no function in ``cmt/`` or ``pipelines/`` longer than 60 lines, model ``forward``
bodies excepted (docs/architecture.md).

The functions that were already longer when the rule came in are listed in ``KNOWN`` with
their length then: each may only shrink, and leaves the list once it is split. Any other
function over the limit, a listed one that grew, or a listed one that no longer exists over
the limit (the list must stay true) fails the check.

    python scripts/check_function_length.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cmt", "pipelines")

KNOWN: dict[tuple[str, str], int] = {
    ("cmt/behaviour/ppo.py", "train_ppo"): 132,
    ("cmt/behaviour/ppo.py", "build_smax_datasets"): 78,
}
"""Functions over the limit when the rule came in (issue 18), and their length then."""


def long_functions(root: Path = ROOT) -> dict[tuple[str, str], int]:
    """(file, function) -> lines of every function over :data:`LIMIT` lines."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > LIMIT and node.name != "forward":
                        out[(str(path.relative_to(root)), node.name)] = lines
    return out


def main() -> int:
    problems = []
    found = long_functions()
    for (path, name), lines in found.items():
        known = KNOWN.get((path, name))
        if known is None:
            problems.append(f"{path}: {name} has {lines} lines (limit {LIMIT}): split it")
        elif lines > known:
            problems.append(f"{path}: {name} grew to {lines} lines (was {known}): split it")
    for path, name in sorted(set(KNOWN) - set(found)):
        problems.append(f"{path}: {name} is no longer over {LIMIT} lines: drop it from KNOWN")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

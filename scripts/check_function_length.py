"""CI check: no function in ``cmt/`` or ``pipelines/`` longer than 60 lines, model ``forward``
bodies excepted (docs/architecture.md). Split a long function along the steps its comments
already name.

    python scripts/check_function_length.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cmt", "pipelines")


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
    found = long_functions()
    for (path, name), lines in sorted(found.items()):
        print(f"{path}: {name} has {lines} lines (limit {LIMIT}): split it", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())

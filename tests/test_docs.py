"""The README stays true to the code: its tables come from committed results, and its test
command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_committed_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(pip install .*python -m pytest)$", readme, flags=re.MULTILINE)
    assert commands, "README has no test command"
    assert commands[0] in (ROOT / ".ci" / "run").read_text()

"""The README and docs stay true to the code: their tables agree with committed results, and
the README's test command is the one CI runs."""

from __future__ import annotations

import json
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


def check_claims_table(
    doc: str, header: str, names: tuple[str, ...], columns: tuple[str, ...]
) -> None:
    """A hand-typed table of paired claims in ``doc``: exactly one row per dataset of ``names``
    (its folder under results/claims/ is the name with ``-`` and spaces as ``_``), the methods'
    scores in ``columns``, then the difference with its interval, then the verdict; each must
    be what the dataset's results.json holds."""
    text = (ROOT / "docs" / doc).read_text()
    table = text[text.index(header) :].split("\n\n")[0]
    pattern = "|".join(re.escape(n) for n in names)
    rows = re.findall(rf"^\| ({pattern}) \|(.*)\|$", table, flags=re.MULTILINE)
    assert sorted(n for n, _ in rows) == sorted(names), f"{doc}'s claims table: rows missing"
    for name, cells in rows:
        folder = re.sub(r"[- ]", "_", name)
        made = json.loads((ROOT / "results" / "claims" / folder / "results.json").read_text())
        *scores, difference, verdict = [c.strip().strip("*") for c in cells.split("|")]
        summary, main = made["summary"], made["claims"]["main"]
        want = [f"{summary[m]['score_mean']:.1f} ± {summary[m]['score_std']:.1f}" for m in columns]
        assert [s.replace("−", "-") for s in scores] == want, name
        interval = f"{main['mean_difference']:+.1f} [{main['lo']:.1f}, {main['hi']:.1f}]"
        assert difference.replace("−", "-") == interval, name
        assert verdict == main["verdict"], name


def test_mujoco_claims_table_matches_committed_claims():
    """docs/mujoco.md's table of the meta-RL families' paired claims."""
    columns = ("cmt_tuned", "cmt_zero_shot", "prompt_dt", "mtdt")
    header = "| family | CMT + prompt tuning |"
    check_claims_table("mujoco.md", header, ("cheetah-vel", "cheetah-dir", "ant-dir"), columns)


def test_d4rl_claims_table_matches_committed_claims():
    """docs/d4rl.md's table of the D4RL-style datasets' paired claims."""
    columns = ("dt", "bc", "filtered_bc", "cmt_zero_shot", "cmt_tuned")
    names = tuple(
        f"{e} medium-{lvl}"
        for e in ("hopper", "walker2d", "halfcheetah")
        for lvl in ("expert", "replay")
    )
    check_claims_table("d4rl.md", "| dataset | DT | BC | filtered BC |", names, columns)


def test_mujoco_results_table_matches_committed_results():
    """docs/mujoco.md's table of the meta-RL families is typed by hand: every score and every
    count of tasks at or above Prompt-DT must be what results/<family>/results.json holds."""
    text = (ROOT / "docs" / "mujoco.md").read_text()
    table = text[text.index("| family | CMT + tuning |") :].split("\n\n")[0]
    rows = re.findall(r"^\| (cheetah-vel|cheetah-dir|ant-dir) \|(.*)\|$", table, flags=re.MULTILINE)
    assert sorted(f for f, _ in rows) == ["ant-dir", "cheetah-dir", "cheetah-vel"]
    columns = ("cmt_tuned", "cmt_zero_shot", "prompt_dt", "mtdt")
    for family, cells in rows:
        path = ROOT / "results" / family.replace("-", "_") / "results.json"
        summary = json.loads(path.read_text())["summary"]
        *scores, verdict = [c.strip().strip("*") for c in cells.split("|")]
        want = [f"{summary[m]['score_mean']:.1f} ± {summary[m]['score_std']:.1f}" for m in columns]
        assert scores == want, family
        tuned, pdt = summary["cmt_tuned"], summary["prompt_dt"]
        at_or_above = sum(
            tuned["per_task_score"][t] >= pdt["per_task_score"][t] for t in tuned["per_task_score"]
        )
        overall = "yes" if tuned["score_mean"] >= pdt["score_mean"] else "no"
        tasks = len(tuned["per_task_score"])
        assert verdict == f"{overall}, on {at_or_above} of {tasks} tasks", family

"""Every code dependency ``dvc.yaml`` names exists: a moved module must move there too, or
DVC fails the stage at run time (``No such file or directory``)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_dependency_of_a_stage_exists() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for dep in body.get("deps", []):
            if dep.startswith(("cmt/", "pipelines/")) and not (ROOT / dep).exists():
                missing.append(f"{name}: {dep}")
    assert not missing, missing

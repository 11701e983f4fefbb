"""Shared fixtures: tiny configurations and datasets generated into temp dirs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import absl.logging
import pytest
import torch

from cmt.config import Params, parse_params
from cmt.device import jax_on_cpu

jax_on_cpu()  # as the pipeline's SMAX benchmark does, before any test imports jax

# jax (under SMAX) creates absl's logging handler on the stderr of the moment, which inside a
# test is pytest's capture stream; when Prefect later reconfigures logging, absl closes that
# stream (it only spares the streams that are sys.stderr right then), and every later test's
# output capture fails. Binding the handler to the real stderr, which absl never closes, first:
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

TINY = {
    "data": {
        "num_tasks": 8,
        "test_tasks": [1, 5],
        "horizon": 20,
        "episodes_per_level": 3,
        "demo_episodes": 4,
        "reference_episodes": 3,
    },
    "model": {"n_layer": 2, "d_model": 32, "n_head": 2, "context_len": 5, "context_size": 8},
    # every loss term some preset trains (the point-robot default has no heads, no InfoNCE)
    "pretrain": {
        "steps": 30,
        "batch_size": 16,
        "warmup_steps": 5,
        "checkpoint_every": 10,
        "w_dyn": 0.5,
        "w_con": 0.1,
    },
    "prompt_tune": {"steps": 20, "batch_size": 8, "eval_every": 5},
    "evaluate": {"episodes": 2},
    "compare": {"seeds": [0]},
}


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores here; more threads than cores only adds contention.
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(TINY)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    from cmt.benchmarks import make_benchmark

    out = tmp_path_factory.mktemp("tiny_data")
    make_benchmark(parse_params(TINY).data).build_datasets(out, progress=False)
    return out


ROOT = Path(__file__).resolve().parents[1]


def clone_like_repo(path: Path, env: dict[str, str]) -> None:
    """Make ``path`` a committed git + DVC repository of the project's code, ``dvc.yaml`` and
    the ``params.yaml`` already written there (what a fresh clone has)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # behaviour/: the committed behaviour policies, a dependency of the collect stage.
    for name in ("cmt", "pipelines", "presets", "behaviour"):
        shutil.copytree(ROOT / name, path / name, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "test"],
        ["git", "config", "user.email", "test@example.com"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny pipeline"],
    ):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)

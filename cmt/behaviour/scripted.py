"""The point robot's scripted behaviour policies (a noisy straight-to-goal expert, whose noise
makes it medium or expert, and uniform random actions) and the datasets they generate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cmt.atomic import make_dir, write_json
from cmt.behaviour.rollout import (
    Policy,
    concat_transitions,
    random_streams,
    rollout,
    seed_from,
    with_level,
)
from cmt.data.schema import TransitionData
from cmt.envs.point_robot import STEP_SIZE, PointRobotFamily
from cmt.integrity import sealed_json

# One independent random stream per (purpose, level), spawned from the data seed in this order.
STREAMS: tuple[str, ...] = (
    "train/random",
    "train/medium",
    "train/expert",
    "demos/expert",
    "reference/random",
    "reference/expert",
)


def scripted_expert(
    obs: np.ndarray, goals: np.ndarray, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Move straight to the goal at full speed, plus Gaussian noise; actions (B, 2) float32."""
    greedy = np.clip((goals - obs) / STEP_SIZE, -1.0, 1.0)
    noisy = greedy + rng.normal(0.0, noise_std, size=greedy.shape)
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def random_actions(batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """The random behaviour policy: uniform actions in [-1, 1]; (B, 2) float32."""
    return rng.uniform(-1.0, 1.0, size=(batch_size, 2)).astype(np.float32)


@dataclass(frozen=True)
class PointRobotPlan:
    """What the point robot's datasets hold (the benchmark's ``data`` section, in numbers)."""

    seed: int
    train_tasks: tuple[int, ...]
    test_tasks: tuple[int, ...]
    levels: tuple[str, ...]  # of the training data: random, medium, expert
    episodes_per_level: int
    demo_episodes: int
    reference_episodes: int
    noise: dict[str, float]  # Gaussian action noise of the medium and expert policies


Run = Callable[[str, np.ndarray], tuple[TransitionData, np.ndarray]]
"""``run(stream, task_ids)``: one episode per task id with the stream's level and rng."""


def _runner(family: PointRobotFamily, plan: PointRobotPlan) -> Run:
    rngs = random_streams(plan.seed, STREAMS)

    def policy_for(level: str, rng: np.random.Generator) -> Policy:
        if level == "random":
            return lambda obs, ids: random_actions(obs.shape[0], rng)
        noise = plan.noise[level]
        return lambda obs, ids: scripted_expert(obs, family.goals[ids], noise, rng)

    def run(stream: str, task_ids: np.ndarray) -> tuple[TransitionData, np.ndarray]:
        level = stream.split("/")[1]
        rng = rngs[stream]
        data, returns = rollout(family, task_ids, policy_for(level, rng), seed_from(rng))
        return with_level(data, level), returns

    return run


def build_point_robot(
    family: PointRobotFamily, plan: PointRobotPlan, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Write ``train.hdf5``, ``demos.hdf5`` and ``references.json``; returns a summary.

    Train tasks get ``episodes_per_level`` episodes of each level; test tasks get
    ``demo_episodes`` expert demonstrations; every task gets its random and expert reference
    returns. The output depends only on ``plan``."""
    from cmt.data.hdf5 import write_hdf5  # lazy: keeps env imports free of h5py

    out_dir = Path(out_dir)
    make_dir(out_dir)
    run = _runner(family, plan)
    base_meta: dict[str, Any] = {
        "family": family.name,
        "num_tasks": family.num_tasks,
        "horizon": family.horizon,
        "seed": plan.seed,
        "levels": list(plan.levels),
        "train_tasks": list(plan.train_tasks),
        "test_tasks": list(plan.test_tasks),
    }
    summary: dict[str, Any] = {"family": family.name}
    bar = tqdm(total=len(plan.levels) + 3, desc=f"generate {family.name}", disable=not progress)
    with bar:
        train, summary["train"] = _train_split(run, plan, bar)
        write_hdf5(
            out_dir / "train.hdf5", concat_transitions(train, {**base_meta, "split": "train"})
        )
        bar.set_postfix_str("demos")
        test_tasks = np.asarray(plan.test_tasks, dtype=np.int64)
        demos, demo_returns = run("demos/expert", np.repeat(test_tasks, plan.demo_episodes))
        demos = concat_transitions([demos], {**base_meta, "split": "demos"})
        write_hdf5(out_dir / "demos.hdf5", demos)
        summary["demos"] = {
            "episodes": len(test_tasks) * plan.demo_episodes,
            "transitions": len(demos),
            "mean_return": float(demo_returns.mean()),
        }
        bar.update()
        references, summary["references"] = _references(run, family, plan, bar)
        write_json(out_dir / "references.json", sealed_json(references))
    return summary


def _train_split(
    run: Run, plan: PointRobotPlan, bar: Any
) -> tuple[list[TransitionData], dict[str, Any]]:
    """The training episodes of every level, and their summary."""
    train_tasks = np.asarray(plan.train_tasks, dtype=np.int64)
    parts, level_means = [], {}
    for level in plan.levels:
        bar.set_postfix_str(f"train/{level}")
        data, returns = run(f"train/{level}", np.repeat(train_tasks, plan.episodes_per_level))
        parts.append(data)
        level_means[level] = float(returns.mean())
        bar.update()
    summary = {
        "episodes": len(plan.levels) * len(train_tasks) * plan.episodes_per_level,
        "transitions": sum(len(p) for p in parts),
        "mean_return": level_means,
    }
    return parts, summary


def _references(
    run: Run, family: PointRobotFamily, plan: PointRobotPlan, bar: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """Every task's random and expert reference return (for normalised scores)."""
    num_tasks = family.num_tasks
    all_tasks = np.repeat(np.arange(num_tasks), plan.reference_episodes)
    refs: dict[str, np.ndarray] = {}
    for level in ("random", "expert"):
        bar.set_postfix_str(f"reference/{level}")
        _, returns = run(f"reference/{level}", all_tasks)
        refs[level] = returns.reshape(num_tasks, plan.reference_episodes).mean(axis=1)
        bar.update()
    references: dict[str, Any] = {
        "family": family.name,
        "train_tasks": list(plan.train_tasks),
        "test_tasks": list(plan.test_tasks),
    }
    for task in range(num_tasks):
        references[str(task)] = {
            "random": float(refs["random"][task]),
            "expert": float(refs["expert"][task]),
        }
    return references, {level: float(refs[level].mean()) for level in ("random", "expert")}

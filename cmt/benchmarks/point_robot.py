"""The embedded default benchmark: point-robot navigation to goals on a half circle.

Offline meta-RL on a pure-NumPy task family (``cmt/envs/point_robot.py``) with scripted
behaviour policies, small enough that the whole pipeline runs on 2 CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from cmt.atomic import write_json
from cmt.behaviour.rollout import (
    LEVELS,
    Policy,
    concat_transitions,
    random_streams,
    rollout,
    seed_from,
    with_level,
)
from cmt.behaviour.scripted import random_actions, scripted_expert
from cmt.benchmarks.base import MetricsCallback
from cmt.benchmarks.meta import MetaBenchmark, MetaData
from cmt.data.schema import TransitionData
from cmt.envs.point_robot import PointRobotFamily
from cmt.integrity import sealed_json

# One independent random stream per (purpose, level), spawned from data.seed in this order.
_STREAMS: tuple[str, ...] = (
    "train/random",
    "train/medium",
    "train/expert",
    "demos/expert",
    "reference/random",
    "reference/expert",
)


class PointRobotData(MetaData):
    """``data`` section of the point robot (the embedded default)."""

    benchmark: Literal["point_robot"] = Field(
        "point_robot", description="Benchmark id (presets/<name>.yaml hold the others)."
    )
    num_tasks: int = Field(40, ge=2, description="Number of goals on the half circle.")
    horizon: int = Field(50, ge=2, description="Episode length (steps) before truncation.")
    medium_noise: float = Field(
        3.0,
        ge=0.0,
        description="Gaussian action noise std of the medium behaviour policy "
        "(3.0 scores about 50 normalised).",
    )
    expert_noise: float = Field(
        0.05, ge=0.0, description="Gaussian action noise std of the expert behaviour policy."
    )

    @model_validator(mode="after")
    def _test_tasks_in_range(self) -> PointRobotData:
        bad = [t for t in self.test_tasks if not 0 <= t < self.num_tasks]
        if bad:
            raise ValueError(f"test_tasks {bad} are outside [0, num_tasks={self.num_tasks})")
        if len(set(self.test_tasks)) != len(self.test_tasks):
            raise ValueError("test_tasks contains duplicates")
        if len(self.test_tasks) >= self.num_tasks:
            raise ValueError("at least one task must remain for pretraining")
        return self

    @property
    def train_tasks(self) -> tuple[int, ...]:
        return tuple(t for t in range(self.num_tasks) if t not in set(self.test_tasks))

    def build(self) -> PointRobot:
        return PointRobot(self)


class PointRobot(MetaBenchmark):
    """Point robot: scripted random / medium / expert behaviour, unseen goals held out."""

    cfg: PointRobotData
    levels: ClassVar[tuple[str, ...]] = LEVELS[:3]

    def __init__(self, cfg: PointRobotData) -> None:
        super().__init__(cfg, PointRobotFamily(num_tasks=cfg.num_tasks, horizon=cfg.horizon))
        self.family: PointRobotFamily

    def build_datasets(
        self,
        out_dir: Path,
        behaviour_root: Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Write ``train.hdf5``, ``demos.hdf5`` and ``references.json`` for the point robot.

        Train tasks get ``cfg.episodes_per_level`` episodes of each level (random, medium,
        expert); test tasks get ``cfg.demo_episodes`` expert demonstrations; every task gets its
        random and expert reference returns. The output depends only on ``cfg``.
        """
        from cmt.data.hdf5 import write_hdf5  # lazy: keeps env imports free of h5py

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg, family = self.cfg, self.family
        rngs = random_streams(cfg.seed, _STREAMS)
        train_tasks = np.asarray(cfg.train_tasks, dtype=np.int64)
        test_tasks = np.asarray(cfg.test_tasks, dtype=np.int64)
        noise = {"medium": cfg.medium_noise, "expert": cfg.expert_noise}

        def policy_for(level: str, rng: np.random.Generator) -> Policy:
            if level == "random":
                return lambda obs, ids: random_actions(obs.shape[0], rng)
            return lambda obs, ids: scripted_expert(obs, family.goals[ids], noise[level], rng)

        def run(stream: str, task_ids: np.ndarray) -> tuple[TransitionData, np.ndarray]:
            level = stream.split("/")[1]
            rng = rngs[stream]
            data, returns = rollout(family, task_ids, policy_for(level, rng), seed_from(rng))
            return with_level(data, level), returns

        base_meta: dict[str, Any] = {
            "family": family.name,
            "num_tasks": cfg.num_tasks,
            "horizon": cfg.horizon,
            "seed": cfg.seed,
            "levels": list(self.levels),
            "train_tasks": train_tasks.tolist(),
            "test_tasks": test_tasks.tolist(),
        }
        summary: dict[str, Any] = {"family": family.name}
        with tqdm(
            total=len(self.levels) + 3, desc=f"generate {family.name}", disable=not progress
        ) as bar:
            parts, level_means = [], {}
            for level in self.levels:
                bar.set_postfix_str(f"train/{level}")
                data, returns = run(
                    f"train/{level}", np.repeat(train_tasks, cfg.episodes_per_level)
                )
                parts.append(data)
                level_means[level] = float(returns.mean())
                bar.update()
            train = concat_transitions(parts, {**base_meta, "split": "train"})
            write_hdf5(out_dir / "train.hdf5", train)
            summary["train"] = {
                "episodes": len(self.levels) * len(train_tasks) * cfg.episodes_per_level,
                "transitions": len(train),
                "mean_return": level_means,
            }

            bar.set_postfix_str("demos")
            demos, demo_returns = run("demos/expert", np.repeat(test_tasks, cfg.demo_episodes))
            demos = concat_transitions([demos], {**base_meta, "split": "demos"})
            write_hdf5(out_dir / "demos.hdf5", demos)
            summary["demos"] = {
                "episodes": len(test_tasks) * cfg.demo_episodes,
                "transitions": len(demos),
                "mean_return": float(demo_returns.mean()),
            }
            bar.update()

            # Reference returns of every task, for normalised scores.
            all_tasks = np.repeat(np.arange(cfg.num_tasks), cfg.reference_episodes)
            refs: dict[str, np.ndarray] = {}
            for level in ("random", "expert"):
                bar.set_postfix_str(f"reference/{level}")
                _, returns = run(f"reference/{level}", all_tasks)
                refs[level] = returns.reshape(cfg.num_tasks, cfg.reference_episodes).mean(axis=1)
                bar.update()
            references: dict[str, Any] = {
                "family": family.name,
                "train_tasks": train_tasks.tolist(),
                "test_tasks": test_tasks.tolist(),
            }
            for task in range(cfg.num_tasks):
                references[str(task)] = {
                    "random": float(refs["random"][task]),
                    "expert": float(refs["expert"][task]),
                }
            write_json(out_dir / "references.json", sealed_json(references))
            summary["references"] = {
                level: float(refs[level].mean()) for level in ("random", "expert")
            }
        return summary

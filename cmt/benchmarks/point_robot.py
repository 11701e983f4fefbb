"""The embedded default benchmark: point-robot navigation to goals on a half circle.

Offline meta-RL on a pure-NumPy task family (``cmt/envs/point_robot.py``) with scripted
behaviour policies, small enough that the whole pipeline runs on 2 CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cmt.behaviour.rollout import LEVELS
from cmt.behaviour.scripted import PointRobotPlan, build_point_robot
from cmt.benchmarks.base import MetricsCallback
from cmt.benchmarks.meta import MetaBenchmark, MetaData
from cmt.envs.point_robot import PointRobotFamily


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
        """Write ``train.hdf5``, ``demos.hdf5`` and ``references.json`` for the point robot
        (``cmt.behaviour.scripted.build_point_robot``); the output depends only on ``cfg``."""
        cfg = self.cfg
        plan = PointRobotPlan(
            seed=cfg.seed,
            train_tasks=cfg.train_tasks,
            test_tasks=tuple(cfg.test_tasks),
            levels=self.levels,
            episodes_per_level=cfg.episodes_per_level,
            demo_episodes=cfg.demo_episodes,
            reference_episodes=cfg.reference_episodes,
            noise={"medium": cfg.medium_noise, "expert": cfg.expert_noise},
        )
        return build_point_robot(self.family, plan, out_dir, progress)

"""What the offline meta-RL benchmarks share: a task family with a train/test split, few-shot
demonstrations of the unseen test tasks as the prompt data, and per-task reference returns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field, field_validator

from cmt.benchmarks.base import Benchmark, Claim, Data, DataSection, Spaces
from cmt.methods import ABLATION_METHODS

if TYPE_CHECKING:
    from cmt.data.dataset import OfflineDataset
    from cmt.envs.registry import BatchedEnv, TaskFamily


class MetaData(DataSection):
    """Fields of every meta-RL ``data`` section."""

    test_tasks: tuple[int, ...] = Field(
        (2, 7, 15, 23, 26),
        min_length=1,
        description="Task ids whose prompts are made from demonstrations and that are "
        "evaluated (held out from pretraining unless the benchmark trains on them).",
    )
    episodes_per_level: int = Field(
        10,
        ge=1,
        description="Episodes per behaviour level and training task (point robot: random, "
        "medium, expert; MuJoCo: medium and expert, plus the medium-replay episodes).",
    )
    demo_episodes: int = Field(
        5, ge=2, description="Expert demonstration episodes per test task (few-shot target data)."
    )
    reference_episodes: int = Field(
        20, ge=1, description="Episodes used to measure each task's random and expert return."
    )

    methods: ClassVar[tuple[str, ...]] = (
        "mtdt",
        "prompt_dt",
        "cmt_zero_shot",
        "cmt_tuned",
        *ABLATION_METHODS,
    )
    target_returns: ClassVar[tuple[str, ...]] = ("demo", "max_train")
    claim: ClassVar[Claim] = Claim("cmt_tuned", "prompt_dt", margin=2.0)  # normalised points

    @field_validator("test_tasks")
    @classmethod
    def _test_tasks_distinct(cls, tasks: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 0 for t in tasks):
            raise ValueError("task ids must be non-negative")
        if len(set(tasks)) != len(tasks):
            raise ValueError("contains duplicates")
        return tasks


class MetaBenchmark(Benchmark):
    """A task family: prompts for the test tasks come from their demonstrations."""

    cfg: MetaData
    kind: ClassVar[str] = "Offline meta-RL"

    def __init__(self, cfg: MetaData, family: TaskFamily) -> None:
        super().__init__(cfg)
        self.family = family

    @property
    def spaces(self) -> Spaces:
        return Spaces(self.family.obs_dim, self.family.act_dim)

    @property
    def eval_tasks(self) -> tuple[int, ...]:
        return tuple(self.cfg.test_tasks)

    @property
    def horizon(self) -> int:
        return self.family.horizon

    def make_batched_env(self, task_ids: np.ndarray) -> BatchedEnv:
        return self.family.make_batched_env(task_ids)

    def load(self, data_dir: str | Path) -> Data:
        """:meth:`Benchmark.load`, refusing data made for other scored tasks: every scored
        task needs its demonstrations, and a carved-out task none of the training data."""
        from cmt.integrity import ArtifactError

        data = super().load(data_dir)
        demo_tasks = set() if data.demos is None else set(map(int, data.demos.tasks))
        missing = [t for t in self.eval_tasks if t not in demo_tasks]
        if missing:
            raise ArtifactError(
                f"{data_dir}: no demonstrations of the scored tasks {missing}; the data was "
                "made for other tasks, so rerun collect with this data section"
            )
        leaked = sorted(set(self.unseen_tasks) & set(map(int, data.train.tasks)))
        if leaked:
            raise ArtifactError(
                f"{data_dir}: train.hdf5 holds tasks {leaked}, which must be unseen in "
                "pretraining; rerun collect with this data section"
            )
        return data

    @property
    def unseen_tasks(self) -> tuple[int, ...]:
        """Scored tasks that the training data must not hold (all of them by default)."""
        return self.eval_tasks

    def prompt_target(self, data: Data, task: int) -> OfflineDataset:
        assert data.demos is not None, "meta-RL datasets always have demos.hdf5"
        return data.demos.select_tasks([task])

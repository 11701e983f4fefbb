"""The MuJoCo meta-RL benchmarks of MACAW and Prompt-DT: cheetah-vel, cheetah-dir, ant-dir.

Task families on Gymnasium v5 (``cmt/envs/mujoco_tasks.py``); the offline data comes from one
task-conditioned SAC policy per family, trained in the ``collect`` stage
(``cmt/behaviour/sac.py``, docs/mujoco.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from cmt.behaviour.rollout import LEVELS
from cmt.benchmarks.base import MetricsCallback
from cmt.benchmarks.meta import MetaBenchmark, MetaData
from cmt.sections import SacConfig

if TYPE_CHECKING:
    from cmt.envs.mujoco_tasks import MujocoTaskFamily


class MujocoMetaData(MetaData):
    """``data`` section of a MuJoCo meta-RL family."""

    benchmark: Literal["cheetah_vel", "cheetah_dir", "ant_dir"] = Field(
        description="Task family (presets/<family>.yaml)."
    )
    num_tasks: int | None = Field(
        None,
        ge=2,
        description="Keep only the family's first tasks (tests); null = all of them.",
    )
    sac: SacConfig = Field(default_factory=SacConfig, description="SAC behaviour policies.")
    validation_tasks: tuple[int, ...] = Field(
        (),
        description="Training tasks carved out for validation (docs/method.md, validation "
        "protocol): left out of train.hdf5, given demonstrations, and scored instead of "
        "test_tasks. Empty (default) = score the test tasks.",
    )

    @model_validator(mode="after")
    def _split_of_the_benchmark(self) -> MujocoMetaData:
        from cmt.envs.mujoco_tasks import task_split

        # A subset of the benchmark's test tasks is fine (the evaluate stage maps over them);
        # a training task named as a test task is not.
        train, test = task_split(self.benchmark, self.num_tasks)
        if not set(self.test_tasks) <= set(test):
            raise ValueError(
                f"test_tasks {list(self.test_tasks)} disagree with the {self.benchmark} split "
                f"(test tasks {list(test)} for num_tasks={self.num_tasks})"
            )
        self._check_validation_tasks(train, test)
        return self

    def _check_validation_tasks(self, train: tuple[int, ...], test: tuple[int, ...]) -> None:
        val = self.validation_tasks
        if not val:
            return
        if set(train) & set(test):  # cheetah-dir: its two tasks are both test tasks
            raise ValueError(
                f"{self.benchmark} trains on its test tasks, so no task can be carved out for "
                "validation; choose on other evaluation seeds (evaluate.seed) instead"
            )
        if len(set(val)) != len(val):
            raise ValueError(f"validation_tasks {list(val)} contain duplicates")
        if not set(val) <= set(train):
            raise ValueError(
                f"validation_tasks {list(val)} must be training tasks of {self.benchmark} "
                f"({list(train)} for num_tasks={self.num_tasks})"
            )
        if len(val) >= len(train):
            raise ValueError("at least one training task must remain for pretraining")

    @property
    def train_task_ids(self) -> tuple[int, ...]:
        """The training tasks whose data ``train.hdf5`` holds (validation tasks carved out)."""
        from cmt.envs.mujoco_tasks import task_split

        train, _ = task_split(self.benchmark, self.num_tasks)
        carved = set(self.validation_tasks)
        return tuple(t for t in train if t not in carved)

    @property
    def eval_task_ids(self) -> tuple[int, ...]:
        """The tasks that get demonstrations and are scored: validation or test tasks."""
        return tuple(self.validation_tasks or self.test_tasks)

    def build(self) -> MujocoMeta:
        return MujocoMeta(self)


class MujocoMeta(MetaBenchmark):
    """A MuJoCo task family with SAC-generated medium, expert and medium-replay data."""

    cfg: MujocoMetaData
    family: MujocoTaskFamily
    levels: ClassVar[tuple[str, ...]] = LEVELS

    def __init__(self, cfg: MujocoMetaData) -> None:
        from cmt.envs.mujoco_tasks import mujoco_family

        super().__init__(cfg, mujoco_family(cfg.benchmark, cfg.num_tasks))

    def build_datasets(
        self,
        out_dir: Path,
        behaviour_root: Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        from cmt.behaviour.committed import behaviour_for
        from cmt.behaviour.sac import generate_mujoco

        cfg = self.cfg
        ckpt = None if behaviour_root is None else Path(behaviour_root) / self.family.name
        behaviour = behaviour_for(  # the training split holds medium-replay
            *(self.family, cfg.sac, cfg.seed, cfg.reference_episodes, ckpt, on_metrics),
            progress,
            history=True,
        )
        return generate_mujoco(behaviour, cfg, out_dir, progress)

    @property
    def eval_tasks(self) -> tuple[int, ...]:
        return self.cfg.eval_task_ids

    @property
    def unseen_tasks(self) -> tuple[int, ...]:
        # cheetah-dir trains on its test tasks; carved-out validation tasks are always unseen
        if self.family.test_tasks_seen and not self.cfg.validation_tasks:
            return ()
        return self.eval_tasks

    def evaluated_on(self) -> str:
        if self.cfg.validation_tasks:
            return f"the validation tasks {list(self.eval_tasks)}"
        return super().evaluated_on()

    def describe(self, episodes: int) -> str:
        text = super().describe(episodes)
        if self.cfg.validation_tasks:
            return text.replace("Test tasks", "Validation tasks (carved from the training tasks)")
        if self.family.test_tasks_seen:
            text = text.replace(f"of {self.name};", f"of {self.name} (also training tasks);")
        return text

    def quality_target(self, level: str, stats: dict[str, float]) -> tuple[str, bool] | None:
        if level != "expert":
            return None
        published = PROMPT_DT_PUBLISHED[self.cfg.benchmark]
        return f">= {published:g} return (Prompt-DT's agents)", stats["return_mean"] >= published

    def quality_reference(self) -> str:
        return f"Prompt-DT agents: {PROMPT_DT_PUBLISHED[self.cfg.benchmark]:g}"

    def published(self) -> dict[str, Any] | None:
        value = PROMPT_DT_PUBLISHED[self.cfg.benchmark]
        return {"label": "Prompt-DT (published)", "value": value, "metric": "return_mean"}


PROMPT_DT_PUBLISHED: dict[str, float] = {
    "cheetah_dir": 927.2,
    "cheetah_vel": -37.9,
    "ant_dir": 367.1,
}
"""Prompt-DT's published return on the test tasks with expert data and K* = 5 (Xu et al.,
ICML 2022). Other environments, data and budgets (docs/mujoco.md): context only."""

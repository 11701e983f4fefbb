"""The benchmark protocol: everything setting-specific, behind one interface.

A *benchmark* (docs/architecture.md, "The benchmark layer") says what its spaces are, which
tasks it evaluates, how its datasets are built and loaded, what a prompt is fitted on, and how
returns are scored. Everything else (models, trainers, the pipeline stages) only talks to this
interface, so nothing outside ``cmt/benchmarks/<name>.py`` branches on a benchmark's name.

Each benchmark module defines a ``data`` config section (a :class:`DataSection`, one member of
the discriminated union ``cmt.benchmarks.DataConfig``) and the :class:`Benchmark` it builds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from cmt.data.dataset import PromptData
from cmt.data.schema import LEVEL
from cmt.sections import MAX_NAME_LEN, NAME_PATTERN, NAME_RULE, Section, Seed, is_safe_name

if TYPE_CHECKING:
    from cmt.data.dataset import OfflineDataset
    from cmt.envs.registry import BatchedEnv

TRAIN_FILE, DEMOS_FILE, REFERENCES_FILE = "train.hdf5", "demos.hdf5", "references.json"
"""Files of a dataset directory: the pretraining data, the few-shot demonstrations of
benchmarks with unseen tasks, and each task's random and expert reference return."""

MetricsCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Claim:
    """What a benchmark's results are judged on (docs/method.md, "Statistics and verdicts"):
    the method under test, the main baseline it is paired with by seed, and the margin δ, in
    points of the benchmark's score, of an "at or above" verdict. δ is fixed before the runs it
    judges: changing it after seeing results would make the verdict meaningless."""

    method: str
    baseline: str
    margin: float


class DataSection(Section):
    """Fields every benchmark's ``data`` section has; subclasses add their own.

    ``name`` is the dataset id: it names the data directory (``data/<name>``) and the
    registered model (``cmt-<name>``), so it must be written out for DVC; each benchmark
    checks that it matches what its other fields describe.
    """

    benchmark: str
    name: str = Field(
        "",
        pattern=f"^$|{NAME_PATTERN}",
        max_length=MAX_NAME_LEN,
        description=f"Dataset id (data/<name>, registered model cmt-<name>): {NAME_RULE}; "
        "empty = derived from the other fields.",
    )
    seed: Seed = Field(0, description="Seed of data generation (independent of train seeds).")

    methods: ClassVar[tuple[str, ...]]
    """Methods (``cmt.methods``) this benchmark compares."""
    target_returns: ClassVar[tuple[str, ...]]
    """Accepted ``evaluate.target_return`` modes of return-conditioned methods."""
    claim: ClassVar[Claim]
    """The method under test, its main baseline (both in :attr:`methods`) and the margin δ."""

    def expected_name(self) -> str:
        """The dataset id these settings describe."""
        return self.benchmark

    def unused_fields(self) -> tuple[str, ...]:
        """Fields that have no effect under these settings (left out of a run's logged
        parameters): none by default."""
        return ()

    def name_origin(self) -> str:
        """Where :meth:`expected_name` comes from, for the message that refuses it."""
        return "these settings"

    @model_validator(mode="after")
    def _name_matches(self) -> DataSection:
        expected = self.expected_name()
        if not is_safe_name(expected):
            # It becomes a directory and a DVC stage argument: refuse before either exists.
            raise ValueError(
                f"the dataset id {expected!r} from {self.name_origin()} is not a safe name "
                f"({NAME_RULE})"
            )
        if not self.name:
            object.__setattr__(self, "name", expected)  # frozen model: fill the derived id
        elif self.name != expected:
            raise ValueError(
                f"name {self.name!r} does not match these settings: expected {expected!r} "
                "(it names data/<name> and the registered model)"
            )
        return self

    def build(self) -> Benchmark:
        """The benchmark these settings describe."""
        raise NotImplementedError


@dataclass(frozen=True)
class Spaces:
    """Observation and action spaces of one agent, and how many agents act."""

    obs_dim: int
    act_dim: int  # width of a continuous action, or the number of discrete actions
    discrete: bool = False
    num_agents: int = 1


@dataclass(frozen=True)
class Data:
    """A loaded, validated dataset directory."""

    train: OfflineDataset  # what every backbone pretrains on
    demos: (
        OfflineDataset | None
    )  # few-shot demonstrations of unseen tasks, if the benchmark has any
    references: dict[int, tuple[float, float]]  # task -> (random, expert) return of its score


@dataclass(frozen=True)
class Episodes:
    """Outcomes of some episodes of one task: what a benchmark scores."""

    returns: np.ndarray  # (E,) undiscounted (team) return
    won: np.ndarray | None = None  # (E,) bool, for benchmarks with a win condition


class Benchmark(ABC):
    """One setting: spaces, tasks, datasets, prompt data and scores (see module docstring)."""

    levels: ClassVar[tuple[str, ...]]
    """Behaviour levels of the training data; ``infos/level`` indexes this tuple."""
    kind: ClassVar[str]
    """The setting, for grouping results tables (datasets of one kind share their methods)."""
    score_caption: ClassVar[str] = "Score: 100 × (R − random) / (expert − random) per task."
    score_name: ClassVar[str] = "normalised score"
    """The score's name in table headers and plot axes."""
    score_axis: ClassVar[str] = "(0 = random, 100 = expert)"

    def __init__(self, cfg: DataSection) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def claim(self) -> Claim:
        """The method under test, its main baseline and the margin δ (the data section's)."""
        return self.cfg.claim

    # ------------------------------------------------------------------ environment side
    @property
    @abstractmethod
    def spaces(self) -> Spaces: ...

    @property
    @abstractmethod
    def eval_tasks(self) -> tuple[int, ...]:
        """Tasks that prompts are made for and that are evaluated."""

    @property
    @abstractmethod
    def horizon(self) -> int:
        """Episode length limit of evaluation rollouts."""

    @abstractmethod
    def make_batched_env(self, task_ids: np.ndarray) -> BatchedEnv:
        """One evaluation episode per entry of ``task_ids``, stepped together."""

    # ------------------------------------------------------------------ data side
    @abstractmethod
    def build_datasets(
        self,
        out_dir: Path,
        behaviour_root: Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Write the dataset directory (``collect``); returns a JSON-able summary.

        Trained behaviour policies keep resumable checkpoints under ``behaviour_root``."""

    def load(self, data_dir: str | Path) -> Data:
        """Read and validate a dataset directory written by :meth:`build_datasets`."""
        from cmt.data.dataset import OfflineDataset
        from cmt.data.hdf5 import read_hdf5
        from cmt.integrity import ArtifactError, read_json

        data_dir = Path(data_dir)
        train = OfflineDataset(read_hdf5(data_dir / TRAIN_FILE))
        demos = data_dir / DEMOS_FILE
        # Every task that is scored needs its reference returns.
        scored = sorted({*map(int, train.tasks), *self.eval_tasks})
        path = data_dir / REFERENCES_FILE
        refs = read_json(path, required=[str(t) for t in scored])
        bad = [
            k
            for k, v in refs.items()
            if k.isdigit() and not (isinstance(v, dict) and {"random", "expert"} <= set(v))
        ]
        if bad:
            raise ArtifactError(f"{path}: tasks {bad} lack key 'random' or 'expert'")
        return Data(
            train=train,
            demos=OfflineDataset(read_hdf5(demos)) if demos.exists() else None,
            references={
                int(k): (float(v["random"]), float(v["expert"]))
                for k, v in refs.items()
                if k.isdigit()
            },
        )

    @abstractmethod
    def prompt_target(self, data: Data, task: int) -> OfflineDataset:
        """The episodes a task's prompt is fitted on (demonstrations, or the best episodes)."""

    def prompt_data(self, data: Data, task: int, val_fraction: float, seed: int) -> PromptData:
        """``prompt_target`` split into fitting and held-out validation episodes."""
        fit, val = self.prompt_target(data, task).split_episodes(val_fraction, seed)
        return PromptData(fit, val)

    def target_return(self, data: Data, task: int, mode: str) -> float:
        """Return-to-go target of return-conditioned methods on ``task``."""
        if mode == "max_train":
            return float(data.train.ep_return.max())
        if mode == "demo" and data.demos is not None:
            return float(data.demos.select_tasks([task]).ep_return.mean())
        raise ValueError(f"target_return {mode!r} is not defined for benchmark {self.name!r}")

    # ------------------------------------------------------------------ scores
    def score(self, data: Data, task: int, episodes: Episodes) -> np.ndarray:
        """Score of every episode: by default the normalised return, 0 = the task's random,
        100 = its expert; (E,)."""
        random, expert = data.references[task]
        returns = np.asarray(episodes.returns, dtype=np.float64)
        return 100.0 * (returns - random) / (expert - random)

    def episode_scores(self, data: Data, ds: OfflineDataset) -> np.ndarray:
        """Normalised score of every episode of ``ds`` (each scored as its own task); (E,)."""
        scores = np.empty(ds.num_episodes)
        for task in np.unique(ds.ep_task):
            mine = ds.ep_task == task
            scores[mine] = self.score(data, int(task), Episodes(ds.ep_return[mine]))
        return scores

    def level_episodes(self, ds: OfflineDataset) -> dict[str, np.ndarray]:
        """Episodes (E,) bool of each behaviour level present in ``ds`` (``infos/level``);
        empty for data that records no levels (a real dataset file)."""
        if LEVEL not in ds.data.infos:
            return {}
        ep_level = ds.data.infos[LEVEL][ds.ep_start]  # (E,)
        return {lv: ep_level == i for i, lv in enumerate(self.levels) if np.any(ep_level == i)}

    def quality(self, data: Data) -> dict[str, dict[str, float]]:
        """What the data is worth, per behaviour level and for ``all`` (and ``demos``):
        episodes, transitions, and the mean, p10, p90 and max of the episode return and
        score (the score a results table uses). The data-quality tables come from this."""
        train = data.train
        groups = {"all": np.ones(train.num_episodes, dtype=bool), **self.level_episodes(train)}
        out = {lv: _quality(train, self.episode_scores(data, train), m) for lv, m in groups.items()}
        if data.demos is not None:
            demos = data.demos
            every = np.ones(demos.num_episodes, dtype=bool)
            out["demos"] = _quality(demos, self.episode_scores(data, demos), every)
        return out

    def quality_target(self, level: str, stats: dict[str, float]) -> tuple[str, bool] | None:
        """The data-quality target ``level`` is held to (docs/behaviour.md), and whether its
        ``stats`` (:meth:`quality`) meet it; None where it has none."""
        return None

    def quality_reference(self) -> str:
        """The published figures a data-quality table shows beside this dataset."""
        return ""

    def quality_report(self, data: Data) -> dict[str, Any]:
        """:meth:`quality` with the setting, score name, reference and targets: one
        dataset's part of the data-quality tables (``scripts/data_quality.py``)."""
        levels = self.quality(data)
        targets = {}
        for level, stats in levels.items():
            target = self.quality_target(level, stats)
            if target is not None:
                targets[level] = {"target": target[0], "meets": target[1]}
        return {
            "kind": self.kind,
            "score_name": self.score_name,
            "reference": self.quality_reference(),
            "levels": levels,
            "targets": targets,
        }

    def evaluated_on(self) -> str:
        """What the scores are measured on, in the setting's words, for titles and axes:
        the held-out tasks here; a single-task benchmark names its environment."""
        return f"the test tasks {list(self.eval_tasks)}"

    def describe(self, episodes: int) -> str:
        """One sentence on what a results table of this benchmark shows."""
        return (
            f"Test tasks {list(self.eval_tasks)} of {self.name}; mean ± sample std over seeds "
            f"of the mean over tasks ({episodes} episodes per task). {self.score_caption}"
        )

    def published(self) -> dict[str, Any] | None:
        """A published result to show beside ours: ``{"label", "value", "metric"}``."""
        return None


def _quality(ds: OfflineDataset, scores: np.ndarray, mine: np.ndarray) -> dict[str, float]:
    """Size and return/score statistics of the episodes ``mine`` (E,) bool of ``ds``; a
    folded team dataset counts team episodes and team steps (its first agent's trajectories,
    which carry the team return)."""
    if ds.agent_of is not None:
        mine = mine & (ds.agent_of[ds.ep_start] == 0)
    out = {"episodes": float(mine.sum()), "transitions": float(ds.ep_len[mine].sum())}
    for name, values in (("return", ds.ep_return[mine]), ("score", scores[mine])):
        values = np.asarray(values, dtype=np.float64)
        p10, p90 = np.percentile(values, [10, 90])
        out.update(
            {
                f"{name}_mean": float(values.mean()),
                f"{name}_p10": float(p10),
                f"{name}_p90": float(p90),
                f"{name}_max": float(values.max()),
            }
        )
    return out

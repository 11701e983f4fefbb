"""Single-agent offline RL on D4RL-style data: Hopper, HalfCheetah and Walker2d (Gymnasium v5).

One dataset, one task (task id 0). The datasets are built in the ``collect`` stage as D4RL
built its levels (docs/d4rl.md): SAC trains on the environment's own reward; *random* is a
uniform policy, *medium* the first snapshot at about a third of the way from random to the
final (*expert*) snapshot, *medium-replay* SAC's replay buffer up to that snapshot, and
*medium-expert* the medium and expert episodes together. ``data.source`` reads a real D4RL
HDF5 file or a Minari dataset (directory or id) instead. Returns are scored with D4RL's
reference constants, or with a Minari dataset's own ``ref_min_score`` / ``ref_max_score``.

Prompts encode behaviour quality here: a prompt is fitted on the dataset's highest-return
episodes (``top_fraction``), and tuning early-stops on held-out ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from cmt.atomic import make_dir, write_json
from cmt.behaviour.rollout import LEVELS
from cmt.benchmarks.base import (
    REFERENCES_FILE,
    TRAIN_FILE,
    Benchmark,
    Claim,
    Data,
    DataSection,
    MetricsCallback,
    PromptData,
    Spaces,
)
from cmt.data.d4rl import REF_RETURNS
from cmt.data.dataset import held_out_count
from cmt.integrity import sealed_json
from cmt.methods import ABLATION_METHODS
from cmt.sections import SacConfig

if TYPE_CHECKING:
    from cmt.data.dataset import OfflineDataset
    from cmt.data.schema import TransitionData
    from cmt.envs.mujoco_tasks import BatchedTaskEnv, MujocoTaskFamily

Env = Literal["halfcheetah", "hopper", "walker2d"]
Level = Literal["random", "medium", "medium_replay", "medium_expert", "expert"]

DT_PAPER_SCORES: dict[tuple[str, str], float] = {
    ("halfcheetah", "medium"): 42.6,
    ("halfcheetah", "medium_replay"): 36.6,
    ("halfcheetah", "medium_expert"): 86.8,
    ("hopper", "medium"): 67.6,
    ("hopper", "medium_replay"): 82.7,
    ("hopper", "medium_expert"): 107.6,
    ("walker2d", "medium"): 74.0,
    ("walker2d", "medium_replay"): 66.6,
    ("walker2d", "medium_expert"): 108.1,
}
"""Decision Transformer's D4RL normalised scores (Chen et al. 2021, Table 2), on D4RL's own
v2 datasets: context for our reduced-budget v5 data, not a same-data comparison."""

EXPERT_SCORE_TARGET = 90.0
"""D4RL-normalised score the expert level is held to (docs/behaviour.md); D4RL's own expert
data scores about 100."""

DT_PAPER_TARGETS: dict[str, float] = {"halfcheetah": 6000.0, "hopper": 3600.0, "walker2d": 5000.0}
"""Return-to-go targets of the Decision Transformer paper's D4RL evaluations."""

# SAC settings of the reduced budget: about 25 minutes per environment on one CPU core.
REDUCED_SAC = SacConfig(
    sac_steps=100_000,
    learning_starts=5_000,
    eval_every=5_000,
    eval_episodes=2,
    expert_snapshot="best",
)


def _reduced_sac() -> SacConfig:
    return REDUCED_SAC


class D4RLData(DataSection):
    """``data`` section of a D4RL-style dataset."""

    benchmark: Literal["d4rl"] = Field(description="Benchmark id.")
    env: Env = Field(description="D4RL environment (its v5 Gymnasium env is evaluated).")
    level: Level = Field(
        description="D4RL level: random, medium, medium_replay, medium_expert or expert."
    )
    source: str | None = Field(
        None,
        description="A real dataset instead of generating one: a D4RL HDF5 file "
        "(e.g. hopper-medium-replay-v2.hdf5) or a Minari dataset directory (a path: "
        "absolute, or starting with '.' or '~'), or a local Minari dataset id "
        "(e.g. mujoco/hopper/expert-v0, under $MINARI_DATASETS_PATH or ~/.minari/datasets, "
        "never downloaded); the name is then the file's stem, or the id with '/' as '-'.",
    )
    transitions: int = Field(
        100_000,
        ge=1000,
        description="Transitions per policy level (whole episodes, at least this many); "
        "D4RL has 1M (medium-expert holds two levels, medium-replay the replay buffer).",
    )
    top_fraction: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Share of the highest-return episodes that prompts are fitted on "
        "(the rest of the method sees all data).",
    )
    reference_episodes: int = Field(
        10, ge=1, description="Episodes that measure the behaviour's own random/expert return."
    )
    sac: SacConfig = Field(default_factory=_reduced_sac, description="SAC behaviour policies.")

    methods: ClassVar[tuple[str, ...]] = (
        "dt",
        "bc",
        "filtered_bc",
        "cmt_zero_shot",
        "cmt_tuned",
        *ABLATION_METHODS,
    )
    target_returns: ClassVar[tuple[str, ...]] = ("dt_paper", "max_train")
    claim: ClassVar[Claim] = Claim("cmt_tuned", "dt", margin=2.0)  # D4RL normalised points

    @field_validator("source")
    @classmethod
    def _minari_id_is_safe(cls, value: str | None) -> str | None:
        from cmt.data.sources import check_minari_id, is_minari_id

        if value and is_minari_id(value):
            check_minari_id(value)  # it becomes a path under the Minari root
        return value

    def expected_name(self) -> str:
        from cmt.data.sources import is_minari_id

        if self.source and is_minari_id(self.source):
            return self.source.replace("/", "-")
        if self.source:
            return Path(self.source).name.removesuffix(".hdf5").removesuffix(".h5")
        return f"{self.env}_{self.level}"

    def unused_fields(self) -> tuple[str, ...]:
        # A dataset read from data.source is not generated: no SAC, no budget, no seed.
        return ("seed", "transitions", "reference_episodes", "sac") if self.source else ()

    def name_origin(self) -> str:
        from cmt.data.sources import is_minari_id

        if self.source and is_minari_id(self.source):
            return "the Minari dataset id of data.source ('/' as '-')"
        if self.source:
            return "the file name of data.source (rename or link the file)"
        return super().name_origin()

    def build(self) -> D4RL:
        return D4RL(self)


class D4RL(Benchmark):
    """A D4RL-style dataset of one environment at one level."""

    cfg: D4RLData
    levels: ClassVar[tuple[str, ...]] = LEVELS
    kind: ClassVar[str] = "Single-agent offline RL (D4RL-style)"

    def __init__(self, cfg: D4RLData) -> None:
        from cmt.envs.mujoco_tasks import single_task_family

        super().__init__(cfg)
        self.family: MujocoTaskFamily = single_task_family(cfg.env)

    @property
    def spaces(self) -> Spaces:
        return Spaces(self.family.obs_dim, self.family.act_dim)

    @property
    def eval_tasks(self) -> tuple[int, ...]:
        return (0,)

    @property
    def horizon(self) -> int:
        return self.family.horizon

    def make_batched_env(self, task_ids: np.ndarray) -> BatchedTaskEnv:
        return self.family.make_batched_env(task_ids)

    # ------------------------------------------------------------------ datasets
    def build_datasets(
        self,
        out_dir: Path,
        behaviour_root: Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        from cmt.data.dataset import OfflineDataset
        from cmt.data.hdf5 import write_hdf5
        from cmt.data.sources import minari_summary

        out_dir = Path(out_dir)
        if self.cfg.source:  # read and checked before anything is written
            data, behaviour_refs = self._read_source(), dict[str, Any]()
        else:
            make_dir(out_dir)
            data, behaviour_refs = self._generate(out_dir, behaviour_root, on_metrics, progress)
        write_hdf5(out_dir / TRAIN_FILE, data)
        low, high, scored_with = self.reference_returns()
        minari = minari_summary(data.metadata)  # empty unless the source is a Minari dataset
        # load() reads the scored task's returns from here: the one place score() takes them.
        references = {
            "env": self.cfg.env,
            "scored_with": scored_with,
            "0": {"random": low, "expert": high},
            "behaviour": behaviour_refs,
            **({"minari": minari} if minari else {}),
        }
        write_json(out_dir / REFERENCES_FILE, sealed_json(references))
        returns = OfflineDataset(data).ep_return.astype(np.float64)
        score = 100.0 * (returns - low) / (high - low)
        summary = {
            "dataset": self.name,
            "train": {
                "episodes": int(returns.size),
                "transitions": len(data),
                "return_mean": float(returns.mean()),
                "return_max": float(returns.max()),
                "score_mean": float(score.mean()),
                "score_max": float(score.max()),
            },
            "references": {"random": low, "expert": high, "scored_with": scored_with},
            "behaviour": behaviour_refs,
        }
        return {**summary, "minari": minari} if minari else summary

    def reference_returns(self) -> tuple[float, float, str]:
        """The (random, expert) returns that 0 and 100 of the score stand for, and where they
        come from: a Minari source's own ``ref_min_score`` / ``ref_max_score`` where it
        records them (read from its metadata.json), else D4RL's returns of the environment."""
        from cmt.data.sources import source_references

        own = source_references(self.cfg.source) if self.cfg.source else None
        if own is not None:
            return own[0], own[1], f"the ref_min_score / ref_max_score of {self.cfg.source}"
        low, high = REF_RETURNS[self.cfg.env]
        return low, high, f"D4RL's {self.cfg.env} reference returns"

    def _read_source(self) -> TransitionData:
        """``data.source``, refused unless it holds ``data.env`` at ``data.level``, recorded
        (where it records one) with the time limit evaluation runs, :attr:`horizon`."""
        from cmt.data.sources import check_source_horizon, check_source_level, read_source

        assert self.cfg.source is not None
        data = read_source(
            self.cfg.source,
            env_id=self.family.env_id,
            obs_dim=self.family.obs_dim,
            act_dim=self.family.act_dim,
        )
        check_source_level(data, env=self.cfg.env, level=self.cfg.level)
        check_source_horizon(data, horizon=self.horizon, env_id=self.family.env_id)
        return data

    def _generate(
        self,
        out_dir: Path,
        behaviour_root: Path | None,
        on_metrics: MetricsCallback | None,
        progress: bool,
    ) -> tuple[TransitionData, dict[str, Any]]:
        from cmt.behaviour.committed import behaviour_for
        from cmt.behaviour.sac import D4RL_LEVEL_PARTS, d4rl_level

        cfg = self.cfg
        ckpt = None if behaviour_root is None else Path(behaviour_root) / cfg.env
        behaviour = behaviour_for(
            *(self.family, cfg.sac, cfg.seed, cfg.reference_episodes, ckpt, on_metrics),
            progress,
            history="medium_replay" in D4RL_LEVEL_PARTS[cfg.level],
        )
        meta = {
            "env": cfg.env,
            "env_id": self.family.env_id,
            "level": cfg.level,
            "levels": list(LEVELS),
            "seed": cfg.seed,
            "num_tasks": 1,
            **behaviour.metadata(),
        }
        data = d4rl_level(behaviour, cfg.level, cfg.transitions, self.horizon, meta)
        behaviour.save(out_dir)
        refs = {
            "random": float(behaviour.random_ref[0]),
            "expert": float(behaviour.expert_reference(cfg.reference_episodes)[0]),
            "medium_snapshot": float(behaviour.medium["returns"].mean()),
            "sac": behaviour.summary(),
        }
        return data, refs

    # ------------------------------------------------------------------ prompts and scores
    def prompt_target(self, data: Data, task: int) -> OfflineDataset:
        return data.train.select_episodes(self._top_episodes(data.train))

    def _top_episodes(self, ds: OfflineDataset) -> np.ndarray:
        # At least two: one to fit the prompt on, one to stop early on.
        return ds.top_episodes(self.cfg.top_fraction, at_least=2)

    def prompt_data(self, data: Data, task: int, val_fraction: float, seed: int) -> PromptData:
        """Fit on some top episodes, validate on the others; ``return_weighted`` samples every
        episode except the validation ones."""
        top = self._top_episodes(data.train)
        perm = np.random.default_rng(seed).permutation(top.size)
        n_val = held_out_count(top.size, val_fraction)
        val_eps, fit_eps = np.sort(top[perm[:n_val]]), np.sort(top[perm[n_val:]])
        rest = np.setdiff1d(np.arange(data.train.num_episodes), val_eps)
        return PromptData(
            fit=data.train.select_episodes(fit_eps, seed=seed),
            val=data.train.select_episodes(val_eps, seed=seed + 1),
            pool=data.train.select_episodes(rest, seed=seed + 2),
        )

    def target_return(self, data: Data, task: int, mode: str) -> float:
        if mode == "dt_paper":
            return DT_PAPER_TARGETS[self.cfg.env]
        return super().target_return(data, task, mode)

    score_caption: ClassVar[str] = (
        "D4RL normalised score: 100 × (R − random) / (expert − random) with D4RL's reference "
        "returns, or a Minari dataset's own."
    )

    def evaluated_on(self) -> str:
        return self.family.env_id

    def describe(self, episodes: int) -> str:
        from cmt.data.hdf5 import DatasetError

        head = (
            f"{self.family.env_id}, {episodes} evaluation episodes per seed; mean ± sample std "
            "over seeds. D4RL normalised score: 100 × (R − random) / (expert − random) with "
        )
        try:
            low, high, scored_with = self.reference_returns()
        except DatasetError:  # the source is gone since collect; the scores stand
            return head + f"the reference returns collect took from {self.cfg.source}."
        return head + f"{scored_with}, random {low:.2f}, expert {high:.1f}."

    def quality_target(self, level: str, stats: dict[str, float]) -> tuple[str, bool] | None:
        if level != "expert":
            return None
        return f">= {EXPERT_SCORE_TARGET:g} D4RL-normalised", stats["score_mean"] >= (
            EXPERT_SCORE_TARGET
        )

    def quality_reference(self) -> str:
        low, high, source = self.reference_returns()
        return f"random {low:.0f}, expert {high:.0f} ({source})"

    def published(self) -> dict[str, Any] | None:
        value = DT_PAPER_SCORES.get((self.cfg.env, self.cfg.level))
        if value is None:
            return None
        return {"label": "DT (paper, D4RL v2)", "value": value, "metric": "score_mean"}

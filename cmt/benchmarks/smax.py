"""Offline multi-agent RL on SMAC-like maps, on JaxMARL's SMAX (docs/smax.md).

One map is one dataset and one task (task id 0). Allies are our agents; SMAX's heuristic
controls the enemies. The data of a map mixes behaviour tiers named as in OG-MARL (good,
medium, poor), written by the ``collect`` stage with a parameter-shared PPO policy (MAPPO,
``cmt/behaviour/mappo.py``, or MaskablePPO) and its snapshots (``cmt/behaviour/ppo.py``):
the committed tier policies of ``behaviour/smax_<map>/`` rolled out, or trained here
(``data.ppo.policies``).
Agents share one policy: a team's trajectories are folded into one sequence per agent
(:mod:`cmt.data.agents`), and evaluation folds the team environment the same way
(:mod:`cmt.envs.team`).

A prompt is fitted on the good tier's episodes; the score of an episode is 100 if it was won,
0 otherwise, so a mean score is a win rate in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from cmt.benchmarks.base import (
    REFERENCES_FILE,
    TRAIN_FILE,
    Benchmark,
    Claim,
    Data,
    DataSection,
    Episodes,
    MetricsCallback,
    PromptData,
    Spaces,
)
from cmt.data.dataset import held_out_count
from cmt.data.schema import LEVEL
from cmt.device import jax_on_cpu
from cmt.methods import ABLATION_METHODS
from cmt.sections import PpoConfig

if TYPE_CHECKING:
    from cmt.data.dataset import OfflineDataset
    from cmt.envs.team import FoldedTeamEnv

MapName = Literal["3m", "2s3z", "5m_vs_6m", "8m", "3s_vs_5z"]
"""Maps of ``cmt.envs.smax.SMAX_MAPS`` (a test checks that the two agree); kept here so that
loading a config does not import jax."""

TIERS = ("poor", "medium", "good", "heuristic")
"""Behaviour tiers; ``infos/level`` indexes this tuple (``cmt.behaviour.ppo.TIERS``)."""


class SmaxData(DataSection):
    """``data`` section of one SMAX map."""

    benchmark: Literal["smax"] = Field(description="Benchmark id.")
    map: MapName = Field("3m", description="SMAX map (SMAC scenario name).")
    episodes_per_tier: int = Field(
        300,
        ge=2,
        description="Episodes recorded per behaviour tier (poor, medium, good, and heuristic "
        "when data.ppo.heuristic_tier); each holds one trajectory per agent.",
    )
    ppo: PpoConfig = Field(
        default_factory=PpoConfig,
        description="Training of the behaviour policy (MAPPO or MaskablePPO), whose snapshots "
        "give the tiers.",
    )

    methods: ClassVar[tuple[str, ...]] = (
        "madt",
        "bc",
        "cmt_zero_shot",
        "cmt_tuned",
        *ABLATION_METHODS,
    )
    target_returns: ClassVar[tuple[str, ...]] = ("max_train",)
    claim: ClassVar[Claim] = Claim("cmt_tuned", "madt", margin=5.0)  # win-rate points

    def expected_name(self) -> str:
        return f"smax_{self.map}"

    def build(self) -> Smax:
        return Smax(self)


GOOD_TIER_TARGETS: dict[str, float] = {"3m": 90.0, "2s3z": 90.0, "5m_vs_6m": 50.0}
"""Win rate (%) the good tier is held to (docs/behaviour.md): what OG-MARL-style good data
reaches on the easy maps, and at least an even chance on the hard one."""


class Smax(Benchmark):
    """One SMAX map: a team of agents, discrete masked actions, win rate as the score."""

    levels: ClassVar[tuple[str, ...]] = TIERS
    kind: ClassVar[str] = "Offline multi-agent RL (SMAX)"
    score_caption: ClassVar[str] = "Score: win rate (%); return: the team's SMAX reward."
    score_name: ClassVar[str] = "win rate (%)"
    score_axis: ClassVar[str] = "(greedy episodes won)"
    cfg: SmaxData

    @property
    def _map(self) -> Any:
        jax_on_cpu()
        from cmt.envs.smax import smax_map

        return smax_map(self.cfg.map)

    @property
    def spaces(self) -> Spaces:
        m = self._map
        return Spaces(m.obs_dim, m.num_actions, discrete=True, num_agents=m.num_agents)

    @property
    def eval_tasks(self) -> tuple[int, ...]:
        return (0,)

    @property
    def horizon(self) -> int:
        return int(self._map.horizon)

    def make_batched_env(self, task_ids: np.ndarray) -> FoldedTeamEnv:
        jax_on_cpu()
        from cmt.envs.smax import SmaxBatchedEnv
        from cmt.envs.team import FoldedTeamEnv

        if np.any(np.asarray(task_ids) != 0):
            raise ValueError(f"SMAX map {self.cfg.map!r} has one task, id 0")
        return FoldedTeamEnv(SmaxBatchedEnv(self.cfg.map, len(task_ids)))

    # ------------------------------------------------------------------ data
    def build_datasets(
        self,
        out_dir: Path,
        behaviour_root: Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        from cmt.atomic import write_json

        jax_on_cpu()
        from cmt.behaviour.committed import smax_behaviour_for
        from cmt.behaviour.ppo import write_smax_datasets
        from cmt.integrity import sealed_json

        cfg = self.cfg
        out_dir = Path(out_dir)
        # data.ppo.policies: roll out behaviour/smax_<map>/, or train (resume) under here.
        checkpoint_dir = Path(behaviour_root or out_dir / "behaviour") / cfg.map
        behaviour = smax_behaviour_for(
            cfg.map, cfg.ppo, cfg.seed, checkpoint_dir, on_metrics, progress
        )
        summary = write_smax_datasets(
            cfg.map, out_dir, behaviour, cfg.ppo, cfg.episodes_per_tier, cfg.seed, progress
        )
        # No random/expert references: a SMAX episode is scored by its outcome. The tiers'
        # own win rates and returns are what results are read against.
        write_json(out_dir / REFERENCES_FILE, sealed_json({"tiers": summary["tiers"]}))
        return summary

    def load(self, data_dir: str | Path) -> Data:
        from cmt.data.agents import fold_agents
        from cmt.data.dataset import OfflineDataset
        from cmt.data.hdf5 import read_hdf5

        data_dir = Path(data_dir)
        from cmt.integrity import read_json

        read_json(data_dir / REFERENCES_FILE, required=["tiers"])  # present and intact
        team = read_hdf5(data_dir / TRAIN_FILE)
        return Data(train=OfflineDataset(fold_agents(team)), demos=None, references={})

    def tier_episodes(self, data: Data, tier: str) -> np.ndarray:
        """Folded episode indices of one tier (every agent's trajectory of its episodes)."""
        ds = data.train
        level = ds.data.infos[LEVEL][ds.ep_start]
        return np.flatnonzero(level == TIERS.index(tier))

    def prompt_target(self, data: Data, task: int) -> OfflineDataset:
        return data.train.select_episodes(self.tier_episodes(data, "good"))

    def prompt_data(self, data: Data, task: int, val_fraction: float, seed: int) -> PromptData:
        """Good-tier episodes split by *team* episode, so no agent of a held-out episode is
        seen while fitting; ``return_weighted`` samples every episode but the held-out ones."""
        ds, A = data.train, data.train.num_agents
        good = self.tier_episodes(data, "good")
        teams = np.unique(good // A)  # folded episodes are agent-major per team episode
        if len(teams) < 2:
            raise ValueError(f"{self.name}: need at least 2 good-tier episodes for prompt data")
        perm = np.random.default_rng(seed).permutation(teams)
        n_val = held_out_count(len(teams), val_fraction)

        def folded(team_eps: np.ndarray) -> np.ndarray:
            return (np.sort(team_eps)[:, None] * A + np.arange(A)).ravel()

        val = folded(perm[:n_val])
        rest = np.setdiff1d(np.arange(ds.num_episodes), val)
        return PromptData(
            fit=ds.select_episodes(folded(perm[n_val:]), seed=seed),
            val=ds.select_episodes(val, seed=seed + 1),
            pool=ds.select_episodes(rest, seed=seed + 2),
        )

    # ------------------------------------------------------------------ scores
    def score(self, data: Data, task: int, episodes: Episodes) -> np.ndarray:
        if episodes.won is None:
            raise ValueError(f"{self.name}: SMAX episodes are scored by their outcome (won)")
        return 100.0 * np.asarray(episodes.won, dtype=np.float64)

    def episode_scores(self, data: Data, ds: OfflineDataset) -> np.ndarray:
        won = ds.data.infos["won"][ds.ep_start + ds.ep_len - 1]  # (E,) set on the last step
        return self.score(data, 0, Episodes(ds.ep_return, won.astype(bool)))

    def quality_target(self, level: str, stats: dict[str, float]) -> tuple[str, bool] | None:
        target = GOOD_TIER_TARGETS.get(self.cfg.map)
        if level != "good" or target is None:
            return None
        return f">= {target:g} % wins", stats["score_mean"] >= target

    def quality_reference(self) -> str:
        return "score = win rate %"

    def evaluated_on(self) -> str:
        return f"SMAX map {self.cfg.map}"

    def describe(self, episodes: int) -> str:
        return (
            f"SMAX map {self.cfg.map} ({self.spaces.num_agents} agents, heuristic enemies); "
            f"mean ± sample std over seeds of {episodes} episodes each. {self.score_caption}"
        )

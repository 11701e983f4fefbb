"""Deterministic offline dataset generation for a task family.

The core is :func:`rollout`: a batched behaviour policy runs one episode per task id in a
:class:`~cmt.envs.registry.BatchedEnv`, and the episodes are laid out back to back in D4RL's
flat layout. Each family supplies its own behaviour policies (scripted for the point robot,
trained policies for MuJoCo families) and a ``generate_<family>`` function; the dispatcher
:func:`generate_datasets` picks it by ``cfg.family``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cmt.atomic import write_json
from cmt.config import DataConfig
from cmt.data.schema import TransitionData
from cmt.envs.point_robot import PointRobotFamily, random_actions, scripted_expert
from cmt.envs.registry import TaskFamily, make_family

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Batched behaviour policy: (obs (B, obs_dim), task_ids (B,)) -> actions (B, act_dim)."""

LEVELS: tuple[str, ...] = ("random", "medium", "expert")
"""Behaviour levels of the point robot's scripted policies."""
ALL_LEVELS: tuple[str, ...] = (*LEVELS, "medium_replay")
"""Behaviour levels of every family; a transition's ``infos/level`` indexes this tuple
(the MuJoCo families add SAC's replay data)."""

# One independent random stream per (purpose, level). Streams are spawned from cfg.seed in
# this order, so new streams must be appended to keep existing datasets bit-identical.
_STREAMS: tuple[str, ...] = (
    "train/random",
    "train/medium",
    "train/expert",
    "demos/expert",
    "reference/random",
    "reference/expert",
)


def rollout(
    family: TaskFamily, task_ids: np.ndarray, policy: Policy, seed: int
) -> tuple[TransitionData, np.ndarray]:
    """Run one episode per entry of ``task_ids`` together; return (data, episode returns (B,)).

    Episodes appear in the order of ``task_ids``. An episode ends at its first terminated or
    truncated step; later steps of a finished episode (the batch keeps stepping until every
    episode has ended) are not recorded.
    """
    task_ids = np.asarray(task_ids, dtype=np.int64)
    env = family.make_batched_env(task_ids)
    b, t_max = env.num_envs, family.horizon
    obs = env.reset(seed=seed)

    observations = np.zeros((b, t_max, family.obs_dim), dtype=np.float32)
    next_observations = np.zeros_like(observations)
    actions = np.zeros((b, t_max, family.act_dim), dtype=np.float32)
    rewards = np.zeros((b, t_max), dtype=np.float32)
    terminals = np.zeros((b, t_max), dtype=bool)
    timeouts = np.zeros((b, t_max), dtype=bool)
    lengths = np.zeros(b, dtype=np.int64)
    alive = np.ones(b, dtype=bool)

    for t in range(t_max):
        act = np.asarray(policy(obs, task_ids), dtype=np.float32)
        next_obs, rew, term, trunc = env.step(act)
        observations[:, t] = obs
        actions[:, t] = act
        rewards[:, t] = rew
        next_observations[:, t] = next_obs
        terminals[:, t] = term
        timeouts[:, t] = trunc
        lengths += alive
        alive &= ~(np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool))
        if not alive.any():
            break
        obs = next_obs
    if alive.any():
        # The family's env must end every episode by its horizon; otherwise the flat layout
        # would hold episodes without an end flag.
        raise RuntimeError(
            f"{int(alive.sum())} episodes of family {family.name!r} did not end within "
            f"horizon={t_max} steps"
        )

    keep = np.arange(t_max)[None, :] < lengths[:, None]  # (B, T): C-order => episode-major
    data = TransitionData(
        observations=observations[keep],
        actions=actions[keep],
        rewards=rewards[keep],
        terminals=terminals[keep],
        timeouts=timeouts[keep],
        next_observations=next_observations[keep],
        task_ids=np.repeat(task_ids, lengths),
    )
    returns = np.where(keep, rewards, 0.0).sum(axis=1, dtype=np.float64)
    return data, returns


def concat_transitions(
    parts: list[TransitionData], metadata: dict[str, Any] | None = None
) -> TransitionData:
    """Concatenate datasets (episodes stay back to back); infos must share the same keys."""
    keys = set(parts[0].infos)
    if any(set(p.infos) != keys for p in parts):
        raise ValueError(f"cannot concatenate datasets with different infos keys: {sorted(keys)}")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return TransitionData(
        observations=cat("observations"),
        actions=cat("actions"),
        rewards=cat("rewards"),
        terminals=cat("terminals"),
        timeouts=cat("timeouts"),
        next_observations=cat("next_observations"),
        task_ids=cat("task_ids"),
        infos={k: np.concatenate([p.infos[k] for p in parts]) for k in sorted(keys)},
        metadata=dict(metadata or {}),
    )


def _with_level(data: TransitionData, level: str) -> TransitionData:
    infos = dict(data.infos)
    infos["level"] = np.full(len(data), LEVELS.index(level), dtype=np.int8)
    return dataclasses.replace(data, infos=infos)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {
        name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)
    }


def _env_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def generate_point_robot(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Write ``train.hdf5``, ``demos.hdf5`` and ``references.json`` for the point robot.

    Train tasks get ``cfg.episodes_per_level`` episodes of each level (random, medium,
    expert); test tasks get ``cfg.demo_episodes`` expert demonstrations; every task gets its
    random and expert reference returns. The output depends only on ``cfg``.
    """
    from cmt.data.hdf5 import write_hdf5  # lazy: keeps env imports free of h5py

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = PointRobotFamily.from_config(cfg)
    rngs = _streams(cfg.seed)
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
        data, returns = rollout(family, task_ids, policy_for(level, rng), _env_seed(rng))
        return _with_level(data, level), returns

    base_meta: dict[str, Any] = {
        "family": family.name,
        "num_tasks": cfg.num_tasks,
        "horizon": cfg.horizon,
        "seed": cfg.seed,
        "levels": list(LEVELS),
        "train_tasks": train_tasks.tolist(),
        "test_tasks": test_tasks.tolist(),
    }
    summary: dict[str, Any] = {"family": family.name}
    with tqdm(total=len(LEVELS) + 3, desc=f"generate {family.name}", disable=None) as bar:
        parts, level_means = [], {}
        for level in LEVELS:
            bar.set_postfix_str(f"train/{level}")
            data, returns = run(f"train/{level}", np.repeat(train_tasks, cfg.episodes_per_level))
            parts.append(data)
            level_means[level] = float(returns.mean())
            bar.update()
        train = concat_transitions(parts, {**base_meta, "split": "train"})
        write_hdf5(out_dir / "train.hdf5", train)
        summary["train"] = {
            "episodes": len(LEVELS) * len(train_tasks) * cfg.episodes_per_level,
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
        write_json(out_dir / "references.json", references)
        summary["references"] = {level: float(refs[level].mean()) for level in ("random", "expert")}
    return summary


def generate_datasets(
    cfg: DataConfig,
    out_dir: Path,
    sac_checkpoint_dir: Path | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Generate the offline datasets of ``cfg.family`` into ``out_dir``; returns a summary.

    The point robot's behaviour is scripted; the MuJoCo families train SAC first
    (:func:`cmt.envs.sac_data.generate_mujoco`), checkpointed in ``sac_checkpoint_dir`` so a
    killed or repeated run continues, and report its progress through ``on_metrics``.
    """
    make_family(cfg)  # an unknown id or a config that contradicts the benchmark fails here
    if cfg.family == "point_robot":
        return generate_point_robot(cfg, Path(out_dir))
    # Lazy: sac_data imports this module (rollout, concat_transitions) and SB3.
    from cmt.envs.sac_data import generate_mujoco

    return generate_mujoco(cfg, Path(out_dir), sac_checkpoint_dir, on_metrics)

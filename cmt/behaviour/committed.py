"""Behaviour policies committed to git, so a fresh clone rebuilds its datasets by rollout.

Training a MuJoCo expert takes hours on two cores; rolling it out takes minutes. So each
environment or task family trained once has a directory ``behaviour/<name>/`` in the
repository (docs/behaviour.md):

- ``manifest.json``: the learner and its settings, seed, training command, git commit, CPU,
  the return of every snapshot, the chosen medium and expert, and their measured returns;
- ``policies/medium.pt`` and ``policies/expert.pt``: the actors (:mod:`cmt.behaviour.actor`);
- ``learner.pt``: the learner's resumable state without its replay buffer (a few MB), from
  which training continues in a later sitting or on another machine.

``data.sac.policies: committed`` rolls these out, refused unless they were trained with the
configured learner settings, budget and seed; ``train`` trains (or resumes) them here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from cmt.atomic import atomic_path, make_dir, write_json, write_text
from cmt.behaviour.actor import from_tensors
from cmt.behaviour.rollout import random_streams
from cmt.behaviour.sac import (
    STREAMS,
    Behaviour,
    MetricsCallback,
    choose_snapshots,
    random_reference,
    sac_fingerprint,
    train_behaviour,
    train_sac,
)
from cmt.checkpoint import CheckpointError, load_sealed
from cmt.device import cpu_name
from cmt.envs.mujoco_tasks import MujocoTaskFamily
from cmt.integrity import ArtifactError, read_json, sealed_json
from cmt.sections import SacConfig

MANIFEST = "manifest.json"
LEARNER = "learner.pt"


class CommittedPoliciesError(ValueError):
    """The committed policies are missing or were trained with other settings."""


def behaviour_dir() -> Path:
    """``behaviour/`` of the repository (``CMT_BEHAVIOUR_DIR`` overrides it, for tests)."""
    override = os.environ.get("CMT_BEHAVIOUR_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "behaviour"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def seed_checkpoint(name: str, checkpoint_dir: Path) -> bool:
    """Copy the committed ``learner.pt`` into an empty ``checkpoint_dir`` (a fresh clone), so
    training resumes from it instead of starting over. True if copied."""
    source = behaviour_dir() / name / LEARNER
    target = Path(checkpoint_dir) / "state.pt"
    if target.exists() or not source.exists():
        return False
    make_dir(target.parent)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return True


def publish(behaviour: Behaviour, checkpoint_dir: Path, command: str) -> Path:
    """Write ``behaviour/<name>/``: the chosen policies, the manifest and the learner state."""
    family, budgets = behaviour.family, behaviour.budgets
    out = behaviour_dir() / family.name
    make_dir(out)
    behaviour.save(out)
    (out / "sac_log.json").unlink(missing_ok=True)  # the manifest holds the same curve
    with atomic_path(out / LEARNER) as tmp:
        shutil.copyfile(Path(checkpoint_dir) / "state.pt", tmp)
    train = np.asarray(family.train_tasks, dtype=np.int64)
    manifest = {
        "name": family.name,
        "fingerprint": sac_fingerprint(family, budgets, behaviour.seed),
        "sac_steps": budgets.sac_steps,
        "seed": behaviour.seed,
        "learner": budgets.learner,
        "command": command,
        "commit": _git_commit(),
        "cpu": cpu_name(),
        "random_return": float(behaviour.random_ref[train].mean()),
        "snapshots": [
            {"step": int(s["step"]), "mean_return": float(np.mean(s["returns"]))}
            for s in behaviour.snapshots
        ],
        "medium": _chosen(behaviour, behaviour.medium_index, behaviour.medium_rule),
        "expert": _chosen(behaviour, behaviour.expert_index, budgets.expert_snapshot),
        "training": {k: float(v) for k, v in behaviour.stats.items()},
    }
    write_json(out / MANIFEST, sealed_json(manifest))
    write_status()
    return out


def _chosen(behaviour: Behaviour, index: int, rule: str) -> dict[str, Any]:
    snap = behaviour.snapshots[index]
    return {"step": int(snap["step"]), "mean_return": float(np.mean(snap["returns"])), "rule": rule}


def load_committed(
    family: MujocoTaskFamily, budgets: SacConfig, seed: int, reference_episodes: int
) -> Behaviour:
    """The committed behaviour of ``family``, refused unless trained with these settings."""
    directory = behaviour_dir() / family.name
    path = directory / MANIFEST
    if not path.exists():
        raise CommittedPoliciesError(
            f"no committed behaviour policies for {family.name} ({path} is missing); set "
            "data.sac.policies=train to train them here"
        )
    try:
        manifest = read_json(path, required=("fingerprint", "sac_steps", "snapshots"))
    except ArtifactError as err:
        raise CommittedPoliciesError(str(err)) from err
    want = sac_fingerprint(family, budgets, seed)
    if manifest["fingerprint"] != want or manifest["sac_steps"] != budgets.sac_steps:
        raise CommittedPoliciesError(
            f"{path}: committed policies of {family.name} were trained with "
            f"{manifest['fingerprint']} for {manifest['sac_steps']} steps; the config asks "
            f"{want} for {budgets.sac_steps} steps. Restore those settings, or set "
            "data.sac.policies=train to train with yours"
        )
    snapshots = [
        {"step": s["step"], "returns": np.array([s["mean_return"]]), "actor": None}
        for s in manifest["snapshots"]
    ]
    for level in ("medium", "expert"):
        try:
            stored = load_sealed(directory / "policies" / f"{level}.pt")
        except CheckpointError as err:
            raise CommittedPoliciesError(str(err)) from err
        step = manifest[level]["step"]
        index = next(i for i, s in enumerate(snapshots) if s["step"] == step)
        snapshots[index]["actor"] = from_tensors(stored["actor"])
    rngs = random_streams(seed, STREAMS)
    random_ref = random_reference(family, rngs, reference_episodes)
    stats = {**manifest["training"], "buffer_from": -1}  # no replay buffer
    return choose_snapshots(family, budgets, seed, snapshots, random_ref, rngs, stats, None)


def behaviour_for(
    family: MujocoTaskFamily,
    budgets: SacConfig,
    seed: int,
    reference_episodes: int,
    checkpoint_dir: Path | None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
    history: bool = False,
) -> Behaviour:
    """The behaviour the config asks for: committed policies, or trained (resumed) here.

    ``history``: the data needs medium-replay, the learner's own replay buffer from step 0.
    Committed policies then get it from a fresh run of the same recipe up to their medium
    step (:func:`with_history`); training here starts from scratch rather than from a
    committed ``learner.pt``, whose buffer is gone."""
    if budgets.policies == "committed":
        behaviour = load_committed(family, budgets, seed, reference_episodes)
        if history:
            history_dir = None if checkpoint_dir is None else checkpoint_dir / "history"
            with_history(behaviour, history_dir, on_metrics, progress)
        return behaviour
    if checkpoint_dir is not None and not history:
        seed_checkpoint(family.name, checkpoint_dir)
    return train_behaviour(
        family, budgets, seed, reference_episodes, checkpoint_dir, on_metrics, progress
    )


def with_history(
    behaviour: Behaviour,
    checkpoint_dir: Path | None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> None:
    """Give committed ``behaviour`` a replay buffer for medium-replay: the learner trained
    again, same settings and seed, up to the committed medium step (resumable under
    ``checkpoint_dir``). The same recipe, so the same kind of history; bit for bit the same
    only on the same CPU and library versions."""
    family, step = behaviour.family, int(behaviour.medium["step"])
    short = behaviour.budgets.model_copy(update={"sac_steps": step, "policies": "train"})
    train = np.asarray(family.train_tasks, dtype=np.int64)
    random_train = float(behaviour.random_ref[train].mean())
    learner, _, stats = train_sac(
        family, short, behaviour.seed, random_train, checkpoint_dir, on_metrics, progress
    )
    behaviour.replay_buffer = learner.model.replay_buffer
    behaviour.stats = {**behaviour.stats, "buffer_from": stats["buffer_from"]}


def train_and_publish(
    family: MujocoTaskFamily,
    budgets: SacConfig,
    seed: int,
    reference_episodes: int,
    checkpoint_dir: Path,
    command: str,
    progress: bool = True,
) -> Path:
    """Train (resuming from ``checkpoint_dir`` or the committed learner state) and publish."""
    seed_checkpoint(family.name, checkpoint_dir)
    behaviour = train_behaviour(
        family, budgets, seed, reference_episodes, checkpoint_dir, None, progress
    )
    return publish(behaviour, checkpoint_dir, command)


def publish_progress(
    family: MujocoTaskFamily, budgets: SacConfig, seed: int, checkpoint_dir: Path
) -> Path:
    """Copy an unfinished learner's state to ``behaviour/<name>/learner.pt``, so that a later
    sitting, on this machine or a fresh clone, continues from it."""
    from cmt.behaviour.sac import CHECKPOINT_FORMAT

    source = Path(checkpoint_dir) / "state.pt"
    try:
        state = load_sealed(source)
    except CheckpointError as err:
        raise CommittedPoliciesError(str(err)) from err
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != sac_fingerprint(
        family, budgets, seed
    ):
        raise CommittedPoliciesError(f"{source}: a checkpoint of other settings")
    out = behaviour_dir() / family.name / LEARNER
    make_dir(out.parent)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    write_status()
    return out


def write_status() -> Path:
    """``behaviour/README.md``: what every committed directory holds, from its manifest (or,
    for an unfinished learner, from ``learner.pt``)."""
    from cmt.data.d4rl import REF_RETURNS

    root = behaviour_dir()
    lines = [
        "# Committed behaviour policies",
        "",
        "Generated from each directory's `manifest.json` (or `learner.pt` while unfinished) "
        "by `cmt behaviour`; what the files are: [docs/behaviour.md](../docs/behaviour.md). "
        "`smax_<map>/` hold the SMAX MAPPO learner state, tier policies and `tiers.json` of the "
        "runs in `results/data/smax_learner_runs/` (docs/smax.md).",
        "",
        "| name | learner | steps | seed | expert: step, return | D4RL score | medium: step, "
        "return | random return | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if (directory / MANIFEST).exists() or (directory / LEARNER).exists():
            lines.append(_status_row(directory, REF_RETURNS))  # SMAX tiers: docs/smax.md
    out = root / "README.md"
    write_text(out, "\n".join(lines) + "\n")
    return out


def _status_row(directory: Path, refs: Any) -> str:
    name = directory.name
    if not (directory / MANIFEST).exists():
        state = load_sealed(directory / LEARNER)
        best = max((float(s["returns"].mean()) for s in state["snapshots"]), default=0.0)
        return (
            f"| {name} | unfinished | {state['num_timesteps']} | | best so far {best:.1f} | | | | |"
        )
    m = read_json(directory / MANIFEST)
    expert, medium = m["expert"], m["medium"]
    score = ""
    if name in refs:
        low, high = refs[name]
        score = f"{100 * (expert['mean_return'] - low) / (high - low):.1f}"
    return (
        f"| {name} | {m['learner']} | {m['sac_steps']} | {m['seed']} | {expert['step']}, "
        f"{expert['mean_return']:.1f} | {score} | {medium['step']}, {medium['mean_return']:.1f} "
        f"| {m['random_return']:.1f} | `{m['command']}` |"
    )

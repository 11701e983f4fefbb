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

SMAX maps have ``behaviour/smax_<map>/`` (docs/smax.md): ``manifest.json`` (the same kind of
record, with the tiers' snapshots and rollout seeds), ``policies/<tier>.pt`` (the poor, medium
and good actors), ``tiers.json`` (the training run's dataset record) and ``mappo_state.pt``
(the finished learner). ``data.ppo.policies`` switches the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from cmt.sections import PpoConfig, SacConfig

if TYPE_CHECKING:
    from cmt.behaviour.ppo import MetricsCallback as PpoMetricsCallback
    from cmt.behaviour.ppo import Trained

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
    _copy(source, target)
    return True


def publish(behaviour: Behaviour, checkpoint_dir: Path, command: str) -> Path:
    """Write ``behaviour/<name>/``: the chosen policies, the manifest and the learner state."""
    family, budgets = behaviour.family, behaviour.budgets
    out = behaviour_dir() / family.name
    make_dir(out)
    behaviour.save(out)
    (out / "sac_log.json").unlink(missing_ok=True)  # the manifest holds the same curve
    _copy(Path(checkpoint_dir) / "state.pt", out / LEARNER)
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
    manifest = _read_manifest(path, family.name, "data.sac", ("sac_steps", "snapshots"))
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


def _read_manifest(
    path: Path, name: str, section: str, required: tuple[str, ...]
) -> dict[str, Any]:
    """The manifest at ``path`` (sealed, with a fingerprint and ``required``), or a refusal
    that says how to train instead (``section``: the config section with ``policies``)."""
    if not path.exists():
        raise CommittedPoliciesError(
            f"no committed behaviour policies for {name} ({path} is missing); set "
            f"{section}.policies=train to train them here"
        )
    try:
        return read_json(path, required=("fingerprint", *required))
    except ArtifactError as err:
        raise CommittedPoliciesError(str(err)) from err


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
    _copy(source, out)
    write_status()
    return out


# --------------------------------------------------------------------------- SMAX


def smax_dir(map_name: str) -> Path:
    """``behaviour/smax_<map>/``: the committed tier policies of a SMAX map."""
    return behaviour_dir() / f"smax_{map_name}"


def smax_behaviour_for(
    map_name: str,
    cfg: PpoConfig,
    seed: int,
    checkpoint_dir: Path | None,
    on_metrics: PpoMetricsCallback | None = None,
    progress: bool = True,
) -> Trained:
    """The behaviour of a SMAX map the config asks for (``cfg.policies``): the committed tier
    policies, or the learner trained here (resumed from ``checkpoint_dir``)."""
    if cfg.policies == "committed":
        return load_committed_smax(map_name, cfg, seed)
    from cmt.behaviour.ppo import train_behaviour

    return train_behaviour(map_name, cfg, seed, checkpoint_dir, on_metrics, progress)


def load_committed_smax(map_name: str, cfg: PpoConfig, seed: int) -> Trained:
    """The committed behaviour of a SMAX map: its snapshot curve, with the actors of the tier
    snapshots (the others' are not committed). Refused unless trained with this map, these
    training settings (``cfg.learner``'s fingerprint) and seed, and unless the config's tier
    choice picks the committed snapshots."""
    from cmt.behaviour.mappo import numpy_policy, read_tier_policy
    from cmt.behaviour.ppo import Trained, behaviour_fingerprint

    directory = smax_dir(map_name)
    path = directory / MANIFEST
    manifest = _read_manifest(path, directory.name, "data.ppo", ("snapshots", "tiers"))
    want = behaviour_fingerprint(map_name, cfg, seed)
    if manifest["fingerprint"] != want:
        raise CommittedPoliciesError(
            f"{path}: the committed policies of {directory.name} were trained with other "
            f"settings than the config's ({_differences(manifest['fingerprint'], want)}). "
            "Restore those settings, or set data.ppo.policies=train to train with yours"
        )
    snapshots = [{**s, "policy": None} for s in manifest["snapshots"]]
    index = {int(s["step"]): i for i, s in enumerate(snapshots)}
    meta: dict[str, Any] = {}
    for tier, record in manifest["tiers"].items():
        try:
            weights, meta = read_tier_policy(directory / "policies" / f"{tier}.pt")
        except CheckpointError as err:
            raise CommittedPoliciesError(str(err)) from err
        if meta.get("step") != record["step"] or record["step"] not in index:
            raise CommittedPoliciesError(f"{path}: {tier}.pt is not the {tier} snapshot")
        snapshots[index[record["step"]]]["policy"] = weights
    _check_tier_choice(path, snapshots, cfg, manifest)
    return Trained(
        snapshots,
        {k: float(v) for k, v in manifest["training"].items()},
        lambda snap, rng: numpy_policy(snap["policy"], meta, rng),
        lambda snap: snap["policy"],
        meta,  # its tier fields are replaced when the tiers' files are written
        [],
    )


def _differences(committed: str, wanted: str) -> str:
    """``key: committed X, config Y`` for every setting in which two fingerprints differ."""
    a, b = _flat(json.loads(committed)), _flat(json.loads(wanted))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: committed {a.get(k)!r}, config {b.get(k)!r}" for k in keys)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_tier_choice(
    path: Path, snapshots: list[dict[str, Any]], cfg: PpoConfig, manifest: Mapping[str, Any]
) -> None:
    """Refuse a tier choice (``data.ppo.medium_fraction``, ``recheck_*``) that picks an
    uncommitted snapshot or rechecks one the committed run did not recheck."""
    from cmt.behaviour.ppo import recheck_seed
    from cmt.behaviour.tier_choice import choose_tiers, recorded_recheck

    committed = ", ".join(
        f"{k}={manifest.get(k, 0)}" for k in ("medium_fraction", "recheck_episodes")
    )
    seed = recheck_seed(int(manifest["seed"]))

    def recorded(i: int) -> tuple[float, float]:
        try:
            return recorded_recheck(snapshots[i], cfg.recheck_episodes, seed)
        except KeyError as err:
            raise CommittedPoliciesError(
                f"{path}: recheck_episodes={cfg.recheck_episodes} rechecks the snapshot at "
                f"step {snapshots[i]['step']}, which the committed run ({committed}) did not; "
                "restore those settings, or set data.ppo.policies=train"
            ) from err

    chosen, _ = choose_tiers(snapshots, cfg, recorded)
    for tier, i in chosen.items():
        if snapshots[i]["policy"] is None:
            raise CommittedPoliciesError(
                f"{path}: the config's tier choice makes the snapshot at step "
                f"{snapshots[i]['step']} the {tier} tier, and only the tiers of {committed} "
                "are committed; restore those settings, or set data.ppo.policies=train"
            )


def publish_smax(
    map_name: str,
    cfg: PpoConfig,
    seed: int,
    data_dir: Path,
    state_path: Path,
    command: str,
    training: Mapping[str, float],
    commit: str | None = None,
) -> Path:
    """Write ``behaviour/smax_<map>/`` from a finished run of ``cfg``: the tier policies and
    ``tiers.json`` of its dataset directory ``data_dir``, the learner state at ``state_path``
    and the manifest (``commit``: of the code that trained it; default the current HEAD)."""
    from cmt.behaviour.ppo import behaviour_fingerprint

    fingerprint = behaviour_fingerprint(map_name, cfg, seed)
    try:
        state = load_sealed(state_path)
    except CheckpointError as err:
        raise CommittedPoliciesError(str(err)) from err
    if state.get("fingerprint") != fingerprint:
        raise CommittedPoliciesError(f"{state_path}: a checkpoint of other settings")
    record = json.loads((Path(data_dir) / "tiers.json").read_text())
    tiers = {t: r for t, r in record["tiers"].items() if r["snapshot_step"] is not None}
    out = smax_dir(map_name)
    for name in ("tiers.json", *(f"policies/{t}.pt" for t in tiers)):
        _copy(Path(data_dir) / name, out / name)
    _copy(Path(state_path), out / Path(state_path).name)
    manifest = {
        "name": out.name,
        "benchmark": "smax",
        "map": map_name,
        "learner": cfg.learner,
        "fingerprint": fingerprint,
        "total_steps": cfg.total_steps,
        "seed": seed,
        "medium_fraction": cfg.medium_fraction,
        "recheck_episodes": cfg.recheck_episodes,
        "recheck_candidates": cfg.recheck_candidates,
        "command": command,
        "commit": commit or _git_commit(),
        "cpu": cpu_name(),
        "snapshots": record["snapshots"],
        "medium_rule": record["medium_rule"],
        "tiers": {t: _tier_record(r) for t, r in tiers.items()},
        "dataset": _dataset_record(Path(data_dir), record),
        "training": {k: float(v) for k, v in training.items()},
    }
    write_json(out / MANIFEST, sealed_json(manifest))
    write_status()
    return out


def _tier_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A tier of a dataset's ``tiers.json`` as the manifest keeps it."""
    return {
        "step": int(summary["snapshot_step"]),
        "win_rate": float(summary["win_rate"]),
        "mean_return": float(summary["mean_return"]),
        "episodes": int(summary["episodes"]),
        "rollout_seed": int(summary["seed"]),
    }


def _dataset_record(data_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """The run's own ``train.hdf5``: its size and content digest, which a rollout of the
    committed policies with the same episode count and seed reproduces."""
    import h5py

    from cmt.integrity import hdf5_digest

    with h5py.File(data_dir / "train.hdf5", "r") as f:
        digest = hdf5_digest(f)
    return {
        "episodes_per_tier": int(record["episodes_per_tier"]),
        "transitions": int(record["transitions"]),
        "sha256": digest,
    }


def _copy(source: Path, target: Path) -> None:
    """``source`` to ``target`` atomically (nothing to do when they are one file)."""
    if target.exists() and target.samefile(source):
        return
    make_dir(target.parent)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


# --------------------------------------------------------------------------- status


def write_status() -> Path:
    """``behaviour/README.md``: what every committed directory holds, from its manifest (or,
    for an unfinished learner, from ``learner.pt``): the MuJoCo learners, then the SMAX maps."""
    from cmt.data.d4rl import REF_RETURNS

    root = behaviour_dir()
    mujoco, smax = [], []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = read_json(directory / MANIFEST) if (directory / MANIFEST).exists() else None
        if manifest is not None and manifest.get("benchmark") == "smax":
            smax.append(_smax_row(manifest))
        elif manifest is not None or (directory / LEARNER).exists():
            mujoco.append(_status_row(directory, REF_RETURNS))
    lines = [
        "# Committed behaviour policies",
        "",
        "Generated from each directory's `manifest.json` (or `learner.pt` while unfinished) "
        "by `cmt behaviour` and `scripts/run_smax_learner.py --publish`; what the files are: "
        "[docs/behaviour.md](../docs/behaviour.md) and [docs/smax.md](../docs/smax.md).",
        "",
        "| name | learner | steps | seed | expert: step, return | D4RL score | medium: step, "
        "return | random return | command |",
        "|---|---|---|---|---|---|---|---|---|",
        *mujoco,
        "",
        "SMAX: the tiers' win rate and mean return over their dataset episodes (actions "
        "sampled); steps are agent steps.",
        "",
        "| name | learner | steps | seed | good: step, win rate, return | medium: step, win "
        "rate, return | poor: win rate, return | command | commit |",
        "|---|---|---|---|---|---|---|---|---|",
        *smax,
    ]
    out = root / "README.md"
    write_text(out, "\n".join(lines) + "\n")
    return out


def _smax_row(m: Mapping[str, Any]) -> str:
    def tier(name: str, step: bool = True) -> str:
        t = m["tiers"][name]
        head = f"{t['step']}, " if step else ""
        return f"{head}{100 * t['win_rate']:.1f} %, {t['mean_return']:.2f}"

    return (
        f"| {m['name']} | {m['learner']} | {m['total_steps']} | {m['seed']} | {tier('good')} "
        f"| {tier('medium')} | {tier('poor', step=False)} | `{m['command']}` "
        f"| {m['commit'][:7]} |"
    )


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

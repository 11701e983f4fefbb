"""Offline datasets of the MuJoCo task families from one task-conditioned SAC policy per family.

Procedure (D4RL's recipe, adapted to task families; details and budgets in ``docs/mujoco.md``):

1. The random reference: uniform actions on every task.
2. SAC (``data.sac.learner``: SBX or Stable-Baselines3) trains one policy for all training
   tasks: each training episode samples a training task, and the policy observes
   ``[obs, task_params[task]]``. Every ``eval_every`` steps the current actor is stored as a
   snapshot and evaluated on every training task.
3. *Expert* is the final (or best) snapshot. *Medium* is the running-best snapshot whose mean
   return is closest to ``medium_fraction`` of the way from random to expert (D4RL's medium
   policies score about a third of the expert); *medium-replay* is the replay buffer up to it.
4. Per training task, ``episodes_per_level`` episodes of medium and expert plus that task's
   medium-replay episodes go to ``train.hdf5``; ``demo_episodes`` expert episodes per test task
   to ``demos.hdf5``; each task's random and expert mean return to ``references.json``.

The datasets keep the plain observation: the task parameter is only ever shown to SAC. With a
``checkpoint_dir``, training is checkpointed at every snapshot and continues from there when
rerun with the same family, budgets and seed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from cmt.atomic import atomic_path, make_dir, write_json
from cmt.behaviour.actor import ActorWeights, act, from_tensors, to_tensors
from cmt.behaviour.learners import Learner, make_learner
from cmt.behaviour.rollout import (
    LEVELS,
    Policy,
    concat_transitions,
    random_streams,
    rollout,
    seed_from,
    with_level,
)
from cmt.checkpoint import CheckpointError, atomic_torch_save, load_sealed
from cmt.data.schema import TransitionData
from cmt.envs.mujoco_tasks import BatchedTaskEnv, MujocoTaskFamily
from cmt.integrity import sealed_json
from cmt.sections import SacConfig

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict[str, float]], None]
"""Called at every snapshot with the step and metrics such as ``sac/eval_return``."""

STREAMS: tuple[str, ...] = (
    "sac",
    "eval",
    "train/medium",
    "train/expert",
    "demos/expert",
    "reference/random",
    "reference/expert",
    "train/random",
)
# Spawned from the seed in this order; append new streams to keep old datasets identical.

CHECKPOINT_FORMAT = 2  # 2: learner-neutral state, actors as plain weights


# --------------------------------------------------------------------------- SAC training env


class TaskConditionedEnv(gym.Env[np.ndarray, np.ndarray]):
    """SAC's training env: every episode runs a random training task, and the observation is
    ``[obs, task_params[task]]`` (float32); ``info["task_id"]`` names the task."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, family: MujocoTaskFamily, tasks: tuple[int, ...]) -> None:
        if not tasks:
            raise ValueError("TaskConditionedEnv needs at least one task")
        self.family = family
        self.tasks = np.asarray(tasks, dtype=np.int64)
        self._envs: dict[int, gym.Env] = {}
        self.task_id = int(self.tasks[0])
        action_space = self._env(self.task_id).action_space
        assert isinstance(action_space, gym.spaces.Box)
        if not (np.all(action_space.low == -1.0) and np.all(action_space.high == 1.0)):
            # Behaviour policies emit tanh-squashed actions and store them unscaled.
            raise ValueError(f"{family.name}: expected actions in [-1, 1], got {action_space}")
        self.action_space = action_space
        dim = family.obs_dim + family.task_params.shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)

    def _env(self, task: int) -> gym.Env:
        if task not in self._envs:
            self._envs[task] = self.family.make_env(task)
        return self._envs[task]

    def _augment(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [np.asarray(obs, dtype=np.float32), self.family.task_params[self.task_id]]
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.task_id = int(self.np_random.choice(self.tasks))
        obs, info = self._env(self.task_id).reset(seed=int(self.np_random.integers(2**31 - 1)))
        return self._augment(obs), {**info, "task_id": self.task_id}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._env(self.task_id).step(action)
        info["task_id"] = self.task_id
        return self._augment(obs), float(reward), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


# --------------------------------------------------------------------------- behaviour policies


def actor_policy(
    actor: ActorWeights, task_params: np.ndarray, rng: np.random.Generator | None
) -> Policy:
    """Batched policy of a SAC actor fed ``[obs, task_params[task]]``.

    With ``rng`` actions are sampled from the squashed Gaussian (noise from ``rng``, so runs
    are reproducible whatever the learner's own random state did); without it, the mean action.
    """

    def policy(obs: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.asarray(obs, dtype=np.float32), task_params[task_ids]], axis=1)
        return act(actor, x, rng)

    return policy


class EnvPool:
    """A family's environments kept across rollouts. Making a MuJoCo env costs about as much
    as a few hundred of its steps, and a level of short episodes (random hopper: about 20
    steps) takes tens of thousands of them, so a fresh env per episode would dominate.
    ``reset`` re-seeds an env and its simulator state, so an episode does not depend on whether
    its env is new. One rollout at a time: a pool is not shared between threads."""

    def __init__(self, family: MujocoTaskFamily) -> None:
        self.family = family
        self.envs: dict[int, list[gym.Env]] = {}

    def batched(self, task_ids: np.ndarray) -> BatchedTaskEnv:
        used: dict[int, int] = {}
        envs = []
        for task in np.asarray(task_ids, dtype=np.int64).tolist():
            mine, k = self.envs.setdefault(task, []), used.get(task, 0)
            if k == len(mine):
                mine.append(self.family.make_env(task))
            envs.append(mine[k])
            used[task] = k + 1
        return BatchedTaskEnv(envs)


def random_policy(act_dim: int, rng: np.random.Generator) -> Policy:
    """Uniform actions in [-1, 1]: the random reference."""
    return lambda obs, ids: rng.uniform(-1.0, 1.0, size=(obs.shape[0], act_dim)).astype(np.float32)


def random_reference(
    family: MujocoTaskFamily, rngs: dict[str, np.random.Generator], episodes: int
) -> np.ndarray:
    """Mean return of uniform actions on every task; (num_tasks,)."""
    rng = rngs["reference/random"]
    policy = random_policy(family.act_dim, rng)
    return _mean_returns(family, np.arange(family.num_tasks), episodes, policy, seed_from(rng))


def _mean_returns(
    family: MujocoTaskFamily, tasks: np.ndarray, episodes: int, policy: Policy, seed: int
) -> np.ndarray:
    """Mean return of each task over ``episodes`` episodes run together; (len(tasks),)."""
    _, returns = rollout(family, np.repeat(tasks, episodes), policy, seed)
    return returns.reshape(len(tasks), episodes).mean(axis=1)


# --------------------------------------------------------------------------- snapshots


def select_medium(
    mean_returns: np.ndarray, random_return: float, fraction: float
) -> tuple[int, str]:
    """Index of the medium snapshot among all but the last (expert) one, and the rule used.

    ``"closest"``: among the running-best snapshots (each beat every earlier one: the only
    ones whose actors a checkpoint keeps), the one whose return is closest to ``fraction`` of
    the way from random to expert. A learning curve that jumps past that point (hopper goes
    from a quarter to most of the expert's return in 10k steps) leaves the medium policy on
    whichever side is nearer, as D4RL's medium policies score about a third of the expert.
    ``"no_progress"``: the expert is no better than random (tiny budgets), take the first.
    """
    returns = np.asarray(mean_returns, dtype=np.float64)
    if returns.size < 2:
        raise ValueError("need at least two snapshots to choose a medium one")
    span = returns[-1] - random_return
    if span <= 0:
        return 0, "no_progress"
    candidates = returns[:-1]
    records = [i for i in range(candidates.size) if i == 0 or candidates[i] > candidates[:i].max()]
    target = random_return + fraction * span
    return min(records, key=lambda i: abs(candidates[i] - target)), "closest"


def replay_transitions(buffer: Any, rows: int, family: MujocoTaskFamily) -> TransitionData:
    """The first ``rows`` transitions of an SB3 replay buffer as plain-observation episodes,
    grouped by task (episodes of a task keep their order).

    The task of each transition is read back from the task parameters appended to its
    observation. An episode cut by ``rows`` is marked as a timeout (end of data).
    """
    from cmt.data.hdf5 import episode_bounds  # lazy: keeps env imports free of h5py

    d = family.obs_dim
    full_obs = buffer.observations[:rows, 0]  # (N, obs_dim + p)
    match = np.all(full_obs[:, None, d:] == family.task_params[None], axis=2)  # (N, tasks)
    if not np.all(match.sum(axis=1) == 1):
        raise ValueError("replay buffer rows whose task parameters match no single task")
    task = match.argmax(axis=1).astype(np.int64)
    dones = buffer.dones[:rows, 0] > 0.5
    timeouts = buffer.timeouts[:rows, 0] > 0.5
    terminals = dones & ~timeouts
    timeouts = timeouts.copy()
    timeouts[-1] |= not dones[-1]
    starts, lengths = episode_bounds(terminals, timeouts)
    order = np.argsort(task[starts], kind="stable")
    idx = np.concatenate(
        [np.arange(s, s + n) for s, n in zip(starts[order], lengths[order], strict=True)]
    )
    return TransitionData(
        observations=full_obs[idx, :d].astype(np.float32),
        actions=buffer.actions[:rows, 0][idx].astype(np.float32),
        rewards=buffer.rewards[:rows, 0][idx].astype(np.float32),
        terminals=terminals[idx],
        timeouts=timeouts[idx],
        next_observations=buffer.next_observations[:rows, 0, :d][idx].astype(np.float32),
        task_ids=task[idx],
    )


# --------------------------------------------------------------------------- checkpoints


def refill_from_policy(model: Any) -> None:
    """Make an SB3/SBX off-policy learner act with its own (stochastic) policy while it waits
    for ``learning_starts``, where SB3 would act uniformly at random.

    For a learner resumed on an empty buffer: a buffer refilled at random and then learned
    from undoes the training (measured on ant-dir resumed at 300k steps: the evaluation
    return fell from 324.5 to 90.8 within 10k steps). Updates still wait for
    ``learning_starts``; only the actions of the wait change."""
    sample = model._sample_action

    def sample_from_policy(
        learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        return cast(tuple[np.ndarray, np.ndarray], sample(0, action_noise, n_envs))

    model._sample_action = sample_from_policy


_BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class _Checkpoint:
    """Resumable learner state in ``directory``: ``state.pt`` (weights, optimisers, counters,
    snapshot returns and the actors that can still become medium or expert; a few MB, small
    enough to commit) and the replay buffer as ``.npz`` chunks, one per snapshot, so each save
    writes only the new rows. Without the chunks (a fresh clone of a committed ``state.pt``)
    the learner resumes on an empty buffer, refilled by ``learning_starts`` steps of its own
    policy (:func:`refill_from_policy`), and medium-replay cannot come from it any more."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.chunks: list[str] = []
        self.saved_rows = 0
        self.buffer_from = 0  # the SAC step of the buffer's row 0
        self.seconds_before = 0.0  # training time of earlier sittings

    def save(self, learner: Learner, snapshots: list[dict[str, Any]], seconds: float) -> None:
        """Write the state after ``seconds`` of training in this sitting."""
        model = learner.model
        rb, step = model.replay_buffer, int(model.num_timesteps)
        rows = step - self.buffer_from
        if rb.full or rb.pos != rows:
            raise RuntimeError(f"replay buffer at row {rb.pos} (full={rb.full}) at step {step}")
        if rows > self.saved_rows:
            first = self.buffer_from + self.saved_rows
            name = f"buffer_{first:09d}_{step:09d}.npz"
            with atomic_path(self.dir / name) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: getattr(rb, k)[self.saved_rows : rows] for k in _BUFFER_KEYS})
            self.chunks.append(name)
            self.saved_rows = rows
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "num_timesteps": step,
            "n_updates": int(model._n_updates),
            "learner": learner.state(),
            "buffer_from": self.buffer_from,
            "train_seconds": self.seconds_before + seconds,
            "chunks": list(self.chunks),
            "snapshots": [_stored_snapshot(s) for s in snapshots],
        }
        atomic_torch_save(state, self.dir / "state.pt")

    def load(
        self, learner: Learner, max_steps: int, learning_starts: int
    ) -> list[dict[str, Any]] | None:
        """Restore ``learner`` and return the snapshots, or None (nothing usable: start over)."""
        path = self.dir / "state.pt"
        if not path.exists():
            return None
        try:
            state = load_sealed(path)
        except CheckpointError as err:
            # Only a cache of work done: a corrupt one costs a restart, not a blocked stage.
            log.warning("%s; starting over", err)
            return None
        steps = int(state.get("num_timesteps", -1))
        if (
            state.get("format") != CHECKPOINT_FORMAT
            or state.get("fingerprint") != self.fingerprint
            or not 0 < steps <= max_steps
        ):
            log.warning("%s: checkpoint of other settings, starting over", self.dir)
            return None
        model = learner.model
        learner.load_state(state["learner"])
        self.seconds_before = float(state.get("train_seconds", 0.0))
        model.num_timesteps = steps
        model._n_updates = int(state["n_updates"])
        if self._load_buffer(model, state, steps, max_steps):
            self.chunks, self.saved_rows = list(state["chunks"]), steps - self.buffer_from
        else:
            log.warning(
                "%s: no replay buffer beside state.pt; resuming at step %d on an empty one",
                self.dir,
                steps,
            )
            for chunk in self.dir.glob("buffer_*.npz"):
                chunk.unlink()
            self.chunks, self.saved_rows, self.buffer_from = [], 0, steps
            model.learning_starts = steps + learning_starts  # refill before updating again
            refill_from_policy(model)
        return [_loaded_snapshot(s) for s in state["snapshots"]]

    def _load_buffer(self, model: Any, state: dict[str, Any], steps: int, max_steps: int) -> bool:
        """Fill the replay buffer from the chunks; False when any is missing."""
        names = list(state["chunks"])
        if not all((self.dir / name).exists() for name in names):
            return False
        self.buffer_from = int(state.get("buffer_from", 0))
        rb, start = model.replay_buffer, 0
        for name in names:
            with np.load(self.dir / name, allow_pickle=False) as chunk:
                n = chunk["rewards"].shape[0]
                for key in _BUFFER_KEYS:
                    getattr(rb, key)[start : start + n] = chunk[key]
            start += n
        if start != steps - self.buffer_from:
            raise ValueError(f"{self.dir}: buffer chunks hold {start} rows, expected {steps}")
        rb.pos = start
        if steps < max_steps and start and rb.dones[start - 1, 0] < 0.5:
            # The interrupted episode ends here: a truncation, so SAC still bootstraps from it.
            rb.dones[start - 1, 0] = 1.0
            rb.timeouts[start - 1, 0] = 1.0
        return True

    def clear(self) -> None:
        for path in [self.dir / "state.pt", *self.dir.glob("buffer_*.npz")]:
            path.unlink(missing_ok=True)
        self.chunks, self.saved_rows, self.buffer_from = [], 0, 0


def _stored_snapshot(snap: dict[str, Any]) -> dict[str, Any]:
    actor = snap["actor"]
    return {
        "step": snap["step"],
        "returns": torch.as_tensor(snap["returns"]),
        "actor": None if actor is None else to_tensors(actor),
    }


def _loaded_snapshot(snap: dict[str, Any]) -> dict[str, Any]:
    actor = snap["actor"]
    return {
        "step": int(snap["step"]),
        "returns": snap["returns"].numpy(),
        "actor": None if actor is None else from_tensors(actor),
    }


def keep_candidate_actors(snapshots: list[dict[str, Any]]) -> None:
    """Drop the actor of the next-to-last snapshot unless its mean return beat every earlier
    one. The medium snapshot (the first to reach a threshold, or the best below it) and the
    expert (the best, or the last) are always such records, so nothing choosable is lost,
    and a checkpoint of a million steps keeps a few dozen actors instead of hundreds."""
    if len(snapshots) < 2:
        return
    means = [float(np.mean(s["returns"])) for s in snapshots[:-1]]
    if len(means) > 1 and means[-1] <= max(means[:-1]):
        snapshots[-2]["actor"] = None


# --------------------------------------------------------------------------- generation


_SAC_RUN_SETTINGS = {
    "learner",
    "train_freq",
    "learning_starts",
    "batch_size",
    "net_arch",
    "learning_rate",
    "gamma",
    "eval_every",
    "eval_episodes",
    "stochastic",
}
"""The SAC settings that make a run a different one (``sac_steps`` is left out: a finished
shorter run continues to a larger budget)."""


def sac_fingerprint(family: MujocoTaskFamily, budgets: SacConfig, seed: int) -> str:
    """What makes a training run a different one (:data:`_SAC_RUN_SETTINGS`, family, seed)."""
    setup = {"family": family.name, "num_tasks": family.num_tasks, "seed": seed}
    setup.update(budgets.model_dump(include=_SAC_RUN_SETTINGS))
    return json.dumps(setup, sort_keys=True, default=list)


def train_sac(
    family: MujocoTaskFamily,
    budgets: SacConfig,
    seed: int,
    random_return: float,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Train the task-conditioned SAC policy on the family's training tasks.

    Returns the learner, the snapshots (``step``, per-training-task mean ``returns``, ``actor``
    weights or None where :func:`keep_candidate_actors` dropped them) and timing statistics.
    ``random_return`` is only used to report normalised progress.
    """
    rngs = random_streams(seed, STREAMS)
    sac_seed, eval_seed = seed_from(rngs["sac"]), seed_from(rngs["eval"])
    env = TaskConditionedEnv(family, family.train_tasks)
    learner = make_learner(env, budgets, sac_seed)
    model = learner.model
    fingerprint = sac_fingerprint(family, budgets, seed)
    ckpt = None if checkpoint_dir is None else _Checkpoint(checkpoint_dir, fingerprint)
    snapshots: list[dict[str, Any]] = []
    if ckpt is not None:
        restored = ckpt.load(learner, budgets.sac_steps, budgets.learning_starts)
        if restored is None:
            ckpt.clear()
        else:
            snapshots = restored
            log.info("%s: resuming SAC at step %d", family.name, model.num_timesteps)
    start_step = int(model.num_timesteps)
    snapshotter = _SacSnapshots(
        family, budgets, learner, snapshots, ckpt, eval_seed, random_return, start_step, on_metrics
    )
    if start_step < budgets.sac_steps:
        model.learn(
            total_timesteps=budgets.sac_steps - start_step,
            callback=snapshotter.callback(progress),
            reset_num_timesteps=start_step == 0,
        )
    elapsed = time.perf_counter() - snapshotter.t0
    env.close()
    if not snapshots or snapshots[-1]["step"] != budgets.sac_steps:
        raise RuntimeError(f"SAC ended at step {model.num_timesteps} without a final snapshot")
    stats = {
        "resumed_from": start_step,
        # Over every sitting, so that the manifest of a resumed run tells the whole cost.
        "train_seconds": elapsed + (ckpt.seconds_before if ckpt is not None else 0.0),
        "seconds": elapsed,
        "steps_per_s": (budgets.sac_steps - start_step) / elapsed if elapsed > 0 else 0.0,
    }
    stats["buffer_from"] = ckpt.buffer_from if ckpt is not None else 0
    return learner, snapshots, stats


class _SacSnapshots:
    """SAC's snapshots: every ``eval_every`` steps the actor is evaluated on the training
    tasks, kept, checkpointed and reported."""

    def __init__(
        self,
        family: MujocoTaskFamily,
        budgets: SacConfig,
        learner: Learner,
        snapshots: list[dict[str, Any]],
        ckpt: _Checkpoint | None,
        eval_seed: int,
        random_return: float,
        start_step: int,
        on_metrics: MetricsCallback | None,
    ) -> None:
        self.family, self.budgets, self.snapshots = family, budgets, snapshots
        self.learner, self.model = learner, learner.model
        self.ckpt, self.eval_seed, self.random_return = ckpt, eval_seed, random_return
        self.start_step, self.on_metrics = start_step, on_metrics
        self.train_tasks = np.asarray(family.train_tasks, dtype=np.int64)
        self.t0 = time.perf_counter()

    def take(self, step: int) -> None:
        family, budgets, actor = self.family, self.budgets, self.learner.actor()
        rng = np.random.default_rng(self.eval_seed) if budgets.stochastic else None
        policy = actor_policy(actor, family.task_params, rng)
        returns = _mean_returns(
            family, self.train_tasks, budgets.eval_episodes, policy, self.eval_seed
        )
        self.snapshots.append({"step": step, "returns": returns, "actor": actor})
        keep_candidate_actors(self.snapshots)
        if self.ckpt is not None:
            self.ckpt.save(self.learner, self.snapshots, time.perf_counter() - self.t0)
        rate = (step - self.start_step) / max(time.perf_counter() - self.t0, 1e-9)
        log.info(
            "%s SAC step %d/%d (%.0f steps/s, ETA %.0f min): mean train-task return %.1f "
            "(random %.1f, first snapshot %.1f)",
            *(family.name, step, budgets.sac_steps, rate),
            (budgets.sac_steps - step) / max(rate, 1e-9) / 60,
            *(returns.mean(), self.random_return, self.snapshots[0]["returns"].mean()),
        )
        if self.on_metrics is not None:
            self.on_metrics(
                step,
                {
                    "sac/eval_return": float(returns.mean()),
                    "sac/steps_per_s": rate,
                    "sac/return_over_random": float(returns.mean() - self.random_return),
                },
            )

    def callback(self, progress: bool) -> Any:
        """An SB3 callback that snapshots at the end of a rollout, when the step's transition
        is in the buffer, and shows a progress bar."""
        from stable_baselines3.common.callbacks import BaseCallback

        owner, budgets = self, self.budgets

        class Snapshots(BaseCallback):
            def _on_training_start(self) -> None:
                self.bar = tqdm(
                    total=budgets.sac_steps,
                    initial=owner.start_step,
                    desc=f"SAC {owner.family.name}",
                    disable=not progress,
                    mininterval=1.0,
                )

            def _on_step(self) -> bool:
                self.bar.update(1)
                return True

            def _on_rollout_end(self) -> None:
                step = int(self.num_timesteps)
                if step % budgets.eval_every == 0 or step == budgets.sac_steps:
                    owner.take(step)
                    self.bar.set_postfix(eval_return=f"{owner.snapshots[-1]['returns'].mean():.1f}")

            def _on_training_end(self) -> None:
                self.bar.close()

        return Snapshots()


class MissingHistory(RuntimeError):
    """Medium-replay was asked of a learner whose replay buffer does not start at step 0."""


@dataclass
class Behaviour:
    """Trained SAC behaviour of a family: the random reference, the snapshots, the chosen
    medium and expert actors, and one random stream per dataset part (:data:`STREAMS`)."""

    family: MujocoTaskFamily
    budgets: SacConfig
    seed: int
    replay_buffer: Any  # the learner's SB3 replay buffer (medium-replay), None if not trained
    snapshots: list[dict[str, Any]]
    random_ref: np.ndarray  # (num_tasks,) mean return of uniform actions
    medium_index: int
    medium_rule: str
    expert_index: int
    actors: dict[str, ActorWeights]  # "medium", "expert"
    rngs: dict[str, np.random.Generator]
    stats: dict[str, float]
    pool: EnvPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = EnvPool(self.family)

    @property
    def medium(self) -> dict[str, Any]:
        return self.snapshots[self.medium_index]

    @property
    def expert(self) -> dict[str, Any]:
        return self.snapshots[self.expert_index]

    def policy(self, level: str, rng: np.random.Generator) -> Policy:
        """The level's batched policy (``random``, ``medium`` or ``expert``)."""
        if level == "random":
            return random_policy(self.family.act_dim, rng)
        return actor_policy(
            self.actors[level], self.family.task_params, rng if self.budgets.stochastic else None
        )

    def run(self, stream: str, task_ids: np.ndarray) -> tuple[TransitionData, np.ndarray]:
        """One episode per task id with the policy of ``stream`` (``"<part>/<level>"``)."""
        level = stream.split("/")[1]
        rng = self.rngs[stream]
        policy, seed = self.policy(level, rng), seed_from(rng)
        data, returns = rollout(self.family, task_ids, policy, seed, self.pool.batched)
        return with_level(data, level), returns

    def replay(self) -> TransitionData:
        """Medium-replay: SAC's replay buffer up to the medium snapshot."""
        if self.replay_buffer is None or self.stats.get("buffer_from", 0) != 0:
            raise MissingHistory(
                f"{self.family.name}: medium-replay is the learner's own replay buffer up to "
                "the medium snapshot, and this learner's buffer does not reach back to step 0 "
                "(committed policies, or a resume on a fresh clone). Set "
                "data.sac.policies=train and remove outputs/sac/<env> to retrain it."
            )
        rows = int(self.medium["step"])
        return with_level(
            replay_transitions(self.replay_buffer, rows, self.family), "medium_replay"
        )

    def expert_reference(self, episodes: int) -> np.ndarray:
        """Mean return of the expert on every task; (num_tasks,)."""
        rng = self.rngs["reference/expert"]
        tasks = np.arange(self.family.num_tasks)
        return _mean_returns(
            self.family, tasks, episodes, self.policy("expert", rng), seed_from(rng)
        )

    def metadata(self) -> dict[str, Any]:
        """What every dataset built from this behaviour records about it."""
        return {
            "behaviour": "sac",
            "sac_steps": self.budgets.sac_steps,
            "medium_step": int(self.medium["step"]),
            "expert_step": int(self.expert["step"]),
        }

    def save(self, out_dir: Path) -> None:
        """``policies/{medium,expert}.pt`` (actor weights) and ``sac_log.json`` (snapshot
        returns, chosen medium). No timings, so a rerun from a finished checkpoint writes
        byte-identical files and DVC retrains nothing downstream."""
        family, budgets = self.family, self.budgets
        for level, snap in (("medium", self.medium), ("expert", self.expert)):
            meta = {
                "family": family.name,
                "level": level,
                "step": int(snap["step"]),
                "obs_dim": family.obs_dim,
                "task_param_dim": int(family.task_params.shape[1]),
                "net_arch": list(budgets.net_arch),
                "learner": budgets.learner,
                "seed": self.seed,
            }
            atomic_torch_save(
                {"actor": to_tensors(snap["actor"]), "meta": json.dumps(meta)},
                out_dir / "policies" / f"{level}.pt",
            )
        train_tasks = list(family.train_tasks)
        write_json(
            out_dir / "sac_log.json",
            {
                "family": family.name,
                "budgets": budgets.model_dump(mode="json"),
                "random_train_return": float(self.random_ref[train_tasks].mean()),
                "snapshots": [
                    {"step": int(s["step"]), "mean_return": float(s["returns"].mean())}
                    for s in self.snapshots
                ],
                "medium": {"step": int(self.medium["step"]), "rule": self.medium_rule},
                "expert": {"step": int(self.expert["step"]), "rule": budgets.expert_snapshot},
            },
        )

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.budgets.sac_steps,
            "medium_step": int(self.medium["step"]),
            # Timing lives here (MLflow metrics of collect), not in sac_log.json.
            "resumed_from": int(self.stats["resumed_from"]),
            "seconds": float(self.stats["seconds"]),
            "steps_per_s": float(self.stats["steps_per_s"]),
        }


D4RL_LEVEL_PARTS: dict[str, tuple[str, ...]] = {
    "random": ("random",),
    "medium": ("medium",),
    "expert": ("expert",),
    "medium_replay": ("medium_replay",),
    "medium_expert": ("medium", "expert"),
}
"""What each D4RL level holds: episodes of these snapshots (medium-replay: the replay buffer)."""


MAX_BATCH = 2000
"""Episodes a level rolls out together: short random episodes would ask for tens of thousands."""


def d4rl_level(
    behaviour: Behaviour, level: str, transitions: int, horizon: int, metadata: dict[str, Any]
) -> TransitionData:
    """A D4RL level of a single-task family's behaviour, with ``metadata``: the replay buffer
    up to the medium snapshot, or whole episodes of each snapshot of :data:`D4RL_LEVEL_PARTS`
    until at least ``transitions`` transitions each."""
    pieces = []
    for part in D4RL_LEVEL_PARTS[level]:
        if part == "medium_replay":
            pieces.append(behaviour.replay())
            continue
        episodes, total, count = [], 0, 0
        while total < transitions:
            # Full-length episodes first; then as many as the episodes so far say are missing,
            # so the level ends within one batch of the size asked (not one horizon's worth).
            length = horizon if not count else total / count
            batch = min(MAX_BATCH, max(1, math.ceil((transitions - total) / length)))
            data, returns = behaviour.run(f"train/{part}", np.zeros(batch, dtype=np.int64))
            episodes.append(data)
            total, count = total + len(data), count + returns.size
        pieces.append(concat_transitions(episodes))
    return concat_transitions(pieces, metadata)


def train_behaviour(
    family: MujocoTaskFamily,
    budgets: SacConfig,
    seed: int,
    reference_episodes: int,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> Behaviour:
    """Measure the random reference, train (or resume) SAC on the family's training tasks and
    pick the medium snapshot. Deterministic given ``seed`` as far as SB3 and torch are (same
    device and thread count, no resume)."""
    rngs = random_streams(seed, STREAMS)
    train_tasks = np.asarray(family.train_tasks, dtype=np.int64)
    # Random reference first: it measures SAC's progress and picks the medium snapshot.
    random_ref = random_reference(family, rngs, reference_episodes)
    random_train = float(random_ref[train_tasks].mean())
    threads = torch.get_num_threads()
    if budgets.torch_threads:
        torch.set_num_threads(budgets.torch_threads)
    try:
        learner, snapshots, stats = train_sac(
            family, budgets, seed, random_train, checkpoint_dir, on_metrics, progress
        )
    finally:
        torch.set_num_threads(threads)
    return choose_snapshots(
        family, budgets, seed, snapshots, random_ref, rngs, stats, learner.model.replay_buffer
    )


def choose_snapshots(
    family: MujocoTaskFamily,
    budgets: SacConfig,
    seed: int,
    snapshots: list[dict[str, Any]],
    random_ref: np.ndarray,
    rngs: dict[str, np.random.Generator],
    stats: dict[str, float],
    replay_buffer: Any,
) -> Behaviour:
    """The behaviour of a finished training: its expert and medium snapshots chosen."""
    random_train = float(random_ref[np.asarray(family.train_tasks, dtype=np.int64)].mean())
    curve = np.array([s["returns"].mean() for s in snapshots])
    # The expert is the final snapshot, or the best one: with short training the last
    # evaluation can land on a dip. The medium one is chosen among those before it.
    expert_i = int(np.argmax(curve)) if budgets.expert_snapshot == "best" else len(curve) - 1
    if expert_i == 0:
        expert_i = len(curve) - 1  # no snapshot before the best: fall back to the final one
    medium_i, rule = select_medium(curve[: expert_i + 1], random_train, budgets.medium_fraction)
    actors = {"medium": snapshots[medium_i]["actor"], "expert": snapshots[expert_i]["actor"]}
    if actors["medium"] is None or actors["expert"] is None:
        raise RuntimeError("the chosen medium or expert snapshot kept no actor")
    return Behaviour(
        family,
        budgets,
        seed,
        replay_buffer,
        snapshots,
        random_ref,
        medium_i,
        rule,
        expert_i,
        actors,
        rngs,
        stats,
    )


def generate_mujoco(
    behaviour: Behaviour, cfg: Any, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Write ``train.hdf5``, ``demos.hdf5`` and ``references.json`` of a meta-RL family, with
    the data settings ``cfg`` (``cmt.benchmarks.mujoco_meta.MujocoMetaData``), from the
    family's trained or committed ``behaviour``.

    ``train.hdf5`` holds, per training task, ``cfg.episodes_per_level`` medium and expert
    episodes and the task's medium-replay episodes (``infos/level`` indexes
    :data:`LEVELS`); ``demos.hdf5`` ``cfg.demo_episodes`` expert episodes of each scored
    task; ``references.json`` the mean random and expert return of every task over
    ``cfg.reference_episodes`` episodes; plus :meth:`Behaviour.save`'s files. Returns a summary.
    Validation tasks (``cfg.validation_tasks``) are training tasks of the behaviour policy
    but not of ``train.hdf5``: they get the demonstrations and are the scored tasks.
    """
    from cmt.data.hdf5 import write_hdf5  # lazy: keeps env imports free of h5py

    out_dir, family = Path(out_dir), behaviour.family
    make_dir(out_dir)
    train_tasks = np.asarray(cfg.train_task_ids, dtype=np.int64)
    scored = np.asarray(cfg.eval_task_ids, dtype=np.int64)
    base_meta = _family_metadata(family, cfg, train_tasks, behaviour)
    summary: dict[str, Any] = {"family": family.name}
    with tqdm(total=4, desc=f"datasets {family.name}", disable=not progress) as bar:
        train, summary["train"] = _meta_train_split(behaviour, train_tasks, cfg, bar)
        write_hdf5(
            out_dir / "train.hdf5", concat_transitions(train, {**base_meta, "split": "train"})
        )
        bar.update()
        bar.set_postfix_str("demos")
        demos, demo_returns = behaviour.run("demos/expert", np.repeat(scored, cfg.demo_episodes))
        write_hdf5(
            out_dir / "demos.hdf5", concat_transitions([demos], {**base_meta, "split": "demos"})
        )
        summary["demos"] = {
            "episodes": int(demo_returns.size),
            "transitions": len(demos),
            "mean_return": float(demo_returns.mean()),
        }
        bar.update()
        bar.set_postfix_str("reference/expert")
        references, summary["references"] = _meta_references(behaviour, family, cfg)
        write_json(out_dir / "references.json", sealed_json(references))
        bar.update()
        bar.set_postfix_str("policies")
        behaviour.save(out_dir)
        bar.update()
    summary["sac"] = behaviour.summary()
    return summary


def _family_metadata(
    family: MujocoTaskFamily, cfg: Any, train_tasks: np.ndarray, behaviour: Behaviour
) -> dict[str, Any]:
    """What every dataset file of a meta-RL family records about its making."""
    return {
        "family": family.name,
        "num_tasks": family.num_tasks,
        "horizon": family.horizon,
        "seed": cfg.seed,
        "levels": list(LEVELS),
        "train_tasks": train_tasks.tolist(),
        "test_tasks": list(cfg.test_tasks),
        **_validation(cfg),
        **behaviour.metadata(),
    }


def _validation(cfg: Any) -> dict[str, list[int]]:
    """The carved-out validation tasks, recorded only where there are some, so that a test
    split's files stay byte-identical to those made before the option existed."""
    return {"validation_tasks": list(cfg.validation_tasks)} if cfg.validation_tasks else {}


def _meta_train_split(
    behaviour: Behaviour, train_tasks: np.ndarray, cfg: Any, bar: Any
) -> tuple[list[TransitionData], dict[str, Any]]:
    """Medium and expert episodes of every training task, then the replay buffer; and their
    summary."""
    parts, level_means, level_episodes = [], {}, {}
    for level in ("medium", "expert"):
        bar.set_postfix_str(f"train/{level}")
        data, returns = behaviour.run(
            f"train/{level}", np.repeat(train_tasks, cfg.episodes_per_level)
        )
        parts.append(data)
        level_means[level] = float(returns.mean())
        level_episodes[level] = int(returns.size)
    replay = behaviour.replay()  # the learner's buffer: every task it trained on
    replay = replay.take(np.flatnonzero(np.isin(replay.task_ids, train_tasks)))
    parts.append(replay)
    ends = replay.terminals | replay.timeouts
    level_episodes["medium_replay"] = int(ends.sum())
    level_means["medium_replay"] = float(replay.rewards.sum() / max(1, ends.sum()))
    summary = {
        "episodes": sum(level_episodes.values()),
        "transitions": sum(len(p) for p in parts),
        "episodes_per_level": level_episodes,
        "mean_return": level_means,
    }
    return parts, summary


def _meta_references(
    behaviour: Behaviour, family: MujocoTaskFamily, cfg: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """Every task's random and expert reference return, and their means."""
    expert_ref = behaviour.expert_reference(cfg.reference_episodes)
    references: dict[str, Any] = {
        "family": family.name,
        "train_tasks": list(cfg.train_task_ids),
        "test_tasks": list(cfg.test_tasks),
        **_validation(cfg),
    }
    for task in range(family.num_tasks):
        references[str(task)] = {
            "random": float(behaviour.random_ref[task]),
            "expert": float(expert_ref[task]),
        }
    means = {"random": float(behaviour.random_ref.mean()), "expert": float(expert_ref.mean())}
    return references, means

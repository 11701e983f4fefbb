"""Offline SMAX datasets in OG-MARL's quality tiers, from one parameter-shared PPO policy.

Procedure (details and budgets in ``docs/smax.md``):

1. One policy shared by all allies is trained by the configured learner (``learner``):
   ``mappo`` (:mod:`cmt.behaviour.mappo`, JAX, a centralised critic) or sb3-contrib's
   MaskablePPO, for which :class:`SmaxVecEnv` makes every ally of every batched SMAX episode
   one entry of SB3's ``VecEnv``, with its available actions as the action mask and the team
   reward as its reward.
2. A snapshot of the policy is taken at the start and every ``snapshot_every`` agent steps,
   and evaluated (win rate, mean return) on ``eval_episodes`` episodes.
3. *Good* is the best snapshot by win rate; *Medium* the snapshot before it whose win rate is
   closest to ``medium_fraction`` of Good's; *Poor* the first snapshot (the untrained policy,
   near-uniform over the available actions). Optionally *heuristic*: SMAX's scripted policy.
   With ``recheck_episodes``, the candidates are evaluated again on more episodes first
   (:mod:`cmt.behaviour.tier_choice`).
4. ``episodes_per_tier`` episodes of each tier, sampled from the policy, go to ``train.hdf5``
   (``infos/level`` indexes :data:`TIERS`, ``infos/won`` marks won episodes' last steps), and
   the policy tiers' actors to ``policies/<tier>.pt``
   (:func:`cmt.behaviour.mappo.load_tier_policies` loads them without training).

Training is checkpointed under the behaviour directory at every snapshot and continues from
there when rerun with the same map, budgets and seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from cmt.atomic import write_json
from cmt.behaviour.rollout import concat_transitions, random_streams, seed_from
from cmt.behaviour.tier_choice import choose_tiers, rechecker
from cmt.checkpoint import CheckpointError, atomic_torch_save, load_sealed
from cmt.data.schema import LEVEL, TransitionData
from cmt.envs.smax import (
    EpisodeBatch,
    MultiAgentPolicy,
    SmaxBatchedEnv,
    heuristic_policy,
    run_episodes,
    smax_map,
)
from cmt.sections import MAPPO_FIELDS_ADDED_LATER, PPO_AFTER_TRAINING, PpoConfig

log = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("poor", "medium", "good", "heuristic")
"""Dataset tiers (OG-MARL's names, plus SMAX's heuristic); ``infos/level`` indexes this."""

_STREAMS: tuple[str, ...] = ("ppo", "eval", "env", *(f"tier/{t}" for t in TIERS), "recheck")
# Spawned from the seed in this order; append new streams to keep old datasets identical.

CHECKPOINT_FORMAT = 1
_EPISODE_CHUNK = 256  # episodes rolled out at once when writing a tier (bounds memory)

MetricsCallback = Callable[[int, dict[str, float]], None]
"""Called at every snapshot with the step and ``ppo/win_rate`` and ``ppo/mean_return``."""


# --------------------------------------------------------------------------- SB3 VecEnv


class SmaxVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a :class:`SmaxBatchedEnv`: entry ``b * A + a`` is ally ``a`` of
    episode ``b``. Every ally gets the team reward and ends with its episode; finished
    episodes restart at once (SB3's auto-reset, with ``terminal_observation`` and
    ``TimeLimit.truncated`` in the infos). ``action_masks()`` gives the available actions.
    """

    def __init__(self, map_name: str, n_envs: int, seed: int) -> None:
        self.env = SmaxBatchedEnv(map_name, n_envs)
        self.render_mode = None
        e = self.env
        self._shape = (e.num_envs, e.num_agents)
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(e.obs_dim,), dtype=np.float32)
        super().__init__(e.num_envs * e.num_agents, obs_space, gym.spaces.Discrete(e.num_actions))
        self._seed = seed
        self._avail = np.ones((self.num_envs, e.num_actions), dtype=bool)
        self._actions = np.zeros(self._shape, dtype=np.int64)
        self._returns = np.zeros(e.num_envs)
        self._lengths = np.zeros(e.num_envs, dtype=np.int64)

    def _flat(self, obs: np.ndarray, avail: np.ndarray) -> np.ndarray:
        self._avail = avail.reshape(self.num_envs, -1)
        return obs.reshape(self.num_envs, -1)

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds[0] is not None else self._seed
        self._seed = seed + 1  # a later reset() starts other episodes
        self._reset_seeds()
        self._returns[:] = 0
        self._lengths[:] = 0
        return self._flat(*self.env.reset(seed))

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self._shape)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, avail, reward, term, trunc, won = self.env.step(self._actions)
        a = self.env.num_agents
        self._returns += reward
        self._lengths += 1
        done = term | trunc
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            for b in np.flatnonzero(done):
                episode = {"r": float(self._returns[b]), "l": int(self._lengths[b])}
                for i in range(b * a, (b + 1) * a):
                    infos[i] = {
                        "terminal_observation": obs[b, i - b * a].copy(),
                        "TimeLimit.truncated": bool(trunc[b]),
                        "is_success": bool(won[b]),
                        "episode": episode,
                    }
            self._returns[done] = 0
            self._lengths[done] = 0
            obs, avail, _ = self.env.reset_done()
        return (
            self._flat(obs, avail),
            np.repeat(reward, a).astype(np.float32),
            np.repeat(done, a),
            infos,
        )

    def action_masks(self) -> np.ndarray:
        """Available actions of every entry; (num_envs, num_actions) bool."""
        return self._avail

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(f"SmaxVecEnv entries share one environment; cannot set {attr_name}")

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        if method_name != "action_masks":
            raise AttributeError(f"SmaxVecEnv has no per-entry method {method_name!r}")
        return list(self._avail[list(self._get_indices(indices))])

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))


# --------------------------------------------------------------------------- policies


def ppo_policy(policy: Any, rng: np.random.Generator) -> MultiAgentPolicy:
    """Batched sampling policy of a MaskablePPO policy network, shared by all agents.

    Actions are sampled from the masked categorical with noise from ``rng`` (Gumbel-max), so
    runs are reproducible whatever torch's global RNG did; masked actions are never drawn.
    """

    def act(obs: np.ndarray, avail: np.ndarray, t: int) -> np.ndarray:
        b, a, o = obs.shape
        with torch.no_grad():
            dist = policy.get_distribution(
                torch.as_tensor(obs.reshape(b * a, o)), action_masks=avail.reshape(b * a, -1)
            )
            logits = dist.distribution.logits.double().numpy()  # (B*A, N), masked ~ -1e8
        gumbel = rng.gumbel(size=logits.shape)
        choice = np.where(avail.reshape(b * a, -1), logits + gumbel, -np.inf).argmax(axis=1)
        return choice.reshape(b, a).astype(np.int64)

    return act


def _evaluate(
    map_name: str, policy: torch.nn.Module, episodes: int, seed: int
) -> tuple[float, float]:
    """(win rate, mean return) of ``policy`` over ``episodes`` episodes."""
    batch = run_episodes(map_name, episodes, ppo_policy(policy, np.random.default_rng(seed)), seed)
    return float(batch.episode_won.mean()), float(batch.returns.mean())


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- training


def _fingerprint(map_name: str, budgets: PpoConfig, seed: int) -> str:
    # MAPPO's later fields are always at their defaults here: left out, as before they existed.
    left_out = {*PPO_AFTER_TRAINING, *MAPPO_FIELDS_ADDED_LATER}
    trained = budgets.model_dump(mode="json", exclude=left_out)
    return json.dumps({"map": map_name, "budgets": trained, "seed": seed}, sort_keys=True)


def behaviour_fingerprint(map_name: str, cfg: PpoConfig, seed: int) -> str:
    """What makes a behaviour run a different one (map, training settings, seed): the
    checkpoint fingerprint of ``cfg.learner``."""
    if cfg.learner == "mappo":
        from cmt.behaviour.mappo import run_fingerprint  # lazy: flax and optax

        return run_fingerprint(map_name, cfg, seed)
    return _fingerprint(map_name, cfg, seed)


def _same_training(stored: Any, fingerprint: str) -> bool:
    """Whether a checkpoint's fingerprint describes the same training (fingerprints written
    before the fields of ``PPO_AFTER_TRAINING`` were left out still match)."""
    if not isinstance(stored, str):
        return False
    old = json.loads(stored)
    for key in PPO_AFTER_TRAINING:
        old.get("budgets", {}).pop(key, None)
    return json.dumps(old, sort_keys=True) == fingerprint


def _load_state(path: Path | None) -> dict[str, Any] | None:
    """The resumable PPO state at ``path``, or None (none, or corrupt: start over)."""
    if path is None or not path.exists():
        return None
    try:
        return load_sealed(path)
    except CheckpointError as err:
        # Only a cache of work done: a corrupt one costs a restart, not a blocked stage.
        log.warning("%s; starting over", err)
        return None


def train_ppo(
    map_name: str,
    budgets: PpoConfig,
    seed: int,
    behaviour_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> tuple[Any, list[dict[str, Any]], dict[str, float]]:
    """Train (or resume) the shared MaskablePPO policy on ``map_name``.

    Returns the model, the snapshots (``step``, ``win_rate``, ``mean_return``, CPU ``policy``
    state dict; the first is the untrained policy, the last the final one) and timings.
    ``behaviour_dir/state.pt`` is the checkpoint (sealed with its content hash,
    ``cmt.checkpoint``).
    """
    rngs = random_streams(seed, _STREAMS)
    ppo_seed, eval_seed, env_seed = (seed_from(rngs[k]) for k in ("ppo", "eval", "env"))
    venv = SmaxVecEnv(map_name, budgets.n_envs, env_seed)
    model = _ppo_model(venv, budgets, ppo_seed)
    fingerprint = _fingerprint(map_name, budgets, seed)
    state_path = None if behaviour_dir is None else Path(behaviour_dir) / "state.pt"
    snapshots = _resume(model, state_path, fingerprint)
    start_step = int(model.num_timesteps) if snapshots else 0
    snaps = _PpoSnapshots(map_name, budgets, model, snapshots, eval_seed, fingerprint)
    snaps.save_to(state_path, on_metrics)
    threads = torch.get_num_threads()
    if budgets.torch_threads:
        torch.set_num_threads(budgets.torch_threads)
    t0 = time.perf_counter()
    try:
        if start_step < budgets.total_steps:
            model.learn(
                total_timesteps=budgets.total_steps - start_step,
                callback=snaps.callback(start_step, progress),
                reset_num_timesteps=start_step == 0,
            )
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - t0
    stats = {
        "resumed_from": float(start_step),
        "seconds": elapsed,
        "steps_per_s": (model.num_timesteps - start_step) / elapsed if elapsed > 0 else 0.0,
    }
    return model, snapshots, stats


def _ppo_model(venv: VecEnv, budgets: PpoConfig, seed: int) -> Any:
    """sb3-contrib's MaskablePPO with the budgets' settings, on ``venv``."""
    from sb3_contrib import MaskablePPO

    return MaskablePPO(
        "MlpPolicy",
        venv,
        learning_rate=budgets.learning_rate,
        n_steps=budgets.n_steps,
        batch_size=budgets.batch_size,
        n_epochs=budgets.n_epochs,
        gamma=budgets.gamma,
        gae_lambda=budgets.gae_lambda,
        clip_range=budgets.clip_range,
        ent_coef=budgets.ent_coef,
        policy_kwargs={"net_arch": list(budgets.net_arch)},
        seed=seed,
        device=budgets.device,
        verbose=0,
    )


def _resume(model: Any, state_path: Path | None, fingerprint: str) -> list[dict[str, Any]]:
    """Restore ``model`` from the checkpoint of the same training, if any; its snapshots
    (empty when starting over)."""
    state = _load_state(state_path)
    if state is None:
        return []
    steps = int(state.get("num_timesteps", -1))
    if state.get("format") != CHECKPOINT_FORMAT or not _same_training(
        state.get("fingerprint"), fingerprint
    ):
        log.warning("%s: checkpoint of other settings, starting over", state_path)
        return []
    model.set_parameters(state["params"], exact_match=True, device=model.device)
    model.num_timesteps = steps
    log.info("%s: resuming PPO from step %d", state_path, steps)
    return [
        {
            "step": int(s["step"]),
            "win_rate": float(s["win_rate"]),
            "mean_return": float(s["mean_return"]),
            "policy": s["policy"],
        }
        for s in state["snapshots"]
    ]


class _PpoSnapshots:
    """PPO's snapshots: the policy evaluated for win rate every ``snapshot_every`` agent
    steps (and untrained, and final), kept and checkpointed."""

    def __init__(
        self,
        map_name: str,
        budgets: PpoConfig,
        model: Any,
        snapshots: list[dict[str, Any]],
        eval_seed: int,
        fingerprint: str,
    ) -> None:
        self.map_name, self.budgets, self.model, self.snapshots = (
            map_name,
            budgets,
            model,
            snapshots,
        )
        self.eval_seed, self.fingerprint = eval_seed, fingerprint
        self.state_path: Path | None = None
        self.on_metrics: MetricsCallback | None = None

    def save_to(self, state_path: Path | None, on_metrics: MetricsCallback | None) -> None:
        """Checkpoint every snapshot to ``state_path`` and report it to ``on_metrics``."""
        self.state_path, self.on_metrics = state_path, on_metrics

    def take(self) -> None:
        model, snapshots = self.model, self.snapshots
        step = int(model.num_timesteps)
        if snapshots and snapshots[-1]["step"] == step:
            return
        win, ret = _evaluate(
            self.map_name, model.policy, self.budgets.eval_episodes, self.eval_seed
        )
        snapshots.append(
            {"step": step, "win_rate": win, "mean_return": ret, "policy": _cpu_state(model.policy)}
        )
        if self.on_metrics is not None:
            self.on_metrics(step, {"ppo/win_rate": win, "ppo/mean_return": ret})
        if self.state_path is not None:
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": self.fingerprint,
                    "num_timesteps": step,
                    "params": model.get_parameters(),
                    "snapshots": snapshots,
                },
                self.state_path,
            )

    def callback(self, start_step: int, progress: bool) -> Any:
        """An SB3 callback: a snapshot at the start, between updates, and at the end."""
        from stable_baselines3.common.callbacks import BaseCallback

        owner, budgets = self, self.budgets

        class Snapshots(BaseCallback):
            def _on_training_start(self) -> None:
                self.bar = tqdm(
                    total=budgets.total_steps,
                    initial=start_step,
                    desc=f"ppo {owner.map_name}",
                    disable=not progress,
                )
                self.next = (start_step // budgets.snapshot_every + 1) * budgets.snapshot_every
                owner.take()  # step 0: the untrained policy (a no-op when resuming)

            def _on_rollout_start(self) -> None:
                # Between PPO updates: the policy is the one the last rollout was trained into.
                steps = int(self.model.num_timesteps)
                self.bar.n = min(steps, budgets.total_steps)
                self.bar.refresh()
                if steps >= self.next and steps < budgets.total_steps:
                    owner.take()
                    self.next += budgets.snapshot_every
                    self.bar.set_postfix(win_rate=f"{owner.snapshots[-1]['win_rate']:.2f}")

            def _on_step(self) -> bool:
                return True

            def _on_training_end(self) -> None:
                owner.take()  # the final policy
                self.bar.close()

        return Snapshots()


# --------------------------------------------------------------------------- either learner


@dataclass
class Trained:
    """A trained behaviour learner's snapshots, timings, and how a snapshot becomes a tier
    policy (sampling with noise from a numpy generator) and a ``policies/<tier>.pt`` file."""

    snapshots: list[dict[str, Any]]
    stats: dict[str, float]
    make_policy: Callable[[dict[str, Any], np.random.Generator], MultiAgentPolicy]
    weights: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    meta: dict[str, Any]  # the network, as cmt.behaviour.mappo.numpy_policy reads it
    log: list[dict[str, float]]  # training metrics per snapshot (MAPPO's; empty for SB3's)

    def save_policies(
        self, out_dir: Path, chosen: dict[str, int], tiers: dict[str, dict[str, Any]]
    ) -> None:
        """``out_dir/<tier>.pt`` of every policy tier: actor weights and meta (no timings,
        so a rerun from a finished checkpoint writes identical files)."""
        from cmt.behaviour.mappo import save_tier_policy

        for tier, index in chosen.items():
            snap = self.snapshots[index]
            meta = {
                **self.meta,
                "tier": tier,
                "step": int(snap["step"]),
                "snapshot_win_rate": float(snap["win_rate"]),
                "snapshot_mean_return": float(snap["mean_return"]),
                "win_rate": float(tiers[tier]["win_rate"]),
                "mean_return": float(tiers[tier]["mean_return"]),
                "episodes": int(tiers[tier]["episodes"]),
                "rollout_seed": int(tiers[tier]["seed"]),
            }
            save_tier_policy(out_dir / f"{tier}.pt", self.weights(snap), meta)


def train_behaviour(
    map_name: str,
    cfg: PpoConfig,
    seed: int,
    behaviour_dir: Path | None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> Trained:
    """Train (or resume) the configured learner (``cfg.learner``) on ``map_name``."""
    from cmt.behaviour import mappo  # lazy: flax and optax only when asked for

    spec = smax_map(map_name)
    if cfg.learner == "mappo":
        run = mappo.train_mappo(map_name, cfg, seed, behaviour_dir, on_metrics, progress)
        return Trained(
            run.snapshots,
            run.stats,
            lambda snap, rng: mappo.numpy_policy(snap["policy"], run.meta, rng),
            lambda snap: snap["policy"],
            run.meta,
            run.log,
        )
    model, snapshots, stats = train_ppo(map_name, cfg, seed, behaviour_dir, on_metrics, progress)

    def make_policy(snap: dict[str, Any], rng: np.random.Generator) -> MultiAgentPolicy:
        net = copy.deepcopy(model.policy).cpu()
        net.load_state_dict(snap["policy"])
        net.eval()
        return ppo_policy(net, rng)

    meta = {
        "learner": "maskable_ppo",
        "map": map_name,
        "seed": seed,
        "net_arch": list(cfg.net_arch),
        "activation": "tanh",  # SB3's MlpPolicy
        "agent_id": False,
        "obs_dim": spec.obs_dim,
        "num_agents": spec.num_agents,
        "num_actions": spec.num_actions,
    }
    weights = lambda snap: mappo.sb3_policy_weights(snap["policy"])  # noqa: E731
    return Trained(snapshots, stats, make_policy, weights, meta, [])


# --------------------------------------------------------------------------- datasets


def episodes_to_transitions(batch: EpisodeBatch, tier: str) -> TransitionData:
    """The recorded episodes of a :func:`~cmt.envs.smax.run_episodes` batch, back to back."""
    t_max = batch.rewards.shape[0]
    keep = np.arange(t_max)[None, :] < batch.lengths[:, None]  # (B, T), episode-major

    def flat(x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, 0, 1)[keep]  # (T, B, ...) -> (N, ...)

    n = int(keep.sum())
    return TransitionData(
        observations=flat(batch.observations).astype(np.float32),
        actions=flat(batch.actions).astype(np.int64),
        rewards=flat(batch.rewards).astype(np.float32),
        terminals=flat(batch.terminated),
        timeouts=flat(batch.truncated),
        next_observations=flat(batch.next_observations).astype(np.float32),
        task_ids=np.zeros(n, dtype=np.int64),
        infos={"won": flat(batch.won), LEVEL: np.full(n, TIERS.index(tier), dtype=np.int8)},
        avail_actions=flat(batch.avail_actions),
    )


def record_tier(
    map_name: str, policy: MultiAgentPolicy, episodes: int, seed: int, tier: str
) -> tuple[TransitionData, np.ndarray, np.ndarray]:
    """``episodes`` episodes of ``policy``: (data, returns (E,), won (E,)).

    They run in equal chunks (one compiled batch size); the last chunk's surplus episodes
    are dropped."""
    chunk = min(episodes, _EPISODE_CHUNK)
    parts, returns, won = [], [], []
    for i, start in enumerate(range(0, episodes, chunk)):
        batch = run_episodes(map_name, chunk, policy, seed + i, record=True)
        keep = min(chunk, episodes - start)
        if keep < chunk:
            batch = _first_episodes(batch, keep)
        parts.append(episodes_to_transitions(batch, tier))
        returns.append(batch.returns)
        won.append(batch.episode_won)
    return concat_transitions(parts), np.concatenate(returns), np.concatenate(won)


def _first_episodes(batch: EpisodeBatch, n: int) -> EpisodeBatch:
    """The first ``n`` episodes of a recorded batch (step arrays are time-major)."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    per_episode = ("returns", "episode_won", "lengths")
    return EpisodeBatch(**{k: v[:n] if k in per_episode else v[:, :n] for k, v in fields.items()})


def _tier_data(
    map_name: str,
    tier: str,
    behaviour: Trained,
    snapshot: dict[str, Any] | None,
    episodes: int,
    seed: int,
) -> tuple[TransitionData, dict[str, Any]]:
    """The episodes of one tier (a PPO ``snapshot``, or SMAX's heuristic) and their summary."""
    rng = np.random.default_rng(seed)
    if tier == "heuristic":
        policy = heuristic_policy(map_name, seed_from(rng))
    else:
        assert snapshot is not None
        policy = behaviour.make_policy(snapshot, rng)
    data, returns, won = record_tier(map_name, policy, episodes, seed_from(rng), tier)
    summary = {
        "level": TIERS.index(tier),
        "seed": seed,  # rebuild: rng = default_rng(seed), the policy, record_tier(seed_from(rng))
        "snapshot_step": int(snapshot["step"]) if snapshot is not None else None,
        "episodes": int(returns.size),
        "transitions": len(data),
        "mean_return": float(returns.mean()),
        "win_rate": float(won.mean()),
    }
    return data, summary


def _smax_metadata(map_name: str, seed: int, ppo_steps: int, learner: str) -> dict[str, Any]:
    """What a SMAX dataset file records about the map and its making."""
    spec = smax_map(map_name)
    return {
        "benchmark": "smax",
        "map": map_name,
        "num_agents": spec.num_agents,
        "num_actions": spec.num_actions,
        "horizon": spec.horizon,
        "num_tasks": 1,
        "seed": seed,
        "levels": list(TIERS),
        "behaviour": learner,
        "ppo_steps": ppo_steps,
    }


def build_smax_datasets(
    map_name: str,
    out_dir: Path,
    behaviour_dir: Path | None,
    ppo_cfg: PpoConfig,
    episodes_per_tier: int,
    seed: int,
    progress: bool = True,
    on_metrics: MetricsCallback | None = None,
) -> dict[str, Any]:
    """Train the behaviour policy of ``map_name`` (``ppo_cfg.learner``, checkpointed under
    ``behaviour_dir``) and write its datasets (:func:`write_smax_datasets`)."""
    behaviour = train_behaviour(map_name, ppo_cfg, seed, behaviour_dir, on_metrics, progress)
    return write_smax_datasets(
        map_name, out_dir, behaviour, ppo_cfg, episodes_per_tier, seed, progress
    )


def recheck_seed(seed: int) -> int:
    """The episode seed of the tier candidates' rechecks (docs/smax.md) in a run of ``seed``."""
    return seed_from(random_streams(seed, _STREAMS)["recheck"])


def write_smax_datasets(
    map_name: str,
    out_dir: Path,
    behaviour: Trained,
    ppo_cfg: PpoConfig,
    episodes_per_tier: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Choose the tiers among ``behaviour``'s snapshots (trained here, or committed:
    ``cmt.behaviour.committed.load_committed_smax``) and write ``out_dir/train.hdf5`` (every
    tier, ``episodes_per_tier`` episodes each), ``out_dir/tiers.json`` (the snapshot curve,
    the chosen snapshots and each tier's win rate and mean return) and
    ``out_dir/policies/<tier>.pt`` (the policy tiers' actors); no timings, so a rerun writes
    identical files. Returns that content plus the learner's timings."""
    from cmt.data.hdf5 import write_hdf5  # lazy: keeps env imports free of h5py

    out_dir = Path(out_dir)
    rngs = random_streams(seed, _STREAMS)
    tier_seeds = {t: seed_from(rngs[f"tier/{t}"]) for t in TIERS}
    snapshots = behaviour.snapshots
    recheck = rechecker(
        map_name, snapshots, behaviour.make_policy, ppo_cfg.recheck_episodes, recheck_seed(seed)
    )
    chosen, rule = choose_tiers(snapshots, ppo_cfg, recheck)

    tiers = [t for t in TIERS if t != "heuristic" or ppo_cfg.heuristic_tier]
    parts, tier_summary = [], {}
    for tier in tqdm(tiers, desc=f"tiers {map_name}", disable=not progress):
        snapshot = snapshots[chosen[tier]] if tier in chosen else None
        data, tier_summary[tier] = _tier_data(
            map_name, tier, behaviour, snapshot, episodes_per_tier, tier_seeds[tier]
        )
        parts.append(data)
    meta = _smax_metadata(map_name, seed, int(snapshots[-1]["step"]), ppo_cfg.learner)
    train = concat_transitions(parts, meta)
    write_hdf5(out_dir / "train.hdf5", train)
    behaviour.save_policies(out_dir / "policies", chosen, tier_summary)
    record = {
        "map": map_name,
        "seed": seed,
        "budgets": ppo_cfg.model_dump(mode="json"),
        "episodes_per_tier": episodes_per_tier,
        "snapshots": [
            {
                "step": int(s["step"]),
                "win_rate": s["win_rate"],
                "mean_return": s["mean_return"],
                **({"recheck": s["recheck"]} if "recheck" in s else {}),
            }
            for s in snapshots
        ],
        "medium_rule": rule,
        "tiers": tier_summary,
        "transitions": len(train),
    }
    write_json(out_dir / "tiers.json", record)
    return {**record, "ppo": behaviour.stats, "ppo_log": behaviour.log}

"""Parameter-shared MAPPO for SMAX, end to end in JAX (PureJaxRL / JaxMARL-baselines style).

* **Actor**: one MLP shared by all allies, over the ally's own SMAX observation plus a one-hot
  of its index (:func:`actor_input`); logits of unavailable actions are masked out, so an
  illegal action is never drawn. With ``actor_rnn`` > 0 a GRU follows its first hidden layer,
  its state carried through each episode; the update then replays whole episode slots.
* **Centralised critic**: one team value per episode from SMAX's world state (every unit's
  health, position, cooldown and type, seen by an ally or not), as MAPPO (Yu et al. 2022);
  the team reward is shared, so one value per team is all the agents need. With
  ``critic_state='agent'`` it is MAPPO's agent-specific state instead: the world state plus
  the ally's own observation and one-hot, one value per ally (and per-ally GAE).
* **Updates**: GAE over the team reward (SMAX's, for training alone optionally with its win
  bonus reweighted, ``train_win_bonus``, and the allies' health lost subtracted,
  ``train_ally_loss``; bootstrapped through the time limit, cut at a
  wipe-out), clipped PPO for the actor, a clipped value loss on normalised targets (MAPPO's
  ValueNorm), Adam with global-norm clipping and an optionally annealed learning rate.
* **Speed**: rollouts of ``n_envs`` vmapped SMAX episodes run in one ``jax.lax.scan`` (with
  auto-reset), one jitted call; GAE and every epoch and minibatch of the update another.

The environment is :func:`cmt.envs.smax.make_smax`'s (the one the datasets are recorded
from): the actor sees exactly the observation a dataset stores, plus its agent one-hot, which
the tier policies (:func:`numpy_policy`) add again at rollout.

Training is checkpointed (``mappo_state.pt``, a sealed torch file of numpy-converted jax
arrays: parameters, optimiser, value statistics, the episodes in flight, the PRNG key,
counters and the snapshots so far) at every snapshot and continues from it when the settings
match; jax on the CPU is deterministic, so a resumed run ends with the same parameters as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import struct
from tqdm.auto import tqdm

from cmt.behaviour.rollout import random_streams, seed_from
from cmt.behaviour.unit_actor import (
    NUM_MOVES,
    UNIT_LAYERS,
    UnitActor,
    array_module,
    embed_units,
    unit_logits,
)
from cmt.checkpoint import CheckpointError, atomic_torch_save, load_sealed
from cmt.envs.smax import MultiAgentPolicy, make_smax, smax_map
from cmt.sections import MAPPO_FIELDS_ADDED_LATER, PPO_AFTER_TRAINING, PpoConfig

log = logging.getLogger(__name__)

__all__ = [
    "Actor",
    "Critic",
    "MappoLearner",
    "MappoRun",
    "SmaxTrainEnv",
    "actor_input",
    "gru_update",
    "learner_for",
    "load_tier_policies",
    "load_tier_policy",
    "numpy_policy",
    "policy_meta",
    "policy_weights",
    "read_tier_policy",
    "run_fingerprint",
    "run_updates",
    "save_tier_policy",
    "sb3_policy_weights",
    "train_mappo",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "mappo_state.pt"
POLICY_FORMAT = 1
_STREAMS = ("init", "eval")  # spawned from the seed in this order; append new ones
_NOT_TRAINING = (*PPO_AFTER_TRAINING, "device", "torch_threads")
"""Fields that do not change MAPPO's training: tier choice after training, the settings of
the torch learner, and whether collect trains at all; changing them reuses a checkpoint."""
_MASKED = -1e9  # logit of an unavailable action: never drawn, exp() underflows to 0
_VALUE_NORM_BETA = 0.99999  # MAPPO's ValueNorm: a debiased, nearly cumulative average

MetricsCallback = Callable[[int, dict[str, float]], None]
"""Called at every snapshot with the agent step and ``ppo/win_rate``, ``ppo/mean_return``."""


# --------------------------------------------------------------------------- networks


def _dense(width: int, scale: float, name: str) -> nn.Dense:
    # Orthogonal init as in PPO implementations (CleanRL, PureJaxRL): sqrt(2) for hidden
    # ReLU layers, small for the policy head so the first policy is near uniform.
    return nn.Dense(width, kernel_init=nn.initializers.orthogonal(scale), name=name)


class Actor(nn.Module):
    """Shared policy: (hidden (..., H), actor input (..., O + A)) -> (hidden', logits (..., N))
    (unmasked). With ``rnn`` > 0 a GRU of that width follows the first hidden layer (as
    JaxMARL's recurrent SMAX actors); with ``rnn`` = 0 it is an MLP and the hidden state is an
    empty array, passed through."""

    hidden: tuple[int, ...]
    num_actions: int
    rnn: int = 0

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, width in enumerate(self.hidden):
            x = nn.relu(_dense(width, math.sqrt(2.0), f"hidden_{i}")(x))
            if i == 0 and self.rnn:
                gx = _dense(3 * self.rnn, 1.0, "gru_x")(x)
                gh = _dense(3 * self.rnn, 1.0, "gru_h")(h)
                h = x = gru_update(gx, gh, h)
        return h, _dense(self.num_actions, 0.01, "logits")(x)


def gru_update(gx: Any, gh: Any, h: Any) -> Any:
    """A GRU cell's new state from its input and hidden projections (reset, update, new
    gates, in that order; PyTorch's equations). Numpy or jax, so the tier policies use it."""
    xp = array_module(h)
    xr, xz, xn = xp.split(gx, 3, axis=-1)
    hr, hz, hn = xp.split(gh, 3, axis=-1)
    r = 1.0 / (1.0 + xp.exp(-(xr + hr)))
    z = 1.0 / (1.0 + xp.exp(-(xz + hz)))
    n = xp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


class Critic(nn.Module):
    """Centralised value MLP: critic state (..., S) -> value (...) (normalised units)."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(_dense(width, math.sqrt(2.0), f"hidden_{i}")(x))
        return _dense(1, 1.0, "value")(x)[..., 0]


class UnitCritic(nn.Module):
    """Centralised value of SMAX's world state read unit by unit (``critic_units``): its
    blocks of unit features (allies, then enemies) embedded by one layer per side, pooled
    (mean and max per side), then the MLP layers of ``hidden``; the unit-wise actor's idea
    (cmt/behaviour/unit_actor.py) applied to the value."""

    hidden: tuple[int, ...]
    num_allies: int
    num_enemies: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = self.num_allies + self.num_enemies
        features = (x.shape[-1] - 2 * n) // n  # the world state ends with teams and types
        width = self.hidden[0]

        def side(name: str, first: int, count: int) -> list[jax.Array]:
            dense = lambda n, w, scale, v: _dense(w, scale, n)(v)  # noqa: E731
            e = embed_units(dense, name, x, first, count, features, width)
            return [e.mean(axis=-2), e.max(axis=-2)]

        h = jnp.concatenate(
            [*side("ally", 0, self.num_allies), *side("enemy", self.num_allies, self.num_enemies)],
            axis=-1,
        )
        return cast(jax.Array, Critic(self.hidden, name="head")(h))


def actor_input(obs: jax.Array | np.ndarray) -> Any:
    """Each ally's observation with its agent one-hot appended: (..., A, O) -> (..., A, O + A).

    Works on numpy and jax arrays alike (the tier policies run in numpy)."""
    xp = array_module(obs)
    a = obs.shape[-2]
    one_hot = xp.broadcast_to(xp.eye(a, dtype=obs.dtype), (*obs.shape[:-2], a, a))
    return xp.concatenate([obs, one_hot], axis=-1)


def _masked(logits: jax.Array, avail: jax.Array) -> jax.Array:
    return jnp.where(avail, logits, _MASKED)


# --------------------------------------------------------------------------- environment


class SmaxTrainEnv:
    """Pure functions over one SMAX episode of ``cmt.envs.smax.make_smax(map_name)``, for
    ``vmap`` and ``scan``: the same observations, masks, reward and end rules as
    :class:`cmt.envs.smax.SmaxBatchedEnv`, plus the world state and an auto-reset."""

    def __init__(self, map_name: str) -> None:
        self.spec = smax_map(map_name)
        self.env = make_smax(map_name)
        self.agents = list(self.env.agents)
        self.n_allies = int(self.env.num_allies)
        _, state = self.env.reset(jax.random.PRNGKey(0))
        self.world_dim = int(self.env.get_world_state(state).shape[0])

    def observe(self, state: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """obs (A, O) float32, avail (A, N) bool, world state (S,) float32."""
        obs = self.env.get_obs(state)
        avail = self.env.get_avail_actions(state)
        return (
            jnp.stack([obs[a] for a in self.agents]).astype(jnp.float32),
            jnp.stack([avail[a] for a in self.agents]).astype(bool),
            self.env.get_world_state(state).astype(jnp.float32),
        )

    def starts(self, state: Any) -> jax.Array:
        """Whether the episode is at its first step (fresh, or reset after an end)."""
        return cast(jax.Array, state.state.step == 0)

    def reset(self, key: jax.Array) -> Any:
        _, state = self.env.reset(key)
        # Strong dtypes, as step returns them: the scan carry must keep one type.
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), state)

    def outcome(self, state: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(terminated, truncated, won): SMAX's rules as in ``cmt.envs.smax``."""
        alive = state.state.unit_alive
        allies, enemies = alive[: self.n_allies].any(), alive[self.n_allies :].any()
        done = state.state.done
        truncated = done & allies & enemies
        return done & ~truncated, truncated, done & allies & ~enemies

    def step(self, key: jax.Array, state: Any, actions: jax.Array) -> tuple[Any, ...]:
        """One step, then a fresh episode where this one ended: (state, reward, terminated,
        truncated, won, world state and observations (A, O) of the step's end, before any
        reset, the allies' health lost in the step)."""
        k_step, k_reset = jax.random.split(key)
        _, nxt, rewards, _, _ = self.env.step_env(
            k_step, state, {a: actions[i] for i, a in enumerate(self.agents)}
        )
        ally_loss = self.ally_health_lost(state, nxt)
        term, trunc, won = self.outcome(nxt)
        end_world = self.env.get_world_state(nxt).astype(jnp.float32)
        end_obs = self.observe(nxt)[0]  # jit drops it where unused (the world-state critic)
        fresh = self.reset(k_reset)
        done = term | trunc
        state = jax.tree.map(lambda f, n: jnp.where(done, f, n).astype(n.dtype), fresh, nxt)
        reward = rewards[self.agents[0]].astype(jnp.float32)  # the team reward
        return state, reward, term, trunc, won, end_world, end_obs, ally_loss

    def ally_health_lost(self, before: Any, after: Any) -> jax.Array:
        """The allies' health lost from ``before`` to ``after``, each as a fraction of its
        unit type's health, over the number of allies: SMAX's measure of the enemies' loss
        in its reward, for the allies' side."""
        full = self.env.unit_type_health[after.state.unit_types][: self.n_allies]
        lost = before.state.unit_health[: self.n_allies] - after.state.unit_health[: self.n_allies]
        return (jnp.sum(lost / full) / self.n_allies).astype(jnp.float32)


# --------------------------------------------------------------------------- learner state


class ValueNorm(NamedTuple):
    """MAPPO's running statistics of the value targets (debiased EMAs)."""

    mean: jax.Array
    mean_sq: jax.Array
    debias: jax.Array

    @staticmethod
    def create() -> ValueNorm:
        return ValueNorm(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))

    def stats(self) -> tuple[jax.Array, jax.Array]:
        d = jnp.maximum(self.debias, 1e-5)
        mean = self.mean / d
        var = jnp.maximum(self.mean_sq / d - mean**2, 1e-2)  # MAPPO's floor
        return mean, jnp.sqrt(var)

    def update(self, x: jax.Array) -> ValueNorm:
        b = _VALUE_NORM_BETA
        return ValueNorm(
            b * self.mean + (1 - b) * x.mean(),
            b * self.mean_sq + (1 - b) * (x**2).mean(),
            b * self.debias + (1 - b),
        )


@struct.dataclass
class TrainState:
    """Everything a MAPPO run needs to continue bit for bit."""

    params: dict[str, Any]  # {"actor": ..., "critic": ...}
    opt_state: dict[str, Any]  # one optimiser state per network
    vnorm: ValueNorm
    env_state: Any  # (B, ...) SMAX states of the episodes in flight
    ep_return: jax.Array  # (B,) return so far of each episode in flight
    hidden: jax.Array  # (B, A, H) the actor's state in each episode in flight (H = 0: an MLP)
    key: jax.Array
    update: jax.Array  # updates done


class _Traj(NamedTuple):
    """One rollout, time-major (T, B, ...)."""

    obs: jax.Array  # (T, B, A, O)
    avail: jax.Array  # (T, B, A, N)
    critic_in: jax.Array  # (T, B, S) world states, or (T, B, A, S') agent-specific states
    actions: jax.Array  # (T, B, A)
    logp: jax.Array  # (T, B, A)
    value: jax.Array  # (T, B), or (T, B, A) with agent-specific states; normalised
    reward: jax.Array  # (T, B) the reward trained on (SMAX's, reshaped by the train_ fields)
    terminated: jax.Array  # (T, B)
    truncated: jax.Array  # (T, B)
    won: jax.Array  # (T, B)
    end_critic: jax.Array  # the critic's input at the step's end (before any reset)
    ep_return: jax.Array  # (T, B) return of the episode that ended at this step, else 0
    start: jax.Array  # (T, B) the step starts an episode (the actor's state was reset)
    hidden: jax.Array  # (T, B, A, H) the actor's state carried into the step (reset if start)


class _Batch(NamedTuple):
    """Training samples, time-major (T, B, ...): a feed-forward actor's minibatches are drawn
    from all T * B team steps, a recurrent actor's from whole episode slots (B), replayed
    through time from the state each slot's rollout began with."""

    obs: jax.Array
    avail: jax.Array
    critic_in: jax.Array
    actions: jax.Array
    logp: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array  # normalised value target
    start: jax.Array
    hidden: jax.Array
    weight: jax.Array | None = None  # (..., A) importance weights of a lagged rollout


# --------------------------------------------------------------------------- learner


class MappoLearner:
    """The networks, optimisers and jitted update and evaluation of one map and config."""

    def __init__(self, map_name: str, cfg: PpoConfig) -> None:
        self.map_name, self.cfg = map_name, cfg
        self.env = SmaxTrainEnv(map_name)
        spec = self.env.spec
        self.num_agents, self.num_actions = spec.num_agents, spec.num_actions
        self.actor: nn.Module = Actor(tuple(cfg.net_arch), spec.num_actions, cfg.actor_rnn)
        if cfg.actor_arch != "mlp":
            targets = cfg.actor_arch == "unit_targets"
            self.actor = UnitActor(tuple(cfg.net_arch), spec.num_agents, spec.num_enemies, targets)
        self.recurrent = cfg.actor_rnn > 0
        self.critic: nn.Module = Critic(tuple(cfg.critic_arch))
        if cfg.critic_units:
            self.critic = UnitCritic(tuple(cfg.critic_arch), spec.num_agents, spec.num_enemies)
        self.agent_critic = cfg.critic_state == "agent"
        self.critic_dim = self.env.world_dim
        if self.agent_critic:
            self.critic_dim += spec.obs_dim + spec.num_agents
        self.agent_steps_per_update = cfg.n_envs * cfg.n_steps * spec.num_agents
        self.num_updates = -(-cfg.total_steps // self.agent_steps_per_update)  # ceil
        team_steps = cfg.n_envs * cfg.n_steps
        # A recurrent actor learns from whole episode slots: its minibatches split the B slots.
        rows = cfg.n_envs if self.recurrent else team_steps
        self.num_minibatches = max(1, min(rows, self.agent_steps_per_update // cfg.batch_size))
        self.minibatch = rows // self.num_minibatches
        # One optimiser per network (as MAPPO); the critic's steps more often with
        # critic_extra_epochs, so each anneals over its own number of steps.
        epochs = {"actor": cfg.n_epochs, "critic": cfg.n_epochs + cfg.critic_extra_epochs}
        self.tx = {name: self._optimiser(n) for name, n in epochs.items()}
        # Rollout and learning are compiled apart: the rollout (SMAX inside) costs most of the
        # compile time, and the tests compile it alone.
        self.init = jax.jit(self._init)
        self.rollout = jax.jit(self._rollout)
        self.learn = jax.jit(self._learn)
        self.evaluate = jax.jit(self._evaluate, static_argnums=2)
        self.learn_lagged = jax.jit(self._learn_lagged)

    def _optimiser(self, epochs: int) -> optax.GradientTransformation:
        """Adam with global-norm clipping, its learning rate annealed to 0 over the
        network's steps when ``anneal_lr`` (``epochs`` of minibatches per update)."""
        cfg = self.cfg
        lr: Any = cfg.learning_rate
        if cfg.anneal_lr:
            total = self.num_updates * epochs * self.num_minibatches
            lr = optax.linear_schedule(cfg.learning_rate, 0.0, total)
        return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))

    def update(self, ts: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """One rollout and ``n_epochs`` of minibatch updates on it; training metrics."""
        ts, traj = self.rollout(ts)
        return self.learn(ts, traj)

    # ------------------------------------------------------------------ state
    def _init(self, key: jax.Array) -> TrainState:
        """Fresh networks and ``n_envs`` fresh episodes."""
        k_actor, k_critic, k_env, key = jax.random.split(key, 4)
        spec = self.env.spec
        params = {
            "actor": self.actor.init(
                k_actor,
                jnp.zeros((1, self.cfg.actor_rnn), jnp.float32),
                jnp.zeros((1, spec.obs_dim + spec.num_agents), jnp.float32),
            ),
            "critic": self.critic.init(k_critic, jnp.zeros((1, self.critic_dim), jnp.float32)),
        }
        env_state = jax.vmap(self.env.reset)(jax.random.split(k_env, self.cfg.n_envs))
        return TrainState(
            params=params,
            opt_state={k: self.tx[k].init(v) for k, v in params.items()},
            vnorm=ValueNorm.create(),
            env_state=env_state,
            ep_return=jnp.zeros(self.cfg.n_envs, jnp.float32),
            hidden=jnp.zeros((self.cfg.n_envs, spec.num_agents, self.cfg.actor_rnn), jnp.float32),
            key=key,
            update=jnp.zeros((), jnp.int32),
        )

    def policy_step(
        self,
        actor_params: Any,
        hidden: jax.Array,
        obs: jax.Array,
        avail: jax.Array,
        start: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """One step of the shared actor: (its new state (..., A, H), masked logits
        (..., A, N)) from its state, which restarts from zeros where ``start`` (...)."""
        hidden = jnp.where(start[..., None, None], 0.0, hidden)
        out = self.actor.apply(actor_params, hidden, actor_input(obs))
        hidden, logits = cast(tuple[jax.Array, jax.Array], out)
        return hidden, _masked(logits, avail)

    def sequence_logits(
        self,
        actor_params: Any,
        hidden: jax.Array,
        obs: jax.Array,
        avail: jax.Array,
        start: jax.Array,
    ) -> jax.Array:
        """Masked logits (T, ..., A, N) of steps (T, ...) acted in order from ``hidden``
        (..., A, H), the state before the first step."""

        def step(h: jax.Array, x: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            return self.policy_step(actor_params, h, *x)

        return jax.lax.scan(step, hidden, (obs, avail, start))[1]

    def critic_input(self, world: jax.Array, obs: jax.Array) -> jax.Array:
        """The critic's input from world states (..., S) and observations (..., A, O): the
        world states, or per ally (..., A, S + O + A) the world state, its observation and
        its one-hot (MAPPO's agent-specific state)."""
        if not self.agent_critic:
            return world
        shared = jnp.broadcast_to(world[..., None, :], (*obs.shape[:-1], world.shape[-1]))
        return jnp.concatenate([shared, actor_input(obs)], axis=-1)

    def team(self, x: jax.Array) -> jax.Array:
        """A per-team-step quantity (..., ) shaped as the critic's values: per ally or not."""
        return x[..., None] if self.agent_critic else x

    def value(self, critic_params: Any, critic_in: jax.Array) -> jax.Array:
        """The critic's value of its inputs (``critic_input``), in normalised units."""
        return cast(jax.Array, self.critic.apply(critic_params, critic_in))

    def _values(self, ts: TrainState, critic_in: jax.Array) -> jax.Array:
        mean, std = ts.vnorm.stats()
        v = self.value(ts.params["critic"], critic_in)
        return v * std + mean if self.cfg.value_norm else v

    # ------------------------------------------------------------------ rollout
    def _rollout(self, ts: TrainState) -> tuple[TrainState, _Traj]:
        """``n_steps`` steps of every episode, with auto-reset."""
        b = self.cfg.n_envs
        step_env = jax.vmap(self.env.step)

        def step(carry: tuple[Any, ...], _: None) -> tuple[tuple[Any, ...], _Traj]:
            env_state, ep_return, hidden, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            obs, avail, world = jax.vmap(self.env.observe)(env_state)
            start = jax.vmap(self.env.starts)(env_state)
            new_hidden, logits = self.policy_step(ts.params["actor"], hidden, obs, avail, start)
            actions = jax.random.categorical(k_act, logits)  # (B, A)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)
            critic_in = self.critic_input(world, obs)
            value = self.value(ts.params["critic"], critic_in)  # (B,) or (B, A), normalised
            env_state, reward, term, trunc, won, end_world, end_obs, ally_loss = step_env(
                jax.random.split(k_env, b), env_state, actions
            )
            ep_return = ep_return + reward  # SMAX's reward, as the logs and tiers report it
            done = term | trunc
            train_reward = reward + (self.cfg.train_win_bonus - 1.0) * won
            if self.cfg.train_ally_loss:  # else unused, so jit drops its computation
                train_reward = train_reward - self.cfg.train_ally_loss * ally_loss
            out = _Traj(
                obs, avail, critic_in, actions, logp[..., 0], value, train_reward, term, trunc, won,
                self.critic_input(end_world, end_obs), jnp.where(done, ep_return, 0.0), start,
                hidden,
            )  # fmt: skip
            return (env_state, jnp.where(done, 0.0, ep_return), new_hidden, key), out

        carry = (ts.env_state, ts.ep_return, ts.hidden, ts.key)
        (env_state, ep_return, hidden, key), traj = jax.lax.scan(
            step, carry, None, self.cfg.n_steps
        )
        return replace(ts, env_state=env_state, ep_return=ep_return, hidden=hidden, key=key), traj

    def _advantages(self, ts: TrainState, traj: _Traj) -> tuple[jax.Array, jax.Array]:
        """GAE and value targets (T, B), or (T, B, A) per ally, in return units."""
        cfg = self.cfg
        mean, std = ts.vnorm.stats()
        value = traj.value * std + mean if cfg.value_norm else traj.value
        # The value after each step: of the next state, or of the step's end when the episode
        # ended there (its next state is a fresh episode's).
        next_value = self._values(ts, traj.end_critic)
        reward, terminated = self.team(traj.reward), self.team(traj.terminated)
        done = self.team(traj.terminated | traj.truncated)
        # A wipe-out has no future; the time limit does (SMAX's observation has no clock).
        delta = reward + cfg.gamma * next_value * (1.0 - terminated) - value

        def back(adv: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            d, end = x
            adv = d + cfg.gamma * cfg.gae_lambda * (1.0 - end) * adv
            return adv, adv

        _, adv = jax.lax.scan(back, jnp.zeros_like(delta[0]), (delta, done), reverse=True)
        return adv, adv + value

    # ------------------------------------------------------------------ update
    def _loss(self, params: Any, mb: _Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.cfg
        if self.recurrent:  # mb: (T, M) steps of M episode slots
            logits = self.sequence_logits(params["actor"], mb.hidden[0], mb.obs, mb.avail, mb.start)
        else:  # mb: (M,) team steps
            logits = self.policy_step(params["actor"], mb.hidden, mb.obs, mb.avail, mb.start)[1]
        logp_all = jax.nn.log_softmax(logits)  # (..., A, N)
        logp = jnp.take_along_axis(logp_all, mb.actions[..., None], -1)[..., 0]  # (..., A)
        # Dead allies have one action (stop) and no choice: MAPPO's active masks leave them out.
        active = (mb.avail.sum(-1) > 1).astype(jnp.float32)
        n_active = jnp.maximum(active.sum(), 1.0)
        adv = (mb.advantage - mb.advantage.mean()) / (mb.advantage.std() + 1e-8)
        ratio = jnp.exp(logp - mb.logp)
        clipped = jnp.clip(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        if not self.agent_critic:
            adv = adv[..., None]  # the team's advantage, for each ally
        pg = -jnp.minimum(ratio * adv, clipped * adv)
        if mb.weight is not None:
            pg = pg * mb.weight
        pg_loss = (pg * active).sum() / n_active
        probs = jnp.exp(logp_all)
        entropy = -jnp.where(mb.avail, probs * logp_all, 0.0).sum(-1)
        entropy = (entropy * active).sum() / n_active
        v_loss = self._value_loss(params, mb)
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
        approx_kl = ((ratio - 1) - (logp - mb.logp)) * active
        return loss, {
            "policy_loss": pg_loss,
            "value_loss": v_loss,
            "entropy": entropy,
            "approx_kl": approx_kl.sum() / n_active,
        }

    def _value_loss(self, params: Any, mb: _Batch) -> jax.Array:
        """The critic's clipped squared error on the normalised targets, halved."""
        cfg = self.cfg
        v = self.value(params["critic"], mb.critic_in)  # (...) or (..., A), normalised
        v_loss = (v - mb.target) ** 2
        if cfg.value_clip:
            v_clip = mb.value + jnp.clip(v - mb.value, -cfg.clip_range, cfg.clip_range)
            v_loss = jnp.maximum(v_loss, (v_clip - mb.target) ** 2)
        return 0.5 * v_loss.mean()

    def _critic_loss(self, params: Any, mb: _Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The loss of a critic-only epoch (``critic_extra_epochs``)."""
        v_loss = self._value_loss(params, mb)
        return self.cfg.vf_coef * v_loss, {"value_loss": v_loss}

    def _epoch(
        self,
        ts: TrainState,
        batch: _Batch,
        key: jax.Array,
        networks: tuple[str, ...] = ("actor", "critic"),
    ) -> tuple[TrainState, Any]:
        """One pass over ``batch`` in minibatches, stepping ``networks``: both on the PPO
        loss, or the critic alone on its value loss."""
        n, m = self.num_minibatches, self.minibatch
        if self.recurrent:  # whole slots, time-major: (T, m, ...) minibatches

            def pick(x: jax.Array, idx: jax.Array) -> jax.Array:
                return x[:, idx]

        else:  # single team steps: (m, ...) minibatches
            t, b = batch.obs.shape[:2]  # not -1: an MLP's hidden state is empty
            batch = jax.tree.map(lambda x: x.reshape(t * b, *x.shape[2:]), batch)

            def pick(x: jax.Array, idx: jax.Array) -> jax.Array:
                return x[idx]

        rows = batch.obs.shape[1 if self.recurrent else 0]
        perm = jax.random.permutation(key, rows)[: n * m].reshape(n, m)
        loss = self._loss if "actor" in networks else self._critic_loss
        grad_fn = jax.value_and_grad(loss, has_aux=True)

        def minibatch(ts: TrainState, idx: jax.Array) -> tuple[TrainState, Any]:
            mb = jax.tree.map(lambda x: pick(x, idx), batch)
            (_, info), grads = grad_fn(ts.params, mb)
            params, opt_state = dict(ts.params), dict(ts.opt_state)
            for name in networks:  # one optimiser each, as MAPPO
                upd, opt_state[name] = self.tx[name].update(
                    grads[name], ts.opt_state[name], ts.params[name]
                )
                params[name] = optax.apply_updates(ts.params[name], upd)
            return replace(ts, params=params, opt_state=opt_state), info

        return jax.lax.scan(minibatch, ts, perm)

    def _learn_lagged(self, ts: TrainState, traj: _Traj) -> tuple[TrainState, dict[str, jax.Array]]:
        """:meth:`learn` on a rollout collected by an older actor (``overlap_rollout``), as
        decoupled PPO does (Hilton et al. 2021, "Batch size-invariance for policy
        optimization"): the ratio is clipped around the current actor (the proximal policy),
        not the collecting one, and each ally's policy term is weighted by current over
        collecting probability, so the gradient is the current actor's; the values are the
        current critic's, so GAE does not mix two critics (measured: mixing them, or clipping
        around the collecting actor, stalled 5m_vs_6m's learning)."""
        logits = self.policy_step(
            ts.params["actor"], traj.hidden, traj.obs, traj.avail, traj.start
        )[1]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), traj.actions[..., None], -1)[..., 0]
        weight = jnp.exp(logp - traj.logp)
        value = self.value(ts.params["critic"], traj.critic_in)
        return self._learn(ts, traj._replace(logp=logp, value=value), weight)

    def _learn(
        self, ts: TrainState, traj: _Traj, weight: jax.Array | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        adv, target = self._advantages(ts, traj)
        if self.cfg.value_norm:
            ts = replace(ts, vnorm=ts.vnorm.update(target))
            mean, std = ts.vnorm.stats()
            target = (target - mean) / std

        batch = _Batch(
            traj.obs, traj.avail, traj.critic_in, traj.actions, traj.logp, traj.value, adv, target,
            traj.start, traj.hidden, weight,
        )  # fmt: skip
        key, k_epochs = jax.random.split(ts.key)
        ts = replace(ts, key=key)
        ts, info = jax.lax.scan(
            lambda s, k: self._epoch(s, batch, k), ts, jax.random.split(k_epochs, self.cfg.n_epochs)
        )
        if self.cfg.critic_extra_epochs:
            # The critic's own epochs after the joint ones (their value losses are not
            # reported: the metrics stay those of the PPO epochs).
            k_critic = jax.random.split(
                jax.random.fold_in(k_epochs, 1), self.cfg.critic_extra_epochs
            )
            ts, _ = jax.lax.scan(lambda s, k: self._epoch(s, batch, k, ("critic",)), ts, k_critic)
        ended = traj.terminated | traj.truncated
        metrics = {k: v.mean() for k, v in info.items()}
        metrics["episodes"] = ended.sum()
        metrics["wins"] = traj.won.sum()
        metrics["return_sum"] = traj.ep_return.sum()
        return replace(ts, update=ts.update + 1), metrics

    # ------------------------------------------------------------------ evaluation
    def _evaluate(
        self, actor_params: Any, key: jax.Array, episodes: int
    ) -> tuple[jax.Array, jax.Array]:
        """(won (E,), return (E,)) of ``episodes`` fresh episodes, actions sampled as the
        tier policies sample them."""
        k_reset, key = jax.random.split(key)
        state = jax.vmap(self.env.reset)(jax.random.split(k_reset, episodes))
        zeros = jnp.zeros(episodes)

        def step(carry: tuple[Any, ...], _: None) -> tuple[tuple[Any, ...], None]:
            state, hidden, alive, ret, won, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            obs, avail, _world = jax.vmap(self.env.observe)(state)
            start = jax.vmap(self.env.starts)(state)
            hidden, logits = self.policy_step(actor_params, hidden, obs, avail, start)
            actions = jax.random.categorical(k_act, logits)
            state, reward, term, trunc, w, *_end = jax.vmap(self.env.step)(
                jax.random.split(k_env, episodes), state, actions
            )
            ret = ret + jnp.where(alive, reward, 0.0)
            won = won | (alive & w)
            return (state, hidden, alive & ~(term | trunc), ret, won, key), None

        hidden = jnp.zeros((episodes, self.num_agents, self.cfg.actor_rnn), jnp.float32)
        carry = (state, hidden, zeros > -1, zeros, zeros > 0, key)
        (_, _, _, ret, won, _), _ = jax.lax.scan(step, carry, None, self.env.spec.horizon)
        return won, ret


_LEARNERS: dict[tuple[str, str], MappoLearner] = {}
_NOT_COMPILED = (*_NOT_TRAINING, "learner", "snapshot_every", "eval_episodes", "overlap_rollout")
"""Fields that the compiled functions do not depend on (eval_episodes is a static argument;
overlap_rollout only orders the calls)."""


def learner_for(map_name: str, cfg: PpoConfig) -> MappoLearner:
    """The learner of a map and config, cached: jit compiles once per process."""
    key = (map_name, cfg.model_dump_json(exclude=set(_NOT_COMPILED)))
    if key not in _LEARNERS:
        _LEARNERS[key] = MappoLearner(map_name, cfg)
    return _LEARNERS[key]


# --------------------------------------------------------------------------- checkpoints


def _to_torch(tree: Any) -> Any:
    """A nested dict of jax arrays as torch tensors (uint32 PRNG keys as int64)."""
    if isinstance(tree, Mapping):
        return {str(k): _to_torch(v) for k, v in tree.items()}
    a = np.array(tree)  # a writable copy, 0-d arrays kept 0-d
    return torch.from_numpy(a.astype(np.int64) if a.dtype == np.uint32 else a)


def _from_torch(template: Any, tree: Any) -> Any:
    """``tree`` of torch tensors back into jax arrays of ``template``'s dtypes and shapes."""

    def leaf(t: Any, x: Any) -> jax.Array:
        a = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x)
        if a.shape != np.shape(t):
            raise ValueError(f"shape {a.shape}, expected {np.shape(t)}")
        return jnp.asarray(a.astype(np.asarray(t).dtype))

    restored = flax.serialization.from_state_dict(template, tree)
    return jax.tree.map(leaf, template, restored)


def policy_weights(actor_params: Any) -> dict[str, torch.Tensor]:
    """The actor's layers as ``{"<layer>.kernel" (in, out), "<layer>.bias"}`` CPU tensors."""
    layers = flax.serialization.to_state_dict(actor_params)["params"]
    return {
        f"{name}.{part}": torch.from_numpy(np.array(layer[part], dtype=np.float32))
        for name, layer in layers.items()
        for part in ("kernel", "bias")
    }


def run_fingerprint(map_name: str, cfg: PpoConfig, seed: int) -> str:
    """What makes a MAPPO run a different one: the map, the training settings, the seed."""
    trained = cfg.model_dump(mode="json", exclude=set(_NOT_TRAINING))
    for name, before in MAPPO_FIELDS_ADDED_LATER.items():
        if trained[name] == before:
            del trained[name]
    return json.dumps({"map": map_name, "budgets": trained, "seed": seed}, sort_keys=True)


def _restore(
    path: Path | None, fingerprint: str, template: TrainState
) -> tuple[TrainState, list[dict[str, Any]]] | None:
    """The training state and snapshots of the checkpoint at ``path``, if it holds the same
    training (a missing, corrupt or other run's checkpoint: None, start over)."""
    if path is None or not path.exists():
        return None
    try:
        state = load_sealed(path)
    except CheckpointError as err:
        log.warning("%s; starting over", err)  # a cache of work: a restart, not a failure
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoint of other settings, starting over", path)
        return None
    train = state["train"]
    if "hidden" not in train and template.hidden.size == 0:
        # Written before the recurrent actor: a feed-forward actor's state is empty.
        train = {**train, "hidden": np.zeros(template.hidden.shape, np.float32)}
    try:
        ts = _from_torch(template, train)
    except (KeyError, ValueError) as err:
        log.warning("%s: inconsistent checkpoint (%s), starting over", path, err)
        return None
    return ts, list(state["snapshots"])


# --------------------------------------------------------------------------- training


@dataclass
class MappoRun:
    """A finished (or resumed and finished) MAPPO run."""

    snapshots: list[dict[str, Any]]  # step, env_step, win_rate, mean_return, policy, ...
    stats: dict[str, float]  # resumed_from, seconds, steps_per_s, ...
    meta: dict[str, Any]  # what a tier policy file records about the network
    log: list[dict[str, float]]  # training metrics between snapshots


class _Run:
    """The snapshot loop of :func:`train_mappo`: evaluate, record, checkpoint."""

    def __init__(
        self,
        learner: MappoLearner,
        cfg: PpoConfig,
        seed: int,
        path: Path | None,
        on_metrics: MetricsCallback | None,
    ) -> None:
        # cfg, not learner.cfg: a cached learner may come from a config that differs in
        # fields it does not compile (snapshots, evaluation episodes).
        self.learner, self.cfg, self.seed = learner, cfg, seed
        self.path, self.on_metrics = path, on_metrics
        self.fingerprint = run_fingerprint(learner.map_name, cfg, seed)
        rngs = random_streams(seed, _STREAMS)
        self.init_key = jax.random.PRNGKey(seed_from(rngs["init"]))
        self.eval_key = jax.random.PRNGKey(seed_from(rngs["eval"]))
        self.snapshots: list[dict[str, Any]] = []
        self.log: list[dict[str, float]] = []
        self.pending: list[dict[str, Any]] = []

    def start(self) -> TrainState:
        template = self.learner.init(self.init_key)
        restored = _restore(self.path, self.fingerprint, template)
        if restored is None:
            return template
        ts, self.snapshots = restored
        log.info("%s: resuming MAPPO at update %d", self.path, int(ts.update))
        return ts

    def step_of(self, ts: TrainState) -> int:
        return int(ts.update) * self.learner.agent_steps_per_update

    def take(self, ts: TrainState) -> None:
        """Evaluate the current actor, keep it, checkpoint, report."""
        learner, cfg = self.learner, self.cfg
        step = self.step_of(ts)
        if self.snapshots and self.snapshots[-1]["step"] == step:
            return
        key = jax.random.fold_in(self.eval_key, len(self.snapshots))
        won, ret = learner.evaluate(ts.params["actor"], key, cfg.eval_episodes)
        snap: dict[str, Any] = {
            "step": step,
            "env_step": step // learner.num_agents,
            "win_rate": float(np.mean(won)),
            "mean_return": float(np.mean(ret)),
            "policy": policy_weights(ts.params["actor"]),
        }
        self.snapshots.append(snap)
        self.log.append({"step": step, **_summarise(self.pending)})
        self.pending = []
        if self.path is not None:
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": self.fingerprint,
                    "train": _to_torch(flax.serialization.to_state_dict(ts)),
                    "snapshots": self.snapshots,
                },
                self.path,
            )
        if self.on_metrics is not None:
            self.on_metrics(
                step, {"ppo/win_rate": snap["win_rate"], "ppo/mean_return": snap["mean_return"]}
            )


def _summarise(pending: list[dict[str, Any]]) -> dict[str, float]:
    """Training metrics of the updates since the last snapshot."""
    if not pending:
        return {}
    episodes = sum(float(m["episodes"]) for m in pending)
    out = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
    out["train_episodes"] = episodes
    out["train_win_rate"] = sum(float(m["wins"]) for m in pending) / max(episodes, 1.0)
    out["train_mean_return"] = sum(float(m["return_sum"]) for m in pending) / max(episodes, 1.0)
    for k in ("episodes", "wins", "return_sum"):
        out.pop(k)
    return out


def _rollout_ready(learner: MappoLearner, ts: TrainState) -> tuple[TrainState, _Traj]:
    """A rollout, waited for (in the rollout thread: its waiting holds up no one)."""
    return cast(tuple[TrainState, _Traj], jax.block_until_ready(learner.rollout(ts)))


def run_updates(
    learner: MappoLearner,
    ts: TrainState,
    count: int,
    pool: ThreadPoolExecutor | None = None,
    on_update: Callable[[dict[str, jax.Array]], None] | None = None,
) -> TrainState:
    """``count`` updates from ``ts``; ``on_update`` gets each update's metrics.

    With a ``pool`` (``overlap_rollout``) each rollout after the first is collected in the
    pool's thread while the learner updates on the one before: jax releases the GIL while a
    computation runs, so the two use both cores. That rollout's actor is the one before the
    update, one update older than sequential PPO's. The learner takes its randomness from
    ``ts.key`` folded (the rollout advances ``ts.key`` itself) and learns a lagged rollout
    by :meth:`MappoLearner.learn_lagged`. The last rollout is learnt before returning, so
    nothing is in flight at a snapshot or checkpoint."""
    if pool is None:
        for _ in range(count):
            ts, metrics = learner.update(ts)
            if on_update is not None:
                on_update(metrics)
        return ts
    ts, traj = learner.rollout(ts)
    for i in range(count):
        rolling = None
        if i + 1 < count:  # the segment's last update needs no next rollout
            rolling = pool.submit(_rollout_ready, learner, ts)
        key = jax.random.fold_in(ts.key, 1)
        learn = learner.learn if i == 0 else learner.learn_lagged  # the first is fresh
        learnt, metrics = learn(replace(ts, key=key), traj)
        rolled = ts
        if rolling is not None:
            rolled, traj = rolling.result()
        ts = replace(
            learnt, env_state=rolled.env_state, ep_return=rolled.ep_return,
            hidden=rolled.hidden, key=rolled.key,
        )  # fmt: skip
        if on_update is not None:
            on_update(metrics)
    return ts


def train_mappo(
    map_name: str,
    cfg: PpoConfig,
    seed: int,
    behaviour_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> MappoRun:
    """Train (or resume) MAPPO on ``map_name``; snapshots at the start, every
    ``snapshot_every`` agent steps (between updates) and at the end, each evaluated on
    ``eval_episodes`` episodes and checkpointed to ``behaviour_dir/mappo_state.pt``."""
    learner = learner_for(map_name, cfg)
    path = None if behaviour_dir is None else Path(behaviour_dir) / CHECKPOINT_FILE
    run = _Run(learner, cfg, seed, path, on_metrics)
    ts = run.start()
    start = run.step_of(ts)
    run.take(ts)  # the untrained actor (a no-op when resuming)
    t0 = time.perf_counter()
    bar = tqdm(total=learner.num_updates, initial=int(ts.update), desc=f"mappo {map_name}",
               disable=not progress)  # fmt: skip
    per = learner.agent_steps_per_update

    def kept(metrics: dict[str, jax.Array]) -> None:
        run.pending.append(metrics)
        bar.update(1)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mappo-rollout") as pool:
        while int(ts.update) < learner.num_updates:
            # The updates up to the next snapshot: the first whose step reaches it.
            next_snap = (run.step_of(ts) // cfg.snapshot_every + 1) * cfg.snapshot_every
            count = min(
                -(-(next_snap - run.step_of(ts)) // per), learner.num_updates - int(ts.update)
            )
            ts = run_updates(learner, ts, count, pool if cfg.overlap_rollout else None, kept)
            if int(ts.update) < learner.num_updates:
                run.take(ts)
                bar.set_postfix(win_rate=f"{run.snapshots[-1]['win_rate']:.2f}")
    run.take(ts)  # the final actor
    bar.close()
    elapsed = time.perf_counter() - t0
    steps = run.step_of(ts) - start
    stats = {
        "resumed_from": float(start),
        "seconds": elapsed,
        "steps_per_s": steps / elapsed if elapsed > 0 and steps else 0.0,
        "env_steps_per_s": steps / learner.num_agents / elapsed if elapsed > 0 and steps else 0.0,
    }
    return MappoRun(run.snapshots, stats, policy_meta(learner, seed), run.log)


def policy_meta(learner: MappoLearner, seed: int) -> dict[str, Any]:
    """What a tier policy file records about the actor (:func:`numpy_policy` reads it)."""
    spec = learner.env.spec
    recurrent = {"rnn": learner.cfg.actor_rnn} if learner.recurrent else {}
    units = {"actor": learner.cfg.actor_arch} if learner.cfg.actor_arch != "mlp" else {}
    return {
        **recurrent,  # absent for an MLP, as in the files written before the GRU
        **units,  # absent for an MLP, as in the files written before the unit actor
        "learner": "mappo",
        "map": learner.map_name,
        "seed": seed,
        "net_arch": list(learner.cfg.net_arch),
        "activation": "relu",
        "agent_id": True,
        "obs_dim": spec.obs_dim,
        "num_agents": spec.num_agents,
        "num_actions": spec.num_actions,
    }


# --------------------------------------------------------------------------- tier policies

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


def numpy_policy(
    weights: Mapping[str, torch.Tensor | np.ndarray],
    meta: Mapping[str, Any],
    rng: np.random.Generator,
) -> MultiAgentPolicy:
    """A tier policy: the actor (:class:`Actor`, or :class:`UnitActor` where ``meta["actor"]``
    names a unit actor) in numpy, actions sampled from its masked
    categorical with noise from ``rng`` (Gumbel-max), so a rollout is reproducible from the
    seed alone. A recurrent actor's state restarts at ``t == 0``: the episodes of a batch
    start together (:func:`cmt.envs.smax.run_episodes`)."""
    hidden, rnn = len(meta["net_arch"]), int(meta.get("rnn", 0))
    actor = meta.get("actor", "mlp")
    units, targets = actor != "mlp", actor == "unit_targets"
    names = [f"hidden_{i}" for i in range(hidden)]
    names += list(UNIT_LAYERS) if units else ["logits"]
    if rnn:
        names += ["gru_x", "gru_h"]
    layer = {
        n: (
            np.asarray(weights[f"{n}.kernel"], np.float64),
            np.asarray(weights[f"{n}.bias"], np.float64),
        )
        for n in names
    }
    act_fn, agent_id = _ACTIVATIONS[meta["activation"]], bool(meta["agent_id"])
    state: dict[str, np.ndarray] = {}

    def dense(n: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ layer[n][0] + layer[n][1])

    def unit_dense(n: str, _width: int, _scale: float, x: np.ndarray) -> np.ndarray:
        return dense(n, x)

    net, num_agents = tuple(meta["net_arch"]), int(meta.get("num_agents", 0))
    num_enemies = int(meta.get("num_actions", NUM_MOVES)) - NUM_MOVES

    def mlp_logits(x: np.ndarray, t: int) -> np.ndarray:
        for i in range(hidden):
            x = act_fn(dense(f"hidden_{i}", x))
            if i == 0 and rnn:
                if t == 0:
                    state["h"] = np.zeros((*x.shape[:-1], rnn))
                h = state["h"]
                state["h"] = x = gru_update(dense("gru_x", x), dense("gru_h", h), h)
        return dense("logits", x)

    def act(obs: np.ndarray, avail: np.ndarray, t: int) -> np.ndarray:
        x = np.asarray(actor_input(obs) if agent_id else obs, np.float64)
        if units:
            x = unit_logits(unit_dense, x, net, num_agents, num_enemies, targets)
        else:
            x = mlp_logits(x, t)
        scores = x + rng.gumbel(size=x.shape)  # (B, A, N)
        return np.where(avail, scores, -np.inf).argmax(axis=-1).astype(np.int64)

    return act


def sb3_policy_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MaskablePPO's ``MlpPolicy`` actor (tanh MLP) in :func:`numpy_policy`'s layout."""
    linears = sorted(
        {int(k.split(".")[2]) for k in state_dict if k.startswith("mlp_extractor.policy_net.")}
    )
    out: dict[str, torch.Tensor] = {}
    for i, j in enumerate(linears):
        prefix = f"mlp_extractor.policy_net.{j}"
        out[f"hidden_{i}.kernel"] = state_dict[f"{prefix}.weight"].detach().float().T.contiguous()
        out[f"hidden_{i}.bias"] = state_dict[f"{prefix}.bias"].detach().float().clone()
    out["logits.kernel"] = state_dict["action_net.weight"].detach().float().T.contiguous()
    out["logits.bias"] = state_dict["action_net.bias"].detach().float().clone()
    return out


def save_tier_policy(
    path: Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """``path``: a tier's actor weights and its meta (map, tier, step, win rate, seed, net)."""
    atomic_torch_save(
        {
            "format": POLICY_FORMAT,
            "kind": "smax_tier_policy",
            "weights": dict(weights),
            "meta": json.dumps(dict(meta), sort_keys=True),
        },
        path,
    )


def read_tier_policy(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tier file's actor weights and meta, checked (sealed, format, kind)."""
    obj = load_sealed(path)
    if obj.get("format") != POLICY_FORMAT or obj.get("kind") != "smax_tier_policy":
        raise CheckpointError(f"{path}: not a SMAX tier policy of format {POLICY_FORMAT}")
    return obj["weights"], json.loads(obj["meta"])


def load_tier_policy(
    path: Path, rng: np.random.Generator
) -> tuple[MultiAgentPolicy, dict[str, Any]]:
    """The sampling policy of one tier file and its meta.

    Its dataset episodes come back with ``rng = np.random.default_rng(meta["rollout_seed"])``,
    this policy on ``rng`` and ``cmt.behaviour.ppo.record_tier(map, policy,
    meta["episodes"], seed_from(rng), tier)``, as the collect stage drew them."""
    weights, meta = read_tier_policy(path)
    try:
        return numpy_policy(weights, meta, rng), meta
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: inconsistent tier policy: {err}") from None


def load_tier_policies(
    directory: Path, rngs: Mapping[str, np.random.Generator] | None = None
) -> dict[str, MultiAgentPolicy]:
    """Every ``<tier>.pt`` of a dataset's ``policies/`` directory as a sampling policy;
    ``rngs`` gives a tier its noise stream (default: seeded by the tier's ``rollout_seed``)."""
    out: dict[str, MultiAgentPolicy] = {}
    for path in sorted(Path(directory).glob("*.pt")):
        tier = path.stem
        if rngs is not None and tier in rngs:
            rng = rngs[tier]
        else:
            rng = np.random.default_rng(int(read_tier_policy(path)[1].get("rollout_seed", 0)))
        out[tier], _ = load_tier_policy(path, rng)
    return out

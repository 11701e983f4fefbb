"""SMAX (JaxMARL's StarCraft Multi-Agent Challenge in JAX) as a batched multi-agent environment.

One :class:`SmaxBatchedEnv` steps many episodes of one map with ``jax.jit(jax.vmap(...))`` over
SMAX's own functions (``HeuristicEnemySMAX``: the allies are ours, the enemies follow SMAX's
built-in heuristic). Observations, available-action masks and actions are per ally agent; the
reward is the team's (SMAX gives every ally the same one). Details in ``docs/smax.md``.

jax runs on the CPU here: PyTorch owns any accelerator, and SMAX's small per-step kernels gain
nothing from one.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# Callers configure jax before importing this module (cmt.device.jax_on_cpu: CPU only, one
# XLA thread); importing it sets nothing.
import jax
import jax.numpy as jnp
import numpy as np


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Swallow jaxmarl's import-time prints about optional submodules. Its mabrax import
    resets ``sys.stdout`` and ``sys.stderr`` to ``sys.__stdout__`` / ``sys.__stderr__``, which
    would also undo any redirection the host set up (pytest's capture, a notebook's), so
    all four are swapped and restored."""
    names = ("stdout", "__stdout__", "stderr", "__stderr__")
    saved = {name: getattr(sys, name) for name in names}
    swallow = io.StringIO()
    # setattr: the double-underscore streams are final to type checkers, not to Python.
    setattr(sys, "stdout", swallow)  # noqa: B010
    setattr(sys, "__stdout__", swallow)  # noqa: B010
    setattr(sys, "__stderr__", sys.stderr)  # noqa: B010  # mabrax resets stderr to this
    try:
        yield
    finally:
        for name, stream in saved.items():
            setattr(sys, name, stream)


with _quiet_stdout():
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    from jaxmarl.environments.smax.heuristic_enemy import (
        create_heuristic_policy,
        get_heuristic_policy_initial_state,
    )

__all__ = [
    "OWN_FEATURES",
    "SMAX_MAPS",
    "SmaxBatchedEnv",
    "SmaxMap",
    "UNIT_FEATURES",
    "heuristic_policy",
    "random_policy",
    "run_episodes",
    "smax_map",
]

STOP_ACTION = 4
"""SMAX's discrete action 4 (stop): always available, and the only one of a dead unit."""


@dataclass(frozen=True)
class SmaxMap:
    """Spaces and episode limit of one SMAX map (ally side)."""

    name: str
    num_agents: int  # allies (the agents we control)
    num_enemies: int
    obs_dim: int
    num_actions: int  # 4 moves + stop + one attack per enemy
    horizon: int  # episode limit in agent steps (SMAX's max_steps)


UNIT_FEATURES = 7 + 6
"""Features per other unit in SMAX's "unit_list" observation (the other allies in index order,
then the enemies), each unit's block zero when it is dead or out of sight."""
OWN_FEATURES = 4 + 6
"""Features of the observing unit itself, at the end of the observation."""


def _map(name: str, allies: int, enemies: int, horizon: int = 100) -> SmaxMap:
    obs_dim = UNIT_FEATURES * (allies - 1 + enemies) + OWN_FEATURES
    return SmaxMap(name, allies, enemies, obs_dim, 5 + enemies, horizon)


class _MapRegistry(dict[str, SmaxMap]):
    """A dict whose missing keys raise a KeyError naming the known maps."""

    def __missing__(self, name: str) -> SmaxMap:
        raise KeyError(f"unknown SMAX map {name!r}; known maps: {sorted(self)}")


SMAX_MAPS: dict[str, SmaxMap] = _MapRegistry(
    (m.name, m)
    for m in (
        _map("3m", 3, 3),
        _map("2s3z", 5, 5),
        _map("5m_vs_6m", 5, 6),
        _map("8m", 8, 8),
        _map("3s_vs_5z", 3, 5),
    )
)
"""The SMAX maps this project uses; the numbers are checked against SMAX in the tests."""


def smax_map(name: str) -> SmaxMap:
    """The registered map ``name``, or a KeyError naming the known maps."""
    return SMAX_MAPS[name]


def make_smax(name: str) -> HeuristicEnemySMAX:
    """SMAX's environment of map ``name`` with heuristic enemies and SMAX's defaults
    (discrete actions, unit-list observations, win bonus 1)."""
    spec = smax_map(name)
    # SMAX checks its step limit before counting the step, so max_steps=h ends at step h + 1.
    return HeuristicEnemySMAX(scenario=map_name_to_scenario(name), max_steps=spec.horizon - 1)


class _Kernels:
    """The jitted, vmapped reset and step of one map (built once per map and reused)."""

    def __init__(self, name: str) -> None:
        self.spec = smax_map(name)
        self.env = make_smax(name)
        self.agents = self.env.agents
        self.n_allies = self.env.num_allies
        self.reset = jax.jit(self._reset, static_argnums=1)
        self.step = jax.jit(self._step)
        self.reset_where = jax.jit(self._reset_where)
        # The same step for one episode, for the one-at-a-time baseline of the benchmark.
        self.reset_single = jax.jit(self._reset_one)
        self.step_single = jax.jit(self._step_one)

    # ------------------------------------------------------------------ one episode
    def _observe(self, state: Any) -> tuple[jax.Array, jax.Array]:
        obs = self.env.get_obs(state)
        avail = self.env.get_avail_actions(state)
        return (
            jnp.stack([obs[a] for a in self.agents]).astype(jnp.float32),  # (A, O)
            jnp.stack([avail[a] for a in self.agents]).astype(bool),  # (A, N)
        )

    def _reset_one(self, key: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        _, state = self.env.reset(key)
        # Strong dtypes, as step returns them: a weak-typed leaf would compile step twice.
        state = jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), state)
        return (state, *self._observe(state))

    def _outcome(self, state: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        alive = state.state.unit_alive
        allies_alive = alive[: self.n_allies].any()
        enemies_alive = alive[self.n_allies :].any()
        done = state.state.done
        # SMAX ends an episode when a side is wiped out or at max_steps; only the time
        # limit with both sides standing is a truncation. A win is SMAX's own rule for
        # its win bonus: every enemy dead and an ally alive (both dead is a draw).
        truncated = done & allies_alive & enemies_alive
        return done & ~truncated, truncated, done & allies_alive & ~enemies_alive

    def _step_one(self, key: jax.Array, state: Any, actions: jax.Array) -> tuple[Any, ...]:
        was_done = state.state.done
        _, new, rewards, _, _ = self.env.step_env(
            key, state, {a: actions[i] for i, a in enumerate(self.agents)}
        )
        # A finished episode stays frozen (no auto-reset): its outputs repeat the end.
        new = jax.tree.map(lambda old, nxt: jnp.where(was_done, old, nxt), state, new)
        reward = jnp.where(was_done, 0.0, rewards[self.agents[0]]).astype(jnp.float32)
        return (new, *self._observe(new), reward, *self._outcome(new))

    # ------------------------------------------------------------------ batched
    # Batched kernels take and return the PRNG key, so splitting it costs no extra
    # dispatch: (key, ...) -> (next key, state, ...), one sub-key per episode.
    @staticmethod
    def _split(key: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
        keys = jax.random.split(key, b + 1)
        return keys[0], keys[1:]

    def _reset(self, key: jax.Array, b: int) -> tuple[Any, ...]:
        key, keys = self._split(key, b)
        return (key, *jax.vmap(self._reset_one)(keys))

    def _step(self, key: jax.Array, state: Any, actions: jax.Array) -> tuple[Any, ...]:
        key, keys = self._split(key, actions.shape[0])
        return (key, *jax.vmap(self._step_one)(keys, state, actions))

    def _reset_where(self, key: jax.Array, mask: jax.Array, state: Any) -> tuple[Any, ...]:
        key, keys = self._split(key, mask.shape[0])
        fresh, _, _ = jax.vmap(self._reset_one)(keys)
        merged = jax.tree.map(
            lambda f, s: jnp.where(mask.reshape((-1,) + (1,) * (f.ndim - 1)), f, s),
            fresh,
            state,
        )
        return (key, merged, *jax.vmap(self._observe)(merged))


_KERNELS: dict[str, _Kernels] = {}


def kernels(name: str) -> _Kernels:
    """The compiled kernels of map ``name`` (cached: jit compiles once per map and shape)."""
    if name not in _KERNELS:
        _KERNELS[name] = _Kernels(name)
    return _KERNELS[name]


class SmaxBatchedEnv:
    """``num_envs`` SMAX episodes of one map stepped together (a ``MultiAgentBatchedEnv``).

    Episodes that have ended stay frozen: stepping them again returns their last observation,
    zero reward and their end flags again, and never starts a new episode (use
    :meth:`reset_done` for that).
    """

    def __init__(self, map_name: str, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self._k = kernels(map_name)
        spec = self._k.spec
        self.map_name = map_name
        self.num_envs = num_envs
        self.num_agents, self.obs_dim, self.num_actions = (
            spec.num_agents,
            spec.obs_dim,
            spec.num_actions,
        )
        self.horizon = spec.horizon
        self._key: jax.Array | None = None
        self._state: Any = None

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start every episode: observations (B, A, O) float32, available actions (B, A, N)."""
        self._key, self._state, obs, avail = self._k.reset(jax.random.PRNGKey(seed), self.num_envs)
        return np.array(obs), np.array(avail)  # writable copies (torch warns on read-only)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions (B, A) int: obs, avail, team reward (B,) float32, terminated,
        truncated and won (B,) bool. ``won`` is only ever true with ``terminated``."""
        if self._state is None:
            raise RuntimeError("call reset(seed) before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.num_agents):
            raise ValueError(
                f"actions of shape {actions.shape}, expected {(self.num_envs, self.num_agents)}"
            )
        self._key, self._state, obs, avail, reward, term, trunc, won = self._k.step(
            self._key, self._state, actions.astype(np.int32)
        )
        return tuple(np.array(x) for x in (obs, avail, reward, term, trunc, won))  # type: ignore[return-value]

    def reset_done(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start new episodes in place of the finished ones (auto-reset for training).

        Returns obs, avail of every episode and the mask (B,) of those that were reset."""
        if self._state is None:
            raise RuntimeError("call reset(seed) before reset_done()")
        mask = np.asarray(self._state.state.done)
        self._key, self._state, obs, avail = self._k.reset_where(
            self._key, jnp.asarray(mask), self._state
        )
        return np.array(obs), np.array(avail), mask

    @cached_property
    def smax(self) -> HeuristicEnemySMAX:
        """The underlying SMAX environment (for the heuristic policy)."""
        return self._k.env


# --------------------------------------------------------------------------- policies and rollouts

MultiAgentPolicy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""Batched policy: (obs (B, A, O), avail (B, A, N) bool, step t) -> actions (B, A) int64."""


def random_policy(rng: np.random.Generator) -> MultiAgentPolicy:
    """Uniform over each agent's available actions."""

    def act(obs: np.ndarray, avail: np.ndarray, t: int) -> np.ndarray:
        scores = rng.random(avail.shape) * avail  # unavailable actions score 0, never picked
        return scores.argmax(axis=-1).astype(np.int64)

    return act


def heuristic_policy(map_name: str, seed: int) -> MultiAgentPolicy:
    """SMAX's scripted heuristic (the one its enemies use) controlling the allies.

    Its policy state starts fresh at ``t == 0``. It ignores the action masks, so an action it
    picks that is not available (dead units, rounding at the edge of the attack range) is
    replaced by stop, which always is.
    """
    env = kernels(map_name).env._env
    act_one = create_heuristic_policy(env, 0)
    batched = jax.jit(jax.vmap(jax.vmap(act_one)))  # over episodes, then agents
    init = get_heuristic_policy_initial_state()
    key = jax.random.PRNGKey(seed)
    carry: dict[str, Any] = {}

    def act(obs: np.ndarray, avail: np.ndarray, t: int) -> np.ndarray:
        nonlocal key
        b, a = avail.shape[:2]
        if t == 0 or carry.get("shape") != (b, a):
            carry["state"] = jax.tree.map(
                lambda x: jnp.broadcast_to(jnp.asarray(x), (b, a, *jnp.shape(x))), init
            )
            carry["shape"] = (b, a)
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, b * a).reshape(b, a, -1)
        actions, carry["state"] = batched(keys, carry["state"], jnp.asarray(obs))
        actions = np.asarray(actions, dtype=np.int64)
        ok = np.take_along_axis(avail, actions[..., None], axis=-1)[..., 0]
        return np.where(ok, actions, STOP_ACTION)

    return act


STEP_FIELDS = (
    "observations",
    "avail_actions",
    "actions",
    "rewards",
    "terminated",
    "truncated",
    "won",
    "next_observations",
)
"""The per-step fields of :class:`EpisodeBatch`, in the order a rollout records them."""


@dataclass
class EpisodeBatch:
    """Per-step arrays of a batched rollout, time-major (T, B, ...), and per-episode results."""

    observations: np.ndarray  # (T, B, A, O) float32
    avail_actions: np.ndarray  # (T, B, A, N) bool
    actions: np.ndarray  # (T, B, A) int64
    rewards: np.ndarray  # (T, B) float32
    terminated: np.ndarray  # (T, B) bool
    truncated: np.ndarray  # (T, B) bool
    won: np.ndarray  # (T, B) bool
    next_observations: np.ndarray  # (T, B, A, O) float32
    returns: np.ndarray  # (B,) float64
    episode_won: np.ndarray  # (B,) bool
    lengths: np.ndarray  # (B,) int64


def run_episodes(
    map_name: str, num_episodes: int, policy: MultiAgentPolicy, seed: int, record: bool = False
) -> EpisodeBatch:
    """Run ``num_episodes`` episodes of ``map_name`` together with ``policy``.

    Returns per-episode ``returns``, ``episode_won`` and ``lengths``; with ``record`` also
    every step (steps after an episode's end are zero-filled and ``lengths`` says where).
    """
    env = SmaxBatchedEnv(map_name, num_episodes)
    obs, avail = env.reset(seed)
    b, t_max = num_episodes, env.horizon
    steps: list[tuple[np.ndarray, ...]] = []
    returns = np.zeros(b, dtype=np.float64)
    won = np.zeros(b, dtype=bool)
    lengths = np.zeros(b, dtype=np.int64)
    alive = np.ones(b, dtype=bool)
    for t in range(t_max):
        actions = np.asarray(policy(obs, avail, t), dtype=np.int64)
        nxt, nxt_avail, reward, term, trunc, w = env.step(actions)
        returns += np.where(alive, reward, 0.0)
        lengths += alive
        won |= alive & w
        if record:
            live = alive[:, None, None]
            steps.append(
                (
                    obs * live,
                    avail & live,
                    actions * alive[:, None],
                    reward * alive,
                    term & alive,
                    trunc & alive,
                    w & alive,
                    nxt * live,
                )
            )
        alive &= ~(term | trunc)
        obs, avail = nxt, nxt_avail
        if not alive.any():
            break
    if alive.any():
        raise RuntimeError(f"{int(alive.sum())} SMAX episodes did not end within {t_max} steps")
    fields = [np.stack(x) for x in zip(*steps, strict=True)] if record else [np.empty(0)] * 8
    per_step = dict(zip(STEP_FIELDS, fields, strict=True))
    return EpisodeBatch(**per_step, returns=returns, episode_won=won, lengths=lengths)

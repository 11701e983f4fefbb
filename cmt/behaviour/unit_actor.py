"""A unit-wise actor for SMAX (``data.ppo.actor_arch: units``; docs/smax.md).

SMAX's "unit_list" observation is a list of unit blocks (the other allies, the enemies) and
the ally's own features. The MLP actor reads it as one flat vector, so choosing *which* enemy
to shoot is learnt once per enemy slot. This actor embeds every unit with one layer shared by
all units of its side, pools the embeddings into the ally's context, and scores the attack
on enemy j by the product of a query from that context with enemy j's embedding: one rule for
all targets (as entity and pointer networks in the SMAC literature do), the move and stop
logits from the context alone.

With ``actor_arch: unit_targets`` each unit's block also carries who shot at whom on the last
step (:func:`target_features`): SMAX reports it per unit as one number, the index of its last
attack action scaled to [0, 1], which a shared embedding layer cannot match against the other
units' slots; decoded into counts, "enemy j shot at me" and "k allies shot at enemy j" are
features the attack scores and the moves can use directly.

The forward pass, :func:`unit_logits`, is written once over a ``dense(name, width, scale, x)``
callable and an array module, so training (flax, jax) and the tier policies (numpy) run the
same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmt.envs.smax import OWN_FEATURES, UNIT_FEATURES

__all__ = [
    "NUM_MOVES",
    "UNIT_LAYERS",
    "UnitActor",
    "array_module",
    "embed_units",
    "target_features",
    "unit_logits",
]

Dense = Callable[[str, int, float, Any], Any]
"""``dense(name, width, scale, x)``: the named affine layer applied to ``x`` (..., in)."""

NUM_MOVES = 5  # SMAX's four moves and stop come before the attack actions
LAST_TARGETED = 5  # column of SMAX's "last_targeted" in a unit block (cmt.envs.smax)

UNIT_LAYERS = ("own", "ally", "enemy", "move", "query")
"""The unit actor's layers besides its ``hidden_<i>`` context layers."""


def array_module(x: Any) -> Any:
    """jax.numpy for jax arrays (tracers included), numpy otherwise: the actors' pieces run in
    both (training in jax, the tier policies in numpy)."""
    return jnp if isinstance(x, jax.Array) else np


def embed_units(
    dense: Dense,
    name: str,
    x: Any,
    first: int,
    count: int,
    features: int,
    width: int,
    extra: Any = None,
) -> Any:
    """Units ``first`` to ``first + count - 1`` of ``x``'s blocks of ``features``, each with
    its ``extra`` columns (..., count, k) appended if given, embedded by the one layer
    ``name`` and a ReLU: (..., count, width)."""
    xp = array_module(x)
    block = x[..., first * features : (first + count) * features]
    block = block.reshape(*x.shape[:-1], count, features)
    if extra is not None:
        block = xp.concatenate([block, extra], axis=-1)
    # Units as rows of one 2-D matrix: measured 1.2x faster to train than a 3-D dense.
    rows = dense(name, width, math.sqrt(2.0), block.reshape(-1, block.shape[-1]))
    return xp.maximum(rows, 0.0).reshape(*x.shape[:-1], count, width)


def target_features(x: Any, num_agents: int, num_enemies: int) -> tuple[Any, Any, Any]:
    """Who shot at whom on the last step, as seen by each ally, from the actor input ``x``
    (..., O + A): extra columns for the other allies' blocks (..., A - 1, 1: how many of the
    enemies it sees shot at that ally, over E), the enemies' blocks (..., E, 2: how many of
    the allies it sees shot at that enemy, seen or not, over max(A - 1, 1); whether that
    enemy shot at it) and its own features (..., 1: how many enemies shot at it, over E).

    SMAX writes a unit's last attack action ``a`` as ``a / (its number of actions - 1)``
    (0 when it did not attack, or is dead or out of sight). An ally's attack ``5 + t`` aims
    at enemy t; an enemy's ``5 + t`` at ally ``A - 1 - t`` (its unit list counts allies in
    reverse). Ally blocks skip the observer: block k is ally k below the observer's index
    (its one-hot, the end of ``x``), ally k + 1 from it on."""
    xp = array_module(x)
    a, e = num_agents, num_enemies
    others = a - 1 + e
    last = x[..., : others * UNIT_FEATURES].reshape(*x.shape[:-1], others, UNIT_FEATURES)
    last = last[..., LAST_TARGETED]
    one_hot = x[..., -a:]
    ally_action = xp.round(last[..., : a - 1] * (NUM_MOVES - 1 + e))
    shot = ally_action[..., :, None] == (NUM_MOVES + xp.arange(e))  # (..., A-1, E)
    allies_on = shot.sum(axis=-2) / max(a - 1, 1)  # (..., E)
    enemy_action = xp.round(last[..., a - 1 :] * (NUM_MOVES - 1 + a))
    target = xp.where(enemy_action >= NUM_MOVES, a - 1 - (enemy_action - NUM_MOVES), -1)
    on_ally = (target[..., :, None] == xp.arange(a)).astype(x.dtype)  # (..., E, A)
    on_me = (on_ally * one_hot[..., None, :]).sum(axis=-1)  # (..., E)
    per_ally = on_ally.sum(axis=-2) / e  # (..., A): enemies on each ally, by index
    me = (one_hot * xp.arange(a)).sum(axis=-1, keepdims=True)  # the observer's index
    block_ally = xp.arange(a - 1) + (xp.arange(a - 1) >= me)  # (..., A-1)
    on_others = (per_ally[..., None, :] * (block_ally[..., None] == xp.arange(a))).sum(-1)
    enemy_extra = xp.stack([allies_on.astype(x.dtype), on_me], axis=-1)
    own_extra = on_me.sum(axis=-1, keepdims=True) / e
    return on_others[..., None], enemy_extra, own_extra


def unit_logits(
    dense: Dense,
    x: Any,
    hidden: tuple[int, ...],
    num_agents: int,
    num_enemies: int,
    targets: bool = False,
) -> Any:
    """Logits (..., 5 + E) from the actor input ``x`` (..., O + A): the observation, then the
    ally's one-hot (:func:`cmt.behaviour.mappo.actor_input`); with ``targets`` every block
    also carries :func:`target_features`."""
    xp = array_module(x)
    width, others = hidden[0], num_agents - 1 + num_enemies
    relu = lambda v: xp.maximum(v, 0.0)  # noqa: E731
    root2 = math.sqrt(2.0)
    if x.shape[-1] != others * UNIT_FEATURES + OWN_FEATURES + num_agents:
        raise ValueError(
            f"unit actor input of width {x.shape[-1]}: not a SMAX observation of "
            f"{num_agents} allies and {num_enemies} enemies with the ally's one-hot"
        )
    own = x[..., others * UNIT_FEATURES :]  # own features and the one-hot
    ally_extra = enemy_extra = None
    if targets:
        ally_extra, enemy_extra, own_extra = target_features(x, num_agents, num_enemies)
        own = xp.concatenate([own, own_extra], axis=-1)
    e_own = relu(dense("own", width, root2, own))
    e_ally = embed_units(dense, "ally", x, 0, num_agents - 1, UNIT_FEATURES, width, ally_extra)
    e_enemy = embed_units(
        dense, "enemy", x, num_agents - 1, num_enemies, UNIT_FEATURES, width, enemy_extra
    )
    pooled = [e_own, e_enemy.mean(axis=-2), e_enemy.max(axis=-2)]
    if num_agents > 1:
        pooled.insert(1, e_ally.mean(axis=-2))
    h = xp.concatenate(pooled, axis=-1)
    for i, w in enumerate(hidden):
        h = relu(dense(f"hidden_{i}", w, root2, h))
    moves = dense("move", NUM_MOVES, 0.01, h)
    query = dense("query", width, 0.01, h)  # small: the first policy is near uniform
    attacks = xp.einsum("...d,...ed->...e", query, e_enemy) / math.sqrt(width)
    return xp.concatenate([moves, attacks], axis=-1)


class UnitActor(nn.Module):
    """:func:`unit_logits` as a flax module, with the MLP actor's signature: (hidden,
    actor input) -> (hidden, logits); the hidden state is empty and passed through."""

    hidden: tuple[int, ...]
    num_agents: int
    num_enemies: int
    targets: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        def dense(name: str, width: int, scale: float, v: jax.Array) -> jax.Array:
            init = nn.initializers.orthogonal(scale)
            return nn.Dense(width, kernel_init=init, name=name)(v)

        logits = unit_logits(dense, x, self.hidden, self.num_agents, self.num_enemies, self.targets)
        return h, logits

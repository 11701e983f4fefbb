"""The off-policy learners behind the SAC behaviour policies, one interface for each library.

``sbx_sac`` and ``sbx_tqc`` are SBX's JAX ports of SAC and TQC; ``sb3_sac`` is
Stable-Baselines3's torch SAC. All three are SB3 algorithms to the caller (``learn``,
callbacks, ``replay_buffer``, ``num_timesteps``); this module adds what differs: the actor as
library-neutral weights (:mod:`cmt.behaviour.actor`) and the resumable state (weights,
optimisers, entropy coefficient, random key) as tensors that ``torch.load(weights_only=True)``
reads back, without the replay buffer, so that it is small enough to commit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from cmt.behaviour.actor import ActorWeights, from_sb3, from_sbx
from cmt.device import jax_on_cpu
from cmt.sections import SacConfig

_SBX_STATES = ("actor_state", "qf_state")


class Learner:
    """An SB3-style off-policy algorithm (``self.model``) and what the behaviour code needs."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def actor(self) -> ActorWeights:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class Sb3Learner(Learner):
    def actor(self) -> ActorWeights:
        return from_sb3(self.model.actor.state_dict())

    def state(self) -> dict[str, Any]:
        return {
            "params": self.model.get_parameters(),
            "log_ent_coef": self.model.log_ent_coef.detach().cpu().clone(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        model = self.model
        model.set_parameters(state["params"], exact_match=True, device=model.device)
        with torch.no_grad():
            model.log_ent_coef.copy_(state["log_ent_coef"].to(model.device))


class SbxLearner(Learner):
    def actor(self) -> ActorWeights:
        return from_sbx(self.model.policy.actor_state.params)

    def _states(self) -> dict[str, Any]:
        policy = self.model.policy
        return {
            **{name: getattr(policy, name) for name in _SBX_STATES},
            "ent_coef_state": self.model.ent_coef_state,
            "key": self.model.key,
            "policy_key": policy.key,
        }

    def state(self) -> dict[str, Any]:
        import jax
        from flax import serialization

        tree = serialization.to_state_dict(self._states())
        return jax.tree.map(lambda x: torch.from_numpy(np.array(x)), tree)

    def load_state(self, state: dict[str, Any]) -> None:
        import jax
        import jax.numpy as jnp
        from flax import serialization

        arrays = jax.tree.map(lambda t: jnp.asarray(t.numpy()), state)
        restored = serialization.from_state_dict(self._states(), arrays)
        policy = self.model.policy
        for name in _SBX_STATES:
            setattr(policy, name, restored[name])
        self.model.ent_coef_state = restored["ent_coef_state"]
        self.model.key, policy.key = restored["key"], restored["policy_key"]


def make_learner(env: gym.Env, budgets: SacConfig, seed: int) -> Learner:
    """``budgets.learner`` on ``env``; its replay buffer never wraps (row i is step i)."""
    kwargs: dict[str, Any] = {
        "learning_rate": budgets.learning_rate,
        "buffer_size": budgets.sac_steps + 1,
        "learning_starts": budgets.learning_starts,
        "batch_size": budgets.batch_size,
        "gamma": budgets.gamma,
        "train_freq": budgets.train_freq,
        "gradient_steps": budgets.train_freq,
        "policy_kwargs": {"net_arch": list(budgets.net_arch)},
        "seed": seed,
        "verbose": 0,
    }
    if budgets.learner == "sb3_sac":
        from stable_baselines3 import SAC

        return Sb3Learner(SAC("MlpPolicy", env, device=budgets.device, **kwargs))
    jax_on_cpu()  # before jax starts: small MLPs train fastest on one CPU thread
    from sbx import SAC as SbxSAC
    from sbx import TQC

    algo = SbxSAC if budgets.learner == "sbx_sac" else TQC
    return SbxLearner(algo("MlpPolicy", env, **kwargs))

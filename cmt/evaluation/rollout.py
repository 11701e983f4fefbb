"""Batched online evaluation: all episodes of all tasks advance together, one model forward
per environment step, instead of one episode at a time at batch size 1. A model with banded
attention computes only each step's new tokens, with a rolling key/value cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmt.benchmarks.base import Episodes
from cmt.data.dataset import Normalizer
from cmt.device import autocast
from cmt.envs.registry import BatchedEnv
from cmt.envs.team import TeamRows
from cmt.models.policy import DecodeState, SequencePolicy

if TYPE_CHECKING:
    from cmt.benchmarks import Benchmark


@torch.inference_mode()
def rollout(
    model: SequencePolicy,
    norm: Normalizer,
    env: BatchedEnv,
    horizon: int,
    seed: int,
    prompts: torch.Tensor | None = None,
    target_returns: np.ndarray | None = None,
    bf16: bool = False,
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one episode per environment of ``env``; returns (returns, lengths), each (B,).

    ``prompts`` (B, P, d) is one prompt per episode; ``target_returns`` (B,) starts the
    return-to-go of return-conditioned models. Steps after an episode ends are ignored.
    ``bf16`` runs the model under bfloat16 autocast (faster on CPUs with AVX512-BF16).
    A team environment (:class:`~cmt.envs.team.TeamRows`) has one row per agent: rows carry
    their agent id, and discrete actions are chosen among the row's available ones.
    A banded model decodes incrementally; ``cache=False`` recomputes its whole history every
    step instead (the slow reference the cache must equal).
    """
    model.eval()
    device = next(model.parameters()).device
    B = env.num_envs
    obs = env.reset(seed=seed)
    team = env if isinstance(env, TeamRows) else None
    agents = None if team is None else torch.as_tensor(team.agent_ids, device=device)
    states = torch.zeros(B, horizon, model.obs_dim, device=device)
    actions = torch.zeros(B, horizon, model.act_dim, device=device)
    rtg = torch.zeros(B, horizon, device=device)
    timesteps = torch.arange(horizon, device=device)
    mean, std = (torch.as_tensor(x, device=device) for x in (norm.state_mean, norm.state_std))
    # A copy: togo counts down in place, and the caller's targets must stay as they were.
    togo = np.zeros(B) if target_returns is None else np.array(target_returns, dtype=np.float64)
    returns, lengths = np.zeros(B), np.zeros(B, dtype=np.int64)
    alive = np.ones(B, dtype=bool)
    banded = model.cfg.attention == "banded"
    decoding = model.start_decoding(prompts) if banded and cache else None
    # One autocast context for the whole episode: leaving it drops the cache of bf16 weight
    # copies, and re-casting every step costs as much as the forward itself.
    with autocast(device, bf16):
        for t in range(horizon):
            states[:, t] = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
            rtg[:, t] = torch.as_tensor(togo / norm.return_scale, dtype=torch.float32)
            history = (states, actions, rtg, timesteps)
            pred = _predict(model, history, t, decoding, prompts, agents)  # (B, act)
            avail = None if team is None else torch.as_tensor(team.action_mask(), device=device)
            act = model.action_head.choose(pred, avail)  # (B, act)
            actions[:, t] = act
            obs, reward, terminated, truncated = env.step(act.cpu().numpy())
            returns += np.where(alive, reward, 0.0)
            lengths += alive
            togo -= reward
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
    return returns, lengths


def _predict(
    model: SequencePolicy,
    history: tuple[torch.Tensor, ...],
    t: int,
    decoding: DecodeState | None,
    prompts: torch.Tensor | None,
    agents: torch.Tensor | None,
) -> torch.Tensor:
    """The model's action output for step ``t`` of every episode; (B, act).

    ``history`` is (states, actions, rtg, timesteps) up to the horizon. The model sees the
    steps it needs: the new ones of a decoding cache, the whole history of a banded model, or
    the last K steps."""
    states, actions, rtg, timesteps = history
    B, K = states.shape[0], model.cfg.context_len
    # The last action is unknown (and unused).
    if decoding is not None:
        lo = max(0, t - 1)  # action t-1 and step t are new to the cache
    elif model.cfg.attention == "banded":
        lo = 0  # the whole history
    else:
        lo = max(0, t - K + 1)  # the K-window
    window = (
        states[:, lo : t + 1],
        actions[:, lo : t + 1],
        rtg[:, lo : t + 1] if model.cfg.condition_on_rtg else None,
        timesteps[lo : t + 1].expand(B, -1),
    )
    if decoding is not None:
        return model.decode_step(decoding, *window, agents)
    return model(*window, prompts, agents).actions[:, -1]


def evaluate_tasks(
    model: SequencePolicy,
    norm: Normalizer,
    bench: Benchmark,
    task_ids: list[int],
    episodes: int,
    seed: int,
    prompts: Mapping[int, torch.Tensor] | None = None,
    target_returns: Mapping[int, float] | None = None,
    bf16: bool = False,
) -> dict[int, Episodes]:
    """``episodes`` episodes of every task in one batch; returns each task's episodes.

    ``prompts[t]`` is task t's prompt (P, d); ``target_returns[t]`` its return-to-go target.
    """
    episode_task = np.repeat(np.asarray(task_ids), episodes)  # (E,)
    env = bench.make_batched_env(episode_task)
    agents = env.num_agents if isinstance(env, TeamRows) else 1
    row_task = np.repeat(episode_task, agents)  # (B,) = (E * agents,), agent-major per episode
    batch_prompts = None
    if prompts is not None:
        device = next(model.parameters()).device
        batch_prompts = torch.stack([prompts[int(t)] for t in row_task]).to(device)
    targets = (
        None if target_returns is None else np.array([target_returns[int(t)] for t in row_task])
    )
    returns, _ = rollout(model, norm, env, bench.horizon, seed, batch_prompts, targets, bf16)
    returns = returns.reshape(-1, agents)[:, 0]  # (E,) a team shares its reward
    won = env.won if isinstance(env, TeamRows) else None
    return {
        int(t): Episodes(
            returns[episode_task == t], None if won is None else won[episode_task == t]
        )
        for t in task_ids
    }

"""A pretrained policy and its per-task prompts as one MLflow pyfunc model.

The model's input is a table of observations, one row per step: ``task`` (which task's prompt
to use), optional ``episode`` (rows with the same id are consecutive steps of one episode,
from its first step; without it every row is the first step of its own episode),
``obs_0 .. obs_{n-1}``, and optional ``reward`` (the reward received after that step; only
return-conditioned models use it). The output has one row per input row: ``act_0 ..
act_{m-1}``, the action the policy takes given the episode so far, where earlier actions are
the policy's own (as when it acts in the environment).

A team policy with discrete actions (SMAX) takes one row per agent and step: also ``agent``
(its id; rows of one episode and agent are that agent's consecutive steps) and ``avail_0 ..
avail_{n-1}`` (1 where the action is available now); its output is one integer ``action`` per
row, always an available one.

Only the pipeline's tracking code imports this module; the library never does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel

from cmt.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_torch_save,
    check_tensors,
    safe_load,
)
from cmt.tracking import Promotion, promote

PROMPT_SET_KIND = "prompt_set"
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")


def save_prompt_set(
    path: str | Path,
    prompts: dict[int, torch.Tensor | None],
    target_returns: dict[int, float] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Every task's prompt (P, d) (``None`` for prompt-free models) in one small file."""
    tasks = sorted(int(t) for t in prompts)
    has_prompt = all(prompts[t] is not None for t in tasks)
    atomic_torch_save(
        {
            "format": FORMAT_VERSION,
            "kind": PROMPT_SET_KIND,
            "tasks": torch.tensor(tasks, dtype=torch.long),
            "prompts": torch.stack(
                [p.detach().cpu().float() for t in tasks if (p := prompts[t]) is not None]
            )
            if has_prompt
            else None,
            "target_returns": None
            if target_returns is None
            else torch.tensor([float(target_returns[t]) for t in tasks], dtype=torch.float64),
            "meta": json.dumps(meta or {}),
        },
        path,
    )


def load_prompt_set(
    path: str | Path,
) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """(tasks, prompts (T, P, d) or None, target returns (T,) or None, meta)."""
    obj = safe_load(path)
    if obj.get("kind") != PROMPT_SET_KIND:
        raise CheckpointError(f"{path}: not a prompt set (kind={obj.get('kind')!r})")
    tensors = {k: obj[k] for k in ("prompts", "target_returns") if obj.get(k) is not None}
    check_tensors(path, "prompt set", tensors)
    return obj["tasks"].tolist(), obj["prompts"], obj["target_returns"], json.loads(obj["meta"])


class ReplayEnv:
    """A :class:`~cmt.envs.registry.BatchedEnv` that replays given observations and records
    the actions it is sent, so that :func:`cmt.evaluation.rollout.rollout` (the same windowing,
    normalisation and return-to-go bookkeeping as in evaluation) computes the actions."""

    def __init__(self, obs: np.ndarray, lengths: np.ndarray, rewards: np.ndarray) -> None:
        self.obs, self.lengths, self.rewards = obs, lengths, rewards  # (E, T, o), (E,), (E, T)
        self.num_envs = obs.shape[0]
        self.actions = np.zeros((obs.shape[0], obs.shape[1], 0), dtype=np.float32)
        self.t = 0

    def reset(self, seed: int) -> np.ndarray:
        self.t = 0
        return self.obs[:, 0]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.actions.shape[-1] == 0:
            self.actions = np.zeros((*self.obs.shape[:2], actions.shape[-1]), dtype=np.float32)
        self.actions[:, self.t] = actions
        reward = self.rewards[:, self.t]
        self.t += 1
        done = self.t >= self.lengths
        nxt = self.obs[:, min(self.t, self.obs.shape[1] - 1)]
        return nxt, reward, np.zeros_like(done), done


class ReplayTeamEnv(ReplayEnv):
    """:class:`ReplayEnv` whose rows are agents of a team (:class:`~cmt.envs.team.TeamRows`):
    each row has its agent id and, at every step, its available actions."""

    def __init__(self, obs, lengths, rewards, agents: np.ndarray, avail: np.ndarray) -> None:
        super().__init__(obs, lengths, rewards)
        self.num_agents = int(agents.max()) + 1
        self.agent_ids = agents  # (E,)
        self.avail = avail  # (E, T, n) bool
        self.won = np.zeros(self.num_envs, dtype=bool)

    def action_mask(self) -> np.ndarray:
        return self.avail[:, min(self.t, self.avail.shape[1] - 1)]


class PolicyModel(PythonModel):
    """pyfunc wrapper: artifacts ``checkpoint`` (a policy) and ``prompts`` (a prompt set)."""

    def load_context(self, context: Any) -> None:
        from cmt.checkpoint import load_policy

        self.model, self.norm, self.meta = load_policy(context.artifacts["checkpoint"])
        tasks, prompts, targets, self.prompt_meta = load_prompt_set(context.artifacts["prompts"])
        self.row_of = {t: i for i, t in enumerate(tasks)}
        self.prompts, self.targets = prompts, targets

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        df = pd.DataFrame(model_input).reset_index(drop=True)
        m = self.model
        required = ["task", *[f"obs_{i}" for i in range(m.obs_dim)]]
        if m.num_agents > 1:
            required.append("agent")
        if m.discrete:
            required += [f"avail_{j}" for j in range(m.act_dim)]
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(f"input is missing columns {missing}")
        unknown = sorted(set(df["task"].astype(int)) - set(self.row_of))
        if unknown:
            raise ValueError(f"no prompt for tasks {unknown}; known tasks: {sorted(self.row_of)}")
        if m.num_agents > 1:
            agents = df["agent"].astype(np.int64)
            if agents.min() < 0 or agents.max() >= m.num_agents:
                raise ValueError(f"agent ids must be in [0, {m.num_agents}) for this team policy")
        actions = self.act(df)
        if m.discrete:
            return pd.DataFrame({"action": actions.argmax(-1).astype(np.int64)})
        return pd.DataFrame(actions, columns=[f"act_{j}" for j in range(m.act_dim)])

    def act(self, df: pd.DataFrame) -> np.ndarray:
        """Actions (N, act_dim) for the rows of ``df`` (one-hot for discrete actions), all
        episodes (and agents) in one batch."""
        from cmt.evaluation.rollout import rollout

        episode = (
            df["episode"].astype(np.int64).to_numpy()
            if "episode" in df.columns
            else np.arange(len(df))
        )
        agent = (
            df["agent"].astype(np.int64).to_numpy()
            if self.model.num_agents > 1
            else np.zeros(len(df), np.int64)
        )
        # One sequence per (episode, agent): the agent axis folds into the batch.
        keys, ep_of_row = np.unique(np.stack([episode, agent], 1), axis=0, return_inverse=True)
        ep_of_row = ep_of_row.reshape(-1)  # (N,) sequence of every row
        step_of_row = np.zeros(len(df), dtype=np.int64)
        counts = np.zeros(len(keys), dtype=np.int64)
        for i, e in enumerate(ep_of_row):  # position of each row inside its episode
            step_of_row[i] = counts[e]
            counts[e] += 1
        tasks = df["task"].astype(np.int64).to_numpy()
        ep_task = np.zeros(len(keys), dtype=np.int64)
        ep_task[ep_of_row] = tasks
        if np.any(ep_task[ep_of_row] != tasks):
            raise ValueError("all rows of an episode must have the same task")
        E, T = len(keys), int(counts.max())
        obs = np.zeros((E, T, self.model.obs_dim), dtype=np.float32)
        obs_cols = [f"obs_{i}" for i in range(self.model.obs_dim)]
        obs[ep_of_row, step_of_row] = df[obs_cols].to_numpy(dtype=np.float32)
        rewards = np.zeros((E, T))
        if "reward" in df.columns:
            rewards[ep_of_row, step_of_row] = df["reward"].fillna(0.0).to_numpy(dtype=np.float64)
        rows = [self.row_of[int(t)] for t in ep_task]
        prompts = None if self.prompts is None else self.prompts[rows]
        targets = None
        if self.model.cfg.condition_on_rtg:
            if self.targets is None:
                raise ValueError("return-conditioned model without target returns")
            targets = self.targets[rows].numpy()
        env = ReplayEnv(obs, counts, rewards)
        if self.model.discrete:
            avail = np.ones((E, T, self.model.act_dim), dtype=bool)
            avail_cols = [f"avail_{j}" for j in range(self.model.act_dim)]
            avail[ep_of_row, step_of_row] = df[avail_cols].to_numpy() != 0
            if not avail[ep_of_row, step_of_row].any(-1).all():
                raise ValueError("every row needs at least one available action")
            env = ReplayTeamEnv(obs, counts, rewards, keys[:, 1], avail)
        rollout(self.model, self.norm, env, T, seed=0, prompts=prompts, target_returns=targets)
        return env.actions[ep_of_row, step_of_row].astype(np.float64)


def signature(obs_dim: int, act_dim: int, discrete: bool = False, team: bool = False) -> Any:
    """Input and output schema of :class:`PolicyModel` (module docstring)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("long", "task"),
            ColSpec("long", "episode", required=False),
            *([ColSpec("long", "agent")] if team else []),
            *[ColSpec("double", f"obs_{i}") for i in range(obs_dim)],
            *[ColSpec("long", f"avail_{j}") for j in range(act_dim) if discrete],
            ColSpec("double", "reward", required=False),
        ]
    )
    if discrete:
        outputs = Schema([ColSpec("long", "action")])
    else:
        outputs = Schema([ColSpec("double", f"act_{j}") for j in range(act_dim)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    reqs = []
    for dist in ("mlflow", "torch", "numpy", "pandas", "pydantic", "pyyaml", "gymnasium"):
        try:
            # Local version labels such as "+cpu" are not on the package index.
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_policy_model(
    checkpoint: str | Path,
    prompt_set: str | Path,
    obs_dim: int,
    act_dim: int,
    input_example: pd.DataFrame,
    registered_model_name: str | None = None,
    name: str = "policy",
    discrete: bool = False,
    team: bool = False,
) -> Any:
    """Log (and optionally register) the policy as a pyfunc model in the active run.

    The model carries its own copy of the ``cmt`` package (``code_paths``), so it loads in a
    fresh process without this repository; the entry file is loaded as code, not unpickled.
    """
    import cmt

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "cmt"
        shutil.copytree(
            Path(cmt.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(ENTRY_FILE),
            artifacts={"checkpoint": str(checkpoint), "prompts": str(prompt_set)},
            code_paths=[str(code)],
            signature=signature(obs_dim, act_dim, discrete, team),
            input_example=input_example,
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
        )


def example_row(target: Any, task: int) -> dict[str, Any]:
    """One input row of the served policy: the first step of ``target``'s first
    episode, with its agent id and available actions for team policies."""
    i = int(target.ep_start[0])
    d = target.data
    row: dict[str, Any] = {"task": task}
    if target.agent_of is not None:
        row["agent"] = int(target.agent_of[i])
    row.update({f"obs_{j}": float(x) for j, x in enumerate(d.observations[i])})
    if d.avail_actions is not None:
        row.update({f"avail_{j}": int(x) for j, x in enumerate(d.avail_actions[i])})
    return row


def register_version(
    client: Any,
    name: str,
    policy: dict[str, Any],
    tags: dict[str, str],
    metric: str,
    value: float,
) -> tuple[str, Promotion]:
    """Log a policy as a pyfunc model, register it as a new version of ``name`` with
    ``tags``, and move the ``champion`` / ``challenger`` alias by ``metric`` = ``value``.

    ``policy`` holds ``checkpoint`` (path), ``model`` (the loaded policy), ``prompts`` and
    ``targets`` (per task, as evaluation used them), ``example`` (input rows) and ``meta``."""
    model = policy["model"]
    with tempfile.TemporaryDirectory() as tmp:
        prompt_set = Path(tmp) / "prompts.pt"
        save_prompt_set(prompt_set, policy["prompts"], policy["targets"], policy["meta"])
        info = log_policy_model(
            policy["checkpoint"],
            prompt_set,
            model.obs_dim,
            model.act_dim,
            policy["example"],
            registered_model_name=name,
            discrete=model.discrete,
            team=model.num_agents > 1,
        )
    version = str(info.registered_model_version)
    for key, tag in tags.items():
        client.set_model_version_tag(name, version, key, tag)
    return version, promote(client, name, version, metric, value)

"""The base of every config section, and the sections that the layers below the config use.

Kept apart from :mod:`cmt.config` so that each benchmark module can define its own ``data``
section (``cmt/benchmarks/``), the behaviour learners their budgets, and the models, the
method registry and checkpoints the model section, without importing the config that collects
them; the trainers their pretraining and prompt-tuning sections (docs/architecture.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""What a name that reaches a path or a command may hold: letters, digits, ``_``, ``-`` and
``.``, not first (no ``..``, no hidden files, no shell characters, no spaces)."""
NAME_RULE = "letters, digits, '_', '-' and '.', not starting with '.', at most 100 characters"
MAX_NAME_LEN = 100

SafeName = Annotated[
    str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=MAX_NAME_LEN)
]
"""A dataset id, experiment name or preset: safe in a path, a DVC stage and a shell word."""

MAX_SEED = 2**32
Seed = Annotated[int, Strict(), Field(ge=0, lt=MAX_SEED)]
"""A seed: an integer in [0, 2^32) (numpy's and torch's seeding range); booleans refused."""


def is_safe_name(value: str) -> bool:
    """Whether ``value`` is a :data:`SafeName`."""
    return len(value) <= MAX_NAME_LEN and re.fullmatch(NAME_PATTERN, value) is not None


class Section(BaseModel):
    """Base for all config sections: strict keys, finite numbers, immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SacConfig(Section):
    """SAC behaviour policies of the MuJoCo benchmarks (``cmt/behaviour/sac.py``): the meta-RL
    families (docs/mujoco.md) and the D4RL-style datasets (docs/d4rl.md).

    The defaults are the reduced budget of the half-cheetah families: about 20 minutes on two
    CPU cores (the presets set each benchmark's budget; the full GPU budgets are in the docs).
    """

    learner: Literal["sbx_sac", "sbx_tqc", "sb3_sac"] = Field(
        "sbx_sac",
        description="Who trains the behaviour policy: SBX's SAC or TQC (JAX, about 2.4x SB3's "
        "steps/s on one CPU core, perf/results/learners.json) or Stable-Baselines3's SAC.",
    )
    policies: Literal["committed", "train"] = Field(
        "committed",
        description="'committed': roll out the behaviour policies committed under behaviour/ "
        "(refused unless they were trained with these settings); 'train': train (or resume) "
        "the learner here.",
    )
    sac_steps: int = Field(
        150_000, ge=1, description="Environment steps of SAC training (one gradient step each)."
    )
    train_freq: int = Field(
        4,
        ge=1,
        description="Environment steps between learner updates, each update doing as many "
        "gradient steps (one per environment step either way; fewer, larger calls are faster).",
    )
    learning_starts: int = Field(
        5_000, ge=1, description="Uniform-random steps that fill the replay buffer before updates."
    )
    batch_size: int = Field(256, ge=1, description="SAC minibatch size.")
    net_arch: tuple[int, ...] = Field(
        (128, 128), min_length=1, description="Hidden widths of the SAC actor and critics."
    )
    learning_rate: float = Field(3e-4, gt=0.0, description="Adam learning rate of SAC.")
    gamma: float = Field(0.99, gt=0.0, le=1.0, description="SAC discount factor.")
    eval_every: int = Field(
        7_500,
        ge=1,
        description="Steps between policy snapshots (each evaluated on all training tasks); "
        "also the checkpoint interval and the granularity of the medium snapshot.",
    )
    eval_episodes: int = Field(
        1, ge=1, description="Evaluation episodes per training task at every snapshot."
    )
    medium_fraction: float = Field(
        1.0 / 3.0,
        gt=0.0,
        lt=1.0,
        description="Medium = the running-best snapshot whose mean return is closest to this "
        "fraction of the way from the random to the expert return (D4RL's medium is about 1/3 "
        "of expert).",
    )
    expert_snapshot: Literal["final", "best"] = Field(
        "final",
        description="Which snapshot is the expert: the final one, or the one with the best "
        "evaluation return (robust to a final dip when training is short).",
    )
    stochastic: bool = Field(
        True,
        description="Behaviour policies sample from SAC's squashed Gaussian (as D4RL) instead "
        "of taking its mean action; evaluation and references use the same mode.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device of SAC ('auto' picks CUDA when present)."
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="Torch CPU threads while SAC trains (0 = leave torch's setting): its small "
        "networks run fastest on one thread, leaving the other cores to MuJoCo.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SacConfig:
        if self.learning_starts >= self.sac_steps:
            raise ValueError(
                f"learning_starts={self.learning_starts} must be < sac_steps={self.sac_steps}"
            )
        for name in ("eval_every", "sac_steps"):
            if getattr(self, name) % self.train_freq:
                # Snapshots land where an update ends, so the buffer row is the step.
                raise ValueError(
                    f"{name}={getattr(self, name)} must be a multiple of train_freq="
                    f"{self.train_freq}"
                )
        if 2 * self.eval_every > self.sac_steps:
            # The medium snapshot must come before the final (expert) one.
            raise ValueError(
                f"sac_steps={self.sac_steps} must be at least 2 * eval_every={self.eval_every}"
            )
        return self


PPO_AFTER_TRAINING = (
    "medium_fraction",
    "recheck_episodes",
    "recheck_candidates",
    "heuristic_tier",
    "policies",
)
"""PPO fields about what is done with a finished run (which snapshots become tiers, whether
the heuristic is one, whether collect trains at all): out of the learners' fingerprints, so
changing them reuses the run."""

MAPPO_FIELDS_ADDED_LATER = {
    "actor_rnn": 0,
    "critic_state": "world",
    "train_win_bonus": 1.0,
    "actor_arch": "mlp",
    "critic_units": False,
    "overlap_rollout": False,
    "train_ally_loss": 0.0,
    "critic_extra_epochs": 0,
}
"""MAPPO settings added after runs were committed, with the value those runs had: left out of
the learners' fingerprints at that value, so the committed runs still match."""


class PpoConfig(Section):
    """Parameter-shared PPO behaviour policies of the SMAX benchmark (docs/smax.md), by one of
    two learners: ``mappo`` (``cmt/behaviour/mappo.py``: JAX end to end, a centralised critic
    on SMAX's world state) or ``maskable_ppo`` (``cmt/behaviour/ppo.py``: sb3-contrib, every
    ally of every SMAX episode one entry of SB3's vectorised environment). Both share one
    policy over all allies; their snapshots give the tiers.

    The presets set each map's budget; the full budgets are in docs/smax.md.
    """

    learner: Literal["mappo", "maskable_ppo"] = Field(
        "mappo",
        description="Behaviour learner: 'mappo' (JAX MAPPO, centralised critic) or "
        "'maskable_ppo' (sb3-contrib MaskablePPO, the learner of the first datasets).",
    )
    policies: Literal["committed", "train"] = Field(
        "train",
        description="'committed': roll out the tier policies committed under "
        "behaviour/smax_<map>/ (refused unless they were trained with this map, these "
        "settings and seed; the presets'); 'train': train (or resume) the learner here.",
    )
    total_steps: int = Field(
        1_000_000,
        ge=1,
        description="Agent steps of PPO training (SB3 timesteps: one per agent per SMAX step); "
        "rounded up to whole rollouts.",
    )
    n_envs: int = Field(16, ge=1, description="SMAX episodes stepped together while training.")
    n_steps: int = Field(
        64, ge=2, description="Steps per episode slot in each PPO rollout (SB3 n_steps)."
    )
    batch_size: int = Field(1024, ge=2, description="PPO minibatch size (agent steps).")
    n_epochs: int = Field(4, ge=1, description="PPO epochs over each rollout.")
    learning_rate: float = Field(5e-4, gt=0.0, description="Adam learning rate.")
    gamma: float = Field(0.99, gt=0.0, le=1.0, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0.0, description="PPO clipping range.")
    ent_coef: float = Field(0.01, ge=0.0, description="Entropy bonus coefficient.")
    net_arch: tuple[int, ...] = Field(
        (64, 64), min_length=1, description="Hidden widths of the policy and value networks."
    )
    snapshot_every: int = Field(
        100_000,
        ge=1,
        description="Agent steps between policy snapshots (each evaluated for win rate); also "
        "the checkpoint interval and the granularity of the medium and poor tiers.",
    )
    eval_episodes: int = Field(
        64, ge=1, description="SMAX episodes evaluating each snapshot (win rate, mean return)."
    )
    medium_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Medium = the snapshot before Good whose win rate is closest to this "
        "fraction of Good's (by return when Good never wins).",
    )
    recheck_episodes: int = Field(
        0,
        ge=0,
        description="Episodes on which the tier candidates are evaluated again before the "
        "choice (0: choose from the snapshot evaluations alone). The recheck_candidates best "
        "snapshots are rechecked for Good, then the recheck_candidates nearest to "
        "medium_fraction of Good's rechecked win rate for Medium; the numbers are recorded "
        "with the snapshots.",
    )
    recheck_candidates: int = Field(
        4, ge=1, description="Snapshots rechecked for each of Good and Medium."
    )
    heuristic_tier: bool = Field(
        True, description="Also record SMAX's scripted heuristic as a fourth tier."
    )
    critic_arch: tuple[int, ...] = Field(
        (128, 128),
        min_length=1,
        description="mappo: hidden widths of the centralised critic (on SMAX's world state); "
        "net_arch is the actor's.",
    )
    critic_state: Literal["world", "agent"] = Field(
        "world",
        description="mappo: the critic's input: 'world' (SMAX's world state: one team value) "
        "or 'agent' (MAPPO's agent-specific state: the world state, the ally's own "
        "observation and its one-hot; one value per ally).",
    )
    actor_arch: Literal["mlp", "units", "unit_targets"] = Field(
        "mlp",
        description="mappo: the actor: 'mlp' (over the flat observation), 'units' (every "
        "unit embedded by a layer shared across its side, pooled; an attack's logit from the "
        "pooled context and its target's embedding; net_arch: the context layers, the "
        "first width also the embeddings) or 'unit_targets' ('units', each unit's block also "
        "saying who shot at whom on the last step: how many allies shot at each enemy, "
        "which enemies shot at this ally and at each other ally).",
    )
    critic_units: bool = Field(
        False,
        description="mappo: the world-state critic reads SMAX's world state unit by unit "
        "(one embedding layer per side, mean- and max-pooled, then critic_arch), as the "
        "unit-wise actor reads the observation.",
    )
    actor_rnn: int = Field(
        0,
        ge=0,
        description="mappo: width of a GRU after the actor's first hidden layer, its state "
        "carried through each episode (0: a feed-forward actor). The tier policies carry it "
        "too.",
    )
    train_win_bonus: float = Field(
        1.0,
        ge=0.0,
        description="mappo: the bonus for a won episode in the reward the learner trains on "
        "(SMAX's own is 1). Only training sees it: snapshots, tiers and datasets keep SMAX's "
        "reward.",
    )
    train_ally_loss: float = Field(
        0.0,
        ge=0.0,
        description="mappo: weight of the allies' health lost in a step (as a fraction of "
        "their total, as SMAX counts the enemies' for its reward) subtracted from the reward "
        "the learner trains on (SMAC's reward_negative_scale, 0.5 there). Only training "
        "sees it: snapshots, tiers and datasets keep SMAX's reward.",
    )
    overlap_rollout: bool = Field(
        False,
        description="mappo: collect each rollout in a second thread while the learner updates "
        "on the one before, so the two cores work at once (1.1-1.5x the agent steps/s on 2 "
        "cores, by map); the actor that collects is then one update older than the "
        "learner's, which learns from it as decoupled PPO does (docs/smax.md). Between "
        "snapshots only: checkpoints and resumes stay exact. Feed-forward actors only.",
    )
    critic_extra_epochs: int = Field(
        0,
        ge=0,
        description="mappo: epochs of the critic alone on each rollout after the n_epochs "
        "joint ones (its value loss only), so that fewer actor epochs, the costly part of an "
        "update with the unit-wise actor, need not mean a worse critic.",
    )
    vf_coef: float = Field(0.5, ge=0.0, description="mappo: weight of the value loss.")
    max_grad_norm: float = Field(
        0.5, gt=0.0, description="mappo: global gradient-norm clip of each network."
    )
    value_norm: bool = Field(
        True, description="mappo: the critic predicts normalised targets (MAPPO's ValueNorm)."
    )
    value_clip: bool = Field(
        True, description="mappo: clip the value loss around the rollout's values (clip_range)."
    )
    anneal_lr: bool = Field(
        True, description="mappo: anneal the learning rate linearly to 0 over training."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu",
        description="maskable_ppo: torch device (its small networks run fastest on the CPU); "
        "mappo runs on jax's CPU backend.",
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="maskable_ppo: torch CPU threads while PPO trains (0 = leave torch's setting).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PpoConfig:
        if self.actor_rnn and self.learner != "mappo":
            raise ValueError("actor_rnn: only the mappo learner has a recurrent actor")
        if self.actor_arch != "mlp" and (self.learner != "mappo" or self.actor_rnn):
            raise ValueError(
                f"actor_arch: {self.actor_arch!r} is a feed-forward actor of the mappo learner"
            )
        if self.critic_units and (self.learner != "mappo" or self.critic_state != "world"):
            raise ValueError("critic_units: a reading of the mappo learner's world-state critic")
        if self.critic_state != "world" and self.learner != "mappo":
            raise ValueError("critic_state: only the mappo learner has a centralised critic")
        if self.overlap_rollout and (self.learner != "mappo" or self.actor_rnn):
            raise ValueError("overlap_rollout: a mappo learner with a feed-forward actor")
        if self.critic_extra_epochs and self.learner != "mappo":
            raise ValueError("critic_extra_epochs: only the mappo learner has a critic")
        if (self.train_win_bonus != 1.0 or self.train_ally_loss) and self.learner != "mappo":
            raise ValueError(
                "train_win_bonus, train_ally_loss: only the mappo learner reshapes its reward"
            )
        if 2 * self.snapshot_every > self.total_steps:
            # Poor (the first snapshot), Medium and Good must be distinct snapshots.
            raise ValueError(
                f"total_steps={self.total_steps} must be at least 2 * "
                f"snapshot_every={self.snapshot_every}"
            )
        return self


PromptKind = Literal["none", "segment", "encoder"]


BACKBONE_FIELDS = frozenset({"prompt", "condition_on_rtg", "dynamics_heads"})
"""Model fields the method registry fixes per backbone (:class:`ModelConfig`)."""


class ModelParams(Section):
    """``params.yaml``'s ``model`` section: the sizes every backbone shares (docs/method.md).
    What makes a backbone CMT, Prompt-DT, DT or BC is the method registry's
    (``cmt/methods.py``), not a setting here."""

    n_layer: int = Field(3, ge=1, description="Transformer blocks in the backbone.")
    n_head: int = Field(1, ge=1, description="Attention heads per block.")
    d_model: int = Field(128, ge=8, description="Embedding width d of tokens and prompt vectors.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout probability.")
    context_len: int = Field(20, ge=1, description="K: timesteps of history the policy sees.")
    max_timestep: int = Field(1000, ge=1, description="Size of the timestep embedding table.")
    prompt_len: int = Field(5, ge=1, description="m: prompt vectors produced by the encoder.")
    segment_len: int = Field(5, ge=1, description="K*: steps of the raw segment prompt.")
    encoder_layers: int = Field(1, ge=0, description="Set-transformer layers in the encoder.")
    context_size: int = Field(32, ge=1, description="C: transitions fed to the context encoder.")
    attention: Literal["window", "banded"] = Field(
        "window",
        description="'window': train on K-step segments with a causal mask and recompute the "
        "last K steps at every evaluation step; 'banded': each token sees the prompt and the "
        "tokens of its own and the K-1 previous steps, trained on train_len-step segments, "
        "so evaluation decodes incrementally with a rolling key/value cache, exactly "
        "(docs/method.md).",
    )
    train_len: int | None = Field(
        None,
        ge=1,
        description="L: timesteps per training segment under 'banded' attention (at least "
        "context_len; null: context_len, chosen on validation tasks, docs/method.md); "
        "'window' trains on context_len-step segments.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_backbone_fields(cls, raw: Any) -> Any:
        # params.yaml of before the registry owned them: say where they went.
        if cls is ModelParams and isinstance(raw, dict):
            moved = sorted(set(raw) & BACKBONE_FIELDS)
            if moved:
                raise ValueError(
                    f"{moved} are fixed per backbone by cmt/methods.py now: remove them"
                )
        return raw

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelParams:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.attention == "banded" and self.sample_len < self.context_len:
            raise ValueError(
                f"train_len={self.train_len} is shorter than context_len={self.context_len}"
            )
        return self

    @property
    def sample_len(self) -> int:
        """Timesteps of a training segment: train_len (banded, if set) or context_len."""
        if self.attention == "banded" and self.train_len is not None:
            return self.train_len
        return self.context_len


class ModelConfig(ModelParams):
    """Everything the sequence model is built from: the shared sizes and what its backbone
    fixes (``cmt.methods.backbone_config``); saved in every checkpoint."""

    prompt: PromptKind = Field(
        "encoder",
        description="Prompt source: 'encoder' = CMT (E(context)), 'segment' = Prompt-DT "
        "(raw trajectory segment), 'none' = no prompt (multi-task DT).",
    )
    condition_on_rtg: bool = Field(
        False, description="Add a return-to-go token per step (Decision Transformer)."
    )
    dynamics_heads: bool = Field(
        True, description="Predict next state and reward from action tokens (self-supervised)."
    )


class PretrainConfig(Section):
    """Self-supervised pretraining on all training tasks (docs/method.md)."""

    steps: int = Field(600, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Segments per batch.")
    lr: float = Field(6e-4, gt=0.0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decay on matrices only.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps before cosine decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    w_dyn: float = Field(
        0.0,
        ge=0.0,
        description="Weight of next-state + reward prediction (per setting, chosen on "
        "validation data: 0 on the point robot, SMAX and D4RL-style data, 0.5 in the "
        "MuJoCo meta-RL presets).",
    )
    w_con: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the InfoNCE context loss (per setting, chosen on validation "
        "data: 0 on the point robot and D4RL-style data, 0.1 on SMAX and in the MuJoCo "
        "meta-RL presets).",
    )
    temperature: float = Field(0.1, gt=0.0, description="InfoNCE temperature.")
    context_source: Literal["same_trajectory", "same_task"] = Field(
        "same_trajectory",
        description="Where a segment's context comes from: its own trajectory's steps outside "
        "the segment when there are at least context_size of them, else another trajectory "
        "of the same task and behaviour level ('same_trajectory': the prompt encodes task and "
        "behaviour); always another trajectory of the task and level ('same_task').",
    )
    own_context_min: int | None = Field(
        None,
        ge=1,
        description="'same_trajectory': own-trajectory steps outside the segment needed to "
        "take the context from them (null: half of model.context_size); fewer, and it comes from "
        "another trajectory of the task and level.",
    )
    demo_fraction: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Prompt-DT: its training prompts are cut from each task's highest-return "
        "episodes, this share of them (its expert demonstrations, as published).",
    )
    checkpoint_every: int = Field(200, ge=1, description="Steps between resumable checkpoints.")
    log_every: int = Field(20, ge=1, description="Steps between logged metrics.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA if any.")
    bf16: bool = Field(
        True,
        description="bfloat16 autocast for matmuls (CUDA, and CPUs with native bf16; other "
        "CPUs run fp32, since emulated bf16 is far slower).",
    )
    compile: bool = Field(False, description="torch.compile the model (helps on GPU only).")
    cuda_graph: bool = Field(
        False,
        description="Capture the whole training step (forward, backward, clipping, AdamW) as "
        "one CUDA graph and replay it (CUDA only; not with compile or distributed).",
    )
    distributed: bool = Field(
        False,
        description="DistributedDataParallel over the processes torchrun starts (gloo on CPU, "
        "NCCL on CUDA); batch_size is the global batch, split evenly (docs/scale.md).",
    )


class PromptTuneConfig(Section):
    """Per-task prompt tuning with the backbone and encoder frozen (docs/method.md)."""

    steps: int = Field(200, ge=1, description="Max Adam steps on the prompt.")
    batch_size: int = Field(32, ge=1, description="Segments per batch.")
    lr: float = Field(1e-2, gt=0.0, description="Adam learning rate of the prompt.")
    objective: Literal["filtered_bc", "return_weighted"] = Field(
        "filtered_bc", description="Action loss on target data, or return-weighted over all data."
    )
    beta: float = Field(3.0, ge=0.0, description="Temperature of return weights (return_weighted).")
    val_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="Share of target episodes held out for early stopping."
    )
    patience: int = Field(4, ge=1, description="Validation checks without improvement to stop.")
    eval_every: int = Field(20, ge=1, description="Steps between validation checks.")
    anchor: float = Field(
        0.0,
        ge=0.0,
        description="Pull toward the initial prompt p0: the loss gains anchor * ||p - p0||² / "
        "||p0||², so that fitting a few demonstrations cannot move the prompt anywhere the "
        "backbone never saw (0, the default chosen on validation goals: no pull).",
    )

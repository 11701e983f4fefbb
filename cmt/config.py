"""Typed configuration: every section of ``params.yaml`` is a pydantic model.

Unknown keys, wrong types and out-of-range values fail at load time with the dotted path
of the bad key, before any work starts. Every field carries a description so that the
Prefect parameter form, ``--help`` and the docs all come from this one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """Base for all config sections: strict keys, immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


FamilyName = Literal["point_robot", "cheetah_vel", "cheetah_dir", "ant_dir"]


class SacConfig(Section):
    """SAC data generation of the MuJoCo families (``cmt/envs/sac_data.py``, docs/mujoco.md).

    The defaults are the reduced budget of the half-cheetah families: about 20 minutes on two
    CPU cores (the ant preset and the full GPU budgets are in ``docs/mujoco.md``). Ignored by
    the point robot, whose behaviour policies are scripted.
    """

    sac_steps: int = Field(
        150_000, ge=1, description="Environment steps of SAC training (one gradient step each)."
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
        description="Medium = first snapshot whose mean return reaches this fraction of the way "
        "from the random to the final (expert) return (D4RL's medium is about 1/3 of expert).",
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
        if 2 * self.eval_every > self.sac_steps:
            # The medium snapshot must come before the final (expert) one.
            raise ValueError(
                f"sac_steps={self.sac_steps} must be at least 2 * eval_every={self.eval_every}"
            )
        return self


class DataConfig(Section):
    """Which task family, which tasks are held out, and how the offline data is generated."""

    family: FamilyName = Field(
        "point_robot",
        description="Task family id from the environment registry (presets/<family>.yaml "
        "holds the matching settings of each).",
    )
    num_tasks: int = Field(40, ge=2, description="Number of tasks (goals) in the family.")
    test_tasks: tuple[int, ...] = Field(
        (2, 7, 15, 23, 26),
        min_length=1,
        description="Task ids held out from pretraining and used only for evaluation.",
    )
    test_tasks_in_training: bool = Field(
        False,
        description="Pretrain on the test tasks too. Only for benchmarks defined that way: "
        "cheetah-dir has two tasks and tests on both (its prompts still come from "
        "held-out demonstrations).",
    )
    horizon: int = Field(50, ge=2, description="Episode length (steps) before truncation.")
    episodes_per_level: int = Field(
        10,
        ge=1,
        description="Episodes per behaviour level and training task (point robot: random, "
        "medium, expert; MuJoCo: medium and expert, plus the medium-replay episodes).",
    )
    demo_episodes: int = Field(
        5, ge=2, description="Expert demonstration episodes per test task (few-shot target data)."
    )
    medium_noise: float = Field(
        3.0,
        ge=0.0,
        description="Point robot: Gaussian action noise std of the medium behaviour policy "
        "(3.0 scores about 50 normalised).",
    )
    expert_noise: float = Field(
        0.05,
        ge=0.0,
        description="Point robot: Gaussian action noise std of the expert behaviour policy.",
    )
    reference_episodes: int = Field(
        20, ge=1, description="Episodes used to measure each task's random and expert return."
    )
    seed: int = Field(0, ge=0, description="Seed of data generation (independent of train seeds).")
    sac: SacConfig = Field(
        default_factory=SacConfig, description="SAC behaviour policies of the MuJoCo families."
    )

    @model_validator(mode="after")
    def _test_tasks_in_range(self) -> DataConfig:
        bad = [t for t in self.test_tasks if not 0 <= t < self.num_tasks]
        if bad:
            raise ValueError(f"test_tasks {bad} are outside [0, num_tasks={self.num_tasks})")
        if len(set(self.test_tasks)) != len(self.test_tasks):
            raise ValueError("test_tasks contains duplicates")
        if len(self.test_tasks) >= self.num_tasks and not self.test_tasks_in_training:
            raise ValueError(
                "at least one task must remain for pretraining "
                "(or set test_tasks_in_training for a benchmark that trains on its test tasks)"
            )
        return self

    @property
    def train_tasks(self) -> tuple[int, ...]:
        held_out = set() if self.test_tasks_in_training else set(self.test_tasks)
        return tuple(t for t in range(self.num_tasks) if t not in held_out)


PromptKind = Literal["none", "segment", "encoder"]


class ModelConfig(Section):
    """Sequence model: GPT backbone, prompt slot, context encoder and heads (DESIGN 1.1)."""

    n_layer: int = Field(3, ge=1, description="Transformer blocks in the backbone.")
    n_head: int = Field(1, ge=1, description="Attention heads per block.")
    d_model: int = Field(128, ge=8, description="Embedding width d of tokens and prompt vectors.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout probability.")
    context_len: int = Field(20, ge=1, description="K: timesteps of history the policy sees.")
    max_timestep: int = Field(1000, ge=1, description="Size of the timestep embedding table.")
    condition_on_rtg: bool = Field(
        False, description="Add a return-to-go token per step (Decision Transformer)."
    )
    prompt: PromptKind = Field(
        "encoder",
        description="Prompt source: 'encoder' = CMT (E(context)), 'segment' = Prompt-DT "
        "(raw trajectory segment), 'none' = no prompt (multi-task DT).",
    )
    prompt_len: int = Field(5, ge=1, description="m: prompt vectors produced by the encoder.")
    segment_len: int = Field(5, ge=1, description="K*: steps of the raw segment prompt.")
    encoder_layers: int = Field(1, ge=0, description="Set-transformer layers in the encoder.")
    context_size: int = Field(32, ge=1, description="C: transitions fed to the context encoder.")
    dynamics_heads: bool = Field(
        True, description="Predict next state and reward from action tokens (self-supervised)."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        return self


class PretrainConfig(Section):
    """Self-supervised pretraining on all training tasks (DESIGN 1.2)."""

    steps: int = Field(600, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Segments per batch.")
    lr: float = Field(6e-4, gt=0.0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decay on matrices only.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps before cosine decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    w_dyn: float = Field(0.5, ge=0.0, description="Weight of next-state + reward prediction.")
    w_con: float = Field(0.1, ge=0.0, description="Weight of the InfoNCE context loss.")
    temperature: float = Field(0.1, gt=0.0, description="InfoNCE temperature.")
    context_source: Literal["same_trajectory", "same_task"] = Field(
        "same_trajectory",
        description="Where a segment's context comes from: a disjoint window of the same "
        "trajectory (prompt encodes task and behaviour) or another trajectory of the same task.",
    )
    checkpoint_every: int = Field(200, ge=1, description="Steps between resumable checkpoints.")
    log_every: int = Field(20, ge=1, description="Steps between logged metrics.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA if any.")
    bf16: bool = Field(True, description="bfloat16 autocast for matmuls (CPU and CUDA).")
    compile: bool = Field(False, description="torch.compile the model (helps on GPU only).")


class PromptTuneConfig(Section):
    """Per-task prompt tuning with the backbone and encoder frozen (DESIGN 1.3)."""

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


class EvaluateConfig(Section):
    """Batched online evaluation on the held-out tasks."""

    episodes: int = Field(10, ge=1, description="Episodes per task, rolled out together.")
    seed: int = Field(10_000, ge=0, description="Evaluation seed (separate from training seeds).")
    bf16: bool = Field(
        True,
        description="bfloat16 autocast in rollouts: 1.7x the steps/s on a 2-core CPU "
        "(benchmarks/throughput.py); off gives bit-exact fp32 actions.",
    )
    target_return: Literal["demo", "max_train"] = Field(
        "demo",
        description="Return-to-go target of return-conditioned models: mean demo return of "
        "the task, or the best training return.",
    )


class CompareConfig(Section):
    """The method comparison on the held-out tasks (issue 2, item 8)."""

    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1, description="Training seeds.")
    methods: tuple[Literal["mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"], ...] = Field(
        ("mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"),
        min_length=1,
        description="Methods to compare.",
    )


class TrackingConfig(Section):
    """MLflow tracking and model registry (used by the pipeline entry points only)."""

    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking URI: a SQLite store (relative paths are relative to the "
        "working directory, the repository root under DVC) or any tracking server "
        "(http://host:5000). The MLFLOW_TRACKING_URI environment variable overrides it.",
    )
    artifact_location: str = Field(
        "mlruns",
        description="Artifact root of a newly created experiment: a local directory (made "
        "absolute) or any artifact URI (s3://..., mlflow-artifacts:/...).",
    )
    experiment: str = Field("cmt", min_length=1, description="MLflow experiment name.")
    registered_model: str = Field(
        "cmt-{family}",
        min_length=1,
        description="Registered model name; '{family}' is replaced by data.family.",
    )
    registered_method: Literal["mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"] = Field(
        "cmt_tuned",
        description="Method whose policy (backbone plus its prompts) is registered; it must be "
        "one of compare.methods.",
    )
    primary_metric: Literal["score_mean", "return_mean"] = Field(
        "score_mean",
        description="Metric (higher is better) that decides whether a new model version "
        "takes the 'champion' alias; otherwise it becomes 'challenger'.",
    )

    def model_name(self, family: str) -> str:
        """The registered model name for a task family."""
        return self.registered_model.format(family=family)


class OrchestrationConfig(Section):
    """Prefect task runner of the stage flows' mapped tasks (prompt tuning, evaluation)."""

    task_runner: Literal["threads", "dask"] = Field(
        "threads",
        description="'threads': a thread pool in the stage process; 'dask': a Dask cluster "
        "through prefect-dask (a local one unless dask_address is set).",
    )
    max_workers: int = Field(2, ge=1, description="Threads of the thread-pool runner.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of a local Dask cluster.")
    dask_threads_per_worker: int = Field(
        1, ge=1, description="Threads per local Dask worker (torch uses its own threads)."
    )
    dask_address: str | None = Field(
        None,
        description="Address of an existing Dask scheduler (tcp://host:8786); "
        "null starts a local cluster.",
    )


class Params(Section):
    """All of ``params.yaml``."""

    data: DataConfig = Field(default_factory=DataConfig, description="Data generation.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Sequence model.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Pretraining.")
    prompt_tune: PromptTuneConfig = Field(
        default_factory=PromptTuneConfig, description="Prompt tuning."
    )
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation.")
    compare: CompareConfig = Field(default_factory=CompareConfig, description="Comparison.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="MLflow tracking and registry."
    )
    orchestration: OrchestrationConfig = Field(
        default_factory=OrchestrationConfig, description="Prefect task runner."
    )


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and each bad key."""


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        # Section-level checks name their keys in the message; echoing the section is noise.
        suffix = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {e['msg']}{suffix}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "<params>") -> Params:
    """Validate a raw mapping into :class:`Params`, raising :class:`ConfigError` on any problem."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_params(
    path: str | Path, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> Params:
    """Load ``params.yaml``, then apply a preset (``presets/<preset>.yaml``), then dotted-key
    overrides such as ``{"pretrain.lr": 1e-3}``."""
    path = Path(path)
    raw = _read_mapping(path)
    for dotted, value in {**(load_preset(preset) if preset else {}), **(overrides or {})}.items():
        set_dotted(raw, dotted, value)
    return parse_params(raw, str(path))


PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
"""``presets/<name>.yaml``: the settings that switch the benchmark (one per task family)."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as dotted-key overrides (``{"data.family": "cheetah_vel", ...}``).

    Every preset sets the same keys, so applying one fully replaces another."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; known: {preset_names()} (in {PRESETS_DIR})")
    return flatten(_read_mapping(path))


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``dotted == "a.b"``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value

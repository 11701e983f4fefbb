"""Typed configuration: every section of ``params.yaml`` is a pydantic model.

Unknown keys, wrong types and out-of-range values fail at load time with the dotted path
of the bad key, before any work starts. Every field carries a description so that the
Prefect parameter form, ``--help`` and the docs all come from this one place.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from cmt.benchmarks import DATA_SECTIONS, DEFAULT_BENCHMARK, DataConfig
from cmt.methods import BackboneName, MethodName, backbones_for
from cmt.sections import (
    NAME_RULE,
    ModelConfig,
    ModelParams,
    PretrainConfig,
    PromptKind,
    PromptTuneConfig,
    SacConfig,
    SafeName,
    Section,
    Seed,
    is_safe_name,
)

__all__ = [
    "BackboneName",
    "ConfigError",
    "MethodName",
    "ModelConfig",
    "ModelParams",
    "PretrainConfig",
    "PromptKind",
    "PromptTuneConfig",
    "Params",
    "SacConfig",
    "SafeName",
    "Section",
    "Seed",
    "load_params",
    "parse_params",
]


class EvaluateConfig(Section):
    """Batched online evaluation on the held-out tasks."""

    episodes: int = Field(10, ge=1, description="Episodes per task, rolled out together.")
    seed: Seed = Field(10_000, description="Evaluation seed (separate from training seeds).")
    bf16: bool = Field(
        True,
        description="bfloat16 autocast in rollouts: 1.7x the steps/s on a 2-core CPU "
        "(perf/throughput.py); off gives bit-exact fp32 actions.",
    )
    target_return: Literal["demo", "max_train", "dt_paper"] = Field(
        "demo",
        description="Return-to-go target of return-conditioned models: mean demo return of "
        "the task (meta-RL), the best training return, or the Decision Transformer paper's "
        "target for the environment (D4RL); each benchmark accepts some of them.",
    )


class CompareConfig(Section):
    """The method comparison: seeds, methods, and the backbones they need."""

    seeds: tuple[Seed, ...] = Field(
        (0, 1, 2), min_length=1, description="Training seeds: integers in [0, 2^32)."
    )
    methods: tuple[MethodName, ...] = Field(
        ("mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"),
        min_length=1,
        description="Methods to compare (each benchmark accepts its own: meta-RL mtdt, "
        "prompt_dt, cmt_zero_shot, cmt_tuned; D4RL dt, bc, filtered_bc, cmt_zero_shot, "
        "cmt_tuned).",
    )
    backbones: tuple[BackboneName, ...] = Field(
        ("dt", "prompt_dt", "cmt"),
        min_length=1,
        description="Backbones the pretrain stage trains (one DVC stage per backbone and "
        "seed): exactly those the methods need.",
    )

    @field_validator("seeds", "methods", "backbones")
    @classmethod
    def _distinct(cls, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(values)) != len(values):
            raise ValueError("contains duplicates")
        return values


MODEL_NAME_PATTERN = r"^[A-Za-z0-9_{}-][A-Za-z0-9_.{}-]*$"
"""A registered model name template: a safe name, with '{name}' for the dataset id."""


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
        "cmt-{name}",
        pattern=MODEL_NAME_PATTERN,
        max_length=100,
        description="Registered model name; '{name}' is replaced by data.name (the dataset "
        f"id); otherwise {NAME_RULE}.",
    )
    registered_method: MethodName = Field(
        "cmt_tuned",
        description="Method whose policy (backbone plus its prompts) is registered; it must be "
        "one of compare.methods.",
    )
    primary_metric: Literal["score_mean", "return_mean"] = Field(
        "score_mean",
        description="Metric (higher is better) that decides whether a new model version "
        "takes the 'champion' alias; otherwise it becomes 'challenger'.",
    )

    @field_validator("registered_model")
    @classmethod
    def _only_name_field(cls, template: str) -> str:
        # str.format would also resolve "{name.__class__}" or "{0}": allow '{name}' only.
        if not is_safe_name(template.replace("{name}", "x")):
            raise ValueError(f"only the field '{{name}}' may appear, otherwise {NAME_RULE}")
        return template

    def model_name(self, name: str) -> str:
        """The registered model name of dataset ``name``."""
        return self.registered_model.format(name=name)


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

    data: DataConfig = Field(
        default_factory=DATA_SECTIONS[0],
        description="The benchmark and its data (data.benchmark picks the section's fields).",
    )
    model: ModelParams = Field(
        default_factory=ModelParams,
        description="Sizes of the sequence model, shared by every backbone (what a backbone "
        "is comes from cmt/methods.py).",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _default_benchmark(cls, raw: Any) -> Any:
        # The embedded default needs no `benchmark` key; the others name theirs.
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            raw = {**raw, "data": {"benchmark": DEFAULT_BENCHMARK, **raw["data"]}}
        return raw

    @model_validator(mode="after")
    def _fits_the_benchmark(self) -> Params:
        data = self.data
        wrong = [m for m in self.compare.methods if m not in data.methods]
        if wrong:
            raise ValueError(
                f"compare.methods {wrong} are not methods of benchmark {data.benchmark!r} "
                f"(its methods: {list(data.methods)})"
            )
        if self.tracking.registered_method not in self.compare.methods:
            raise ValueError(
                f"tracking.registered_method {self.tracking.registered_method!r} is not one of "
                f"compare.methods {list(self.compare.methods)}"
            )
        if self.evaluate.target_return not in data.target_returns:
            raise ValueError(
                f"evaluate.target_return {self.evaluate.target_return!r} is not defined for "
                f"benchmark {data.benchmark!r} (use one of {list(data.target_returns)})"
            )
        needed = backbones_for(self.compare.methods)
        if sorted(self.compare.backbones) != sorted(needed):
            raise ValueError(
                f"compare.backbones {list(self.compare.backbones)} must be exactly the "
                f"backbones of compare.methods: {needed}"
            )
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message names each bad key and where it was set."""


Origins = dict[str, str]
"""Where config values came from: dotted key (or section) -> ``--set``, ``preset <file>``...
Keys not in it come from the params file itself."""


def _origin(path: str, origins: Origins, source: str) -> str:
    """Where the value at dotted ``path`` was set: its longest prefix in ``origins`` (else
    ``source``), and for a section also where each of its keys was set."""
    parts = path.split(".")
    own = source
    for i in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:i])) in origins:
            own = origins[prefix]
            break
    inner = [where for key, where in origins.items() if key.startswith(path + ".")]
    return ", ".join(dict.fromkeys([own, *inner]))


def _format_errors(source: str, err: ValidationError, origins: Origins | None = None) -> str:
    lines = ["invalid configuration"]
    tags = {t for section in DATA_SECTIONS for t in _benchmark_tags(section)}
    errors = err.errors()
    items = {e["loc"][:-1] for e in errors if len(e["loc"]) > 1}
    for e in errors:
        if e["type"] == "too_short" and e["loc"] in items:
            continue  # pydantic counts only the valid items; the bad item is reported
        loc = list(e["loc"])
        if len(loc) > 1 and loc[0] == "data" and loc[1] in tags:
            del loc[1]  # the union member pydantic tried: the path of the key is data.<key>
        path = ".".join(str(p) for p in loc)
        got = e.get("input")
        # Section-level checks name their keys in the message; echoing the section is noise.
        suffix = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch":  # only names have patterns
            msg = f"not a safe name: {NAME_RULE}"
        if e["type"] == "int_type" and isinstance(got, bool):
            msg = "expected an integer, got a boolean"
        where = _origin(path, origins or {}, source) if path else ""
        # Cross-section checks (no path) start their message with the keys they name.
        lines.append(f"  {path}: {msg}{suffix} [{where}]" if path else f"  {msg}")
    return "\n".join(lines)


def _benchmark_tags(section: type[Section]) -> tuple[str, ...]:
    return get_args(section.model_fields["benchmark"].annotation)


def parse_params(
    raw: dict[str, Any], source: str = "<params>", origins: Origins | None = None
) -> Params:
    """Validate a raw mapping into :class:`Params`, raising :class:`ConfigError` on any problem.

    Each bad key is named with where it was set: ``origins`` (see :data:`Origins`), else
    ``source``."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err, origins)) from None


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
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    overrides_origin: str = "--set",
) -> Params:
    """Load ``params.yaml``, then apply a preset (``presets/<preset>.yaml``), then dotted-key
    overrides such as ``{"pretrain.lr": 1e-3}``; an error names the layer each bad value came
    from (the file, the preset, or ``overrides_origin``)."""
    path = Path(path)
    origins: Origins = {}
    raw = _read_mapping(path)
    if preset:
        raw = apply_preset(raw, preset, origins)
    set_overrides(raw, overrides or {}, overrides_origin, origins)
    return parse_params(raw, str(path), origins)


def set_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any], origin: str, origins: Origins
) -> None:
    """Set dotted-key ``overrides`` in ``raw``, recording ``origin`` for each in ``origins``."""
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
        origins[dotted] = f"{origin} {dotted}"


PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
"""``presets/<name>.yaml``: the settings that switch the benchmark (one per task family)."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if is_safe_name(p.stem))


def preset_path(name: str) -> Path:
    """``presets/<name>.yaml`` of a known preset; :class:`ConfigError` for any other name."""
    # Checked against the list, not joined blindly: "../params" must not reach another file.
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known: {preset_names()} (in {PRESETS_DIR})")
    return PRESETS_DIR / f"{name}.yaml"


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``presets/<name>.yaml`` as a nested mapping."""
    return _read_mapping(preset_path(name))


def apply_preset(raw: dict[str, Any], name: str, origins: Origins | None = None) -> dict[str, Any]:
    """``raw`` (a params mapping) with the preset ``name`` applied.

    The preset's ``data`` section replaces the whole ``data`` section (it switches the
    benchmark, and each benchmark has its own fields); its other keys override one by one.
    ``origins`` records each key the preset set."""
    out = copy.deepcopy(raw)
    preset = load_preset(name)
    where = f"preset {preset_path(name).relative_to(PRESETS_DIR.parent)}"
    for section, values in preset.items():
        if section == "data":
            out["data"] = copy.deepcopy(values)
            if origins is not None:
                origins["data"] = where
        else:
            for dotted, value in flatten({section: values}).items():
                set_dotted(out, dotted, value)
                if origins is not None:
                    origins[dotted] = where
    return out


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

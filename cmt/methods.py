"""The compared methods (docs/method.md), as one typed registry.

A *backbone* is a pretrained model; a *method* is a backbone plus how its prompt for a task is
obtained. The Decision Transformer, Prompt-DT and behaviour cloning are settings of the same
:class:`~cmt.models.SequencePolicy`, not copies of it. Each benchmark names the methods it
compares (``DataSection.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cmt.sections import ModelConfig, ModelParams, PromptKind


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is: its prompt, whether it conditions on the return-to-go, whether it
    trains the self-supervised heads, and the share of highest-return training episodes it is
    trained on (1.0 = all). The sizes come from ``params.yaml``'s ``model`` section."""

    prompt: PromptKind
    condition_on_rtg: bool
    dynamics_heads: bool
    data_fraction: float = 1.0


# The baselines train with the action loss only, as published; CMT adds its self-supervised
# heads. Filtered BC keeps the top 10% of episodes by return, as in the Decision Transformer
# paper's %BC baseline.
BACKBONES: dict[str, BackboneSpec] = {
    "cmt": BackboneSpec("encoder", condition_on_rtg=False, dynamics_heads=True),
    # Ablation: CMT with the baselines' return-to-go tokens and target rule (docs/method.md).
    "cmt_rtg": BackboneSpec("encoder", condition_on_rtg=True, dynamics_heads=True),
    "prompt_dt": BackboneSpec("segment", condition_on_rtg=True, dynamics_heads=False),
    "dt": BackboneSpec("none", condition_on_rtg=True, dynamics_heads=False),
    "bc": BackboneSpec("none", condition_on_rtg=False, dynamics_heads=False),
    "filtered_bc": BackboneSpec(
        "none", condition_on_rtg=False, dynamics_heads=False, data_fraction=0.1
    ),
}


if TYPE_CHECKING:  # type checkers see a plain string; pydantic sees the registry's names
    BackboneName = str
else:
    BackboneName = Literal[tuple(BACKBONES)]
"""Every pretrained backbone, from :data:`BACKBONES`."""


@dataclass(frozen=True)
class Method:
    name: str
    backbone: BackboneName
    tuned: bool  # whether the prompt is tuned on the task's prompt data
    label: str  # for tables and plots


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mtdt", "dt", False, "Multi-task DT (no prompt)"),
        Method("prompt_dt", "prompt_dt", False, "Prompt-DT (segment prompt)"),
        Method("dt", "dt", False, "Decision Transformer"),
        Method("madt", "dt", False, "Multi-agent DT (MADT-style, shared parameters)"),
        Method("bc", "bc", False, "Behaviour cloning"),
        Method("filtered_bc", "filtered_bc", False, "Filtered BC (top 10%)"),
        Method("cmt_zero_shot", "cmt", False, "CMT zero-shot (prompt = E(context))"),
        Method("cmt_tuned", "cmt", True, "CMT + prompt tuning"),
        Method("cmt_rtg_zero_shot", "cmt_rtg", False, "CMT + return-to-go, zero-shot"),
        Method("cmt_rtg_tuned", "cmt_rtg", True, "CMT + return-to-go + prompt tuning"),
    )
}


ABLATION_METHODS: tuple[str, ...] = ("cmt_rtg_zero_shot", "cmt_rtg_tuned")
"""Methods every benchmark accepts beside its own, for ablations (docs/method.md)."""


if TYPE_CHECKING:
    MethodName = str
else:
    MethodName = Literal[tuple(METHODS)]
"""Every compared method, from :data:`METHODS`."""


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def backbone_config(base: ModelParams, backbone: BackboneName) -> ModelConfig:
    """The model of ``backbone``: ``params.yaml``'s sizes and what the backbone is."""
    spec = BACKBONES[backbone]
    fixed = {
        "prompt": spec.prompt,
        "condition_on_rtg": spec.condition_on_rtg,
        "dynamics_heads": spec.dynamics_heads,
    }
    sizes = base.model_dump(exclude=set(fixed))  # a full ModelConfig passes as sizes too
    return ModelConfig.model_validate({**sizes, **fixed})


def backbones_for(methods: tuple[str, ...]) -> list[BackboneName]:
    """Backbones that the given methods need, each once, in a stable order."""
    return list(dict.fromkeys(get_method(m).backbone for m in methods))

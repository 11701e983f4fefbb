"""The compared methods (DESIGN 1.4), as one typed registry.

A *backbone* is a pretrained model; a *method* is a backbone plus how its prompt for an
unseen task is obtained. Decision Transformer and Prompt-DT are prompt modes of the same
:class:`~cmt.models.SequencePolicy`, not copies of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cmt.config import ModelConfig

Backbone = Literal["cmt", "prompt_dt", "mtdt"]

# Model fields each backbone fixes on top of params.yaml's `model` section. The baselines
# train with the action loss only, as published; CMT adds its self-supervised heads.
BACKBONE_OVERRIDES: dict[str, dict[str, Any]] = {
    "cmt": {"prompt": "encoder", "condition_on_rtg": False},
    "prompt_dt": {"prompt": "segment", "condition_on_rtg": True, "dynamics_heads": False},
    "mtdt": {"prompt": "none", "condition_on_rtg": True, "dynamics_heads": False},
}


@dataclass(frozen=True)
class Method:
    name: str
    backbone: Backbone
    tuned: bool  # whether the prompt is tuned on the task's demonstrations
    label: str  # for tables and plots


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mtdt", "mtdt", False, "Multi-task DT (no prompt)"),
        Method("prompt_dt", "prompt_dt", False, "Prompt-DT (segment prompt)"),
        Method("cmt_zero_shot", "cmt", False, "CMT zero-shot (prompt = E(context))"),
        Method("cmt_tuned", "cmt", True, "CMT + prompt tuning"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def backbone_config(base: ModelConfig, backbone: Backbone) -> ModelConfig:
    """``params.yaml``'s model section with the backbone's fixed fields applied."""
    return ModelConfig.model_validate({**base.model_dump(), **BACKBONE_OVERRIDES[backbone]})


def backbones_for(methods: tuple[str, ...]) -> list[Backbone]:
    """Backbones that the given methods need, each once, in a stable order."""
    return list(dict.fromkeys(get_method(m).backbone for m in methods))

"""Sequence models: the GPT backbone, the context encoder and the prompted policy."""

from cmt.models.policy import Outputs, SequencePolicy

__all__ = ["Outputs", "SequencePolicy"]

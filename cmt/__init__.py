"""CMT: prompt-tuned offline (meta-)reinforcement learning with sequence models."""

__version__ = "0.1.0"

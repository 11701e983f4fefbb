"""What every benchmark JSON records about the machine it ran on."""

from __future__ import annotations

from cmt.device import cpu_name

__all__ = ["cpu_name"]

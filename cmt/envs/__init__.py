"""Task families and their registry."""

from cmt.envs.registry import TaskFamily, make_family, registered_families

__all__ = ["TaskFamily", "make_family", "registered_families"]

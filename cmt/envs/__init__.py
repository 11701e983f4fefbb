"""Environments: task families and batched envs (behaviour policies live in ``cmt.behaviour``)."""

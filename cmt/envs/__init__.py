"""Environments: task families, batched envs and behaviour-data generation."""

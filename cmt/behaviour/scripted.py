"""The point robot's scripted behaviour policies: a noisy straight-to-goal expert (medium and
expert differ in the noise) and uniform random actions."""

from __future__ import annotations

import numpy as np

from cmt.envs.point_robot import STEP_SIZE


def scripted_expert(
    obs: np.ndarray, goals: np.ndarray, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Move straight to the goal at full speed, plus Gaussian noise; actions (B, 2) float32."""
    greedy = np.clip((goals - obs) / STEP_SIZE, -1.0, 1.0)
    noisy = greedy + rng.normal(0.0, noise_std, size=greedy.shape)
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def random_actions(batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """The random behaviour policy: uniform actions in [-1, 1]; (B, 2) float32."""
    return rng.uniform(-1.0, 1.0, size=(batch_size, 2)).astype(np.float32)

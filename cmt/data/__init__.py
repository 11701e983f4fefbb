"""Offline datasets: the D4RL HDF5 layout, episodes, and the batched segment sampler."""

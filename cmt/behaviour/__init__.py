"""Behaviour policies and the datasets they generate (``collect``).

``rollout`` runs any batched policy in a task family's batched environment and lays the
episodes out in D4RL's flat layout; ``scripted`` holds the point robot's hand-written policies,
``sac`` trains SAC behaviour policies on the MuJoCo benchmarks and ``ppo`` parameter-shared
MaskablePPO on SMAX, each with resumable checkpoints and snapshots at several skill levels.
``cmt/envs/`` holds only the simulators and batched environments these run in.
"""

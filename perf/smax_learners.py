"""SMAX behaviour learners side by side: SMAX steps/s and agent steps/s of the JAX MAPPO
learner (``cmt/behaviour/mappo.py``), sequential and with ``overlap_rollout`` (each rollout
in a second thread while the learner updates on the one before), against sb3-contrib's
MaskablePPO (``cmt/behaviour/ppo.py``), which it replaces, in one run on one machine.

    python perf/smax_learners.py            # writes perf/results/smax_learners.json
    python perf/smax_learners.py --quick    # 3m only, shorter budgets

MAPPO runs with each map's preset settings (``presets/smax_<map>.yaml``), MaskablePPO with the
settings its datasets were built with (:data:`MASKABLE_PPO`); every computation on one compute
thread (XLA and torch), as the collect stage runs them. The overlapped MAPPO runs two
computations at once, so it uses both cores, in segments of the updates between two of the
preset's snapshots. The clock starts after a warm-up (jit compilation excluded) and covers
acting, stepping SMAX and updating, in whole rollouts, for about ``--seconds`` per learner and
map; snapshots (evaluation, checkpoints) are not included. Each learner is timed
``--repeats`` times, interleaved; the fastest repeat is the least disturbed by other
processes (the machine is shared), the median is recorded too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cmt.device import jax_on_cpu

jax_on_cpu()  # one XLA thread, before jax starts
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402  # perf/, the script's own folder

from cmt.atomic import write_json  # noqa: E402
from cmt.behaviour.mappo import learner_for, run_updates  # noqa: E402
from cmt.behaviour.ppo import SmaxVecEnv, _ppo_model  # noqa: E402
from cmt.envs.smax import smax_map  # noqa: E402
from cmt.sections import PpoConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "smax_learners.json"
PRESETS = Path(__file__).parents[1] / "presets"
MASKABLE_PPO: dict[str, Any] = {
    "learner": "maskable_ppo",
    "n_envs": 16,
    "n_steps": 64,
    "batch_size": 1024,
    "n_epochs": 4,
    "learning_rate": 5e-4,
    "clip_range": 0.2,
    "ent_coef": 0.01,
    "net_arch": (64, 64),
}
"""The settings of the MaskablePPO datasets (the reduced budget before MAPPO)."""
MAPPO_SHAPE = {
    "n_envs", "n_steps", "batch_size", "n_epochs", "net_arch", "critic_arch", "actor_arch",
    "actor_rnn", "critic_state", "critic_units", "train_ally_loss", "critic_extra_epochs",
}  # fmt: skip
"""The preset fields that set MAPPO's work per step, recorded beside each measurement."""


def preset_ppo(map_name: str) -> PpoConfig:
    """The ``data.ppo`` section of the map's preset."""
    preset = yaml.safe_load((PRESETS / f"smax_{map_name}.yaml").read_text())
    return PpoConfig(**preset["data"]["ppo"])


def time_mappo(map_name: str, cfg: PpoConfig, seconds: float) -> tuple[int, float]:
    """(agent steps, seconds) of whole MAPPO updates for about ``seconds``."""
    learner = learner_for(map_name, cfg)
    ts = learner.init(jax.random.PRNGKey(0))
    ts, _ = learner.update(ts)  # compiles
    jax.block_until_ready(ts)
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ts, _ = learner.update(ts)
        jax.block_until_ready(ts)
        updates += 1
    return updates * learner.agent_steps_per_update, time.perf_counter() - start


def time_mappo_overlapped(map_name: str, cfg: PpoConfig, seconds: float) -> tuple[int, float]:
    """(agent steps, seconds) of ``overlap_rollout`` MAPPO for about ``seconds``, in whole
    segments of the updates between two snapshots (each begins with a rollout alone)."""
    learner = learner_for(map_name, cfg)
    segment = -(-cfg.snapshot_every // learner.agent_steps_per_update)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ts = learner.init(jax.random.PRNGKey(0))
        ts = run_updates(learner, ts, 2, pool)  # compiles
        jax.block_until_ready(ts)
        updates, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ts = run_updates(learner, ts, segment, pool)
            jax.block_until_ready(ts)
            updates += segment
    return updates * learner.agent_steps_per_update, time.perf_counter() - start


def time_maskable_ppo(map_name: str, cfg: PpoConfig, seconds: float) -> tuple[int, float]:
    """(agent steps, seconds) of whole MaskablePPO rollouts and updates for about ``seconds``."""
    venv = SmaxVecEnv(map_name, cfg.n_envs, seed=0)
    model = _ppo_model(venv, cfg, seed=0)
    rollout = cfg.n_envs * cfg.n_steps * venv.env.num_agents
    model.learn(total_timesteps=rollout)  # warm-up: compiles SMAX's kernels
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.learn(total_timesteps=rollout, reset_num_timesteps=False)
        steps += rollout
    return steps, time.perf_counter() - start


def measure(map_name: str, seconds: float, repeats: int) -> dict[str, Any]:
    """Both learners on one map, interleaved ``repeats`` times."""
    mappo = preset_ppo(map_name)
    configs = {
        "mappo": mappo,
        "mappo_overlap": mappo.model_copy(update={"overlap_rollout": True}),
        "maskable_ppo": PpoConfig(**MASKABLE_PPO),
    }
    timers = {
        "mappo": time_mappo,
        "mappo_overlap": time_mappo_overlapped,
        "maskable_ppo": time_maskable_ppo,
    }
    rates: dict[str, list[float]] = {k: [] for k in configs}
    agents = smax_map(map_name).num_agents
    for _ in range(repeats):
        for name, cfg in configs.items():
            steps, secs = timers[name](map_name, cfg, seconds)
            rates[name].append(steps / secs)
            print(f"{map_name} {name}: {steps / secs:.0f} agent steps/s", flush=True)
    out: dict[str, Any] = {"agents": agents}
    for name, r in rates.items():
        cfg = configs[name]
        out[name] = {
            "settings": cfg.model_dump(
                mode="json",
                include=set(MASKABLE_PPO) if name == "maskable_ppo" else MAPPO_SHAPE,
            ),
            "agent_steps_per_s": round(max(r), 1),
            "env_steps_per_s": round(max(r) / agents, 1),
            "agent_steps_per_s_median": round(statistics.median(r), 1),
            "agent_steps_per_s_each_repeat": [round(x, 1) for x in r],
        }
    out["speedup"] = round(max(rates["mappo"]) / max(rates["maskable_ppo"]), 2)
    out["overlap_speedup"] = round(max(rates["mappo_overlap"]) / max(rates["mappo"]), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    maps = ("3m",) if args.quick else ("3m", "2s3z", "5m_vs_6m")
    seconds = 10.0 if args.quick else args.seconds
    load_before = os.getloadavg()
    results = {m: measure(m, seconds, args.repeats) for m in maps}
    write_json(
        args.out,
        {
            "what": "training throughput of the SMAX behaviour learners: SMAX steps/s (one per "
            "episode and step) and agent steps/s (one per ally and step), whole rollouts and "
            f"updates for about {seconds:.0f} s after a warm-up, best of {args.repeats}",
            "command": " ".join(["python", "perf/smax_learners.py", *sys.argv[1:]]),
            "machine": {
                "cpu": cpu_name(),
                "cpu_count": os.cpu_count(),
                "threads": 1,  # per computation; the overlapped MAPPO runs two
                "jax": jax.__version__,
                "torch": torch.__version__,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
            },
            "maps": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Behaviour learners side by side: environment steps/s of SBX's SAC and TQC (JAX) against
Stable-Baselines3's SAC (torch), which they replace, in one run on one machine.

    python perf/learners.py            # writes perf/results/learners.json
    python perf/learners.py --quick    # hopper only, fewer steps

Each learner is built by the project's own ``make_learner`` on the project's training env
(:class:`cmt.behaviour.sac.TaskConditionedEnv`) with the D4RL presets' settings (256 x 256,
batch 256, one gradient step per environment step), one compute thread each (torch and XLA),
as the behaviour command runs them. The clock starts after ``learning_starts`` and a warm-up
of updates (jit compilation excluded) and covers acting, stepping MuJoCo and updating. Each
learner is timed ``--repeats`` times, interleaved with the others; the fastest repeat is the
least disturbed by other processes (the machine is shared), the median is recorded too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from cmt.device import jax_on_cpu

jax_on_cpu()  # one XLA thread, before jax starts
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402  # perf/, the script's own folder

from cmt.atomic import write_json  # noqa: E402
from cmt.behaviour.learners import make_learner  # noqa: E402
from cmt.behaviour.sac import TaskConditionedEnv  # noqa: E402
from cmt.envs.mujoco_tasks import single_task_family  # noqa: E402
from cmt.sections import SacConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "learners.json"
LEARNERS: dict[str, dict[str, object]] = {
    "sb3_sac": {"learner": "sb3_sac", "train_freq": 1},  # the learner replaced, as it ran
    "sbx_sac": {"learner": "sbx_sac", "train_freq": 8},  # the D4RL presets' setting
    "sbx_sac_freq1": {"learner": "sbx_sac", "train_freq": 1},
    "sbx_tqc": {"learner": "sbx_tqc", "train_freq": 8},
}
BASELINE = "sb3_sac"


def timed_steps(name: str, settings: dict[str, object], steps: int, warmup: int) -> float:
    """Seconds for ``steps`` environment steps of a learner already past its warm-up."""
    family = single_task_family(name)
    budgets = SacConfig(
        sac_steps=10_000_000,
        learning_starts=1_000,
        batch_size=256,
        net_arch=(256, 256),
        eval_every=80_000,
        device="cpu",
        policies="train",
        **settings,  # type: ignore[arg-type]
    )
    env = TaskConditionedEnv(family, family.train_tasks)
    learner = make_learner(env, budgets, seed=0)
    model = learner.model
    model.learn(total_timesteps=budgets.learning_starts + warmup)
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    env.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    envs = ("hopper",) if args.quick else ("hopper", "halfcheetah", "walker2d")
    steps, warmup = (1_000, 200) if args.quick else (3_000, 1_000)
    load_before = os.getloadavg()
    results: dict[str, dict[str, object]] = {}
    for env in envs:
        seconds: dict[str, list[float]] = {k: [] for k in LEARNERS}
        for _ in range(args.repeats):
            for key, settings in LEARNERS.items():
                seconds[key].append(timed_steps(env, settings, steps, warmup))
                print(f"{env} {key}: {steps / seconds[key][-1]:.0f} steps/s", flush=True)
        best = {k: steps / min(v) for k, v in seconds.items()}
        results[env] = {
            key: {
                "settings": LEARNERS[key],
                "steps_per_s": round(best[key], 1),
                "steps_per_s_median": round(steps / statistics.median(v), 1),
                "speedup_vs_sb3_sac": round(best[key] / best[BASELINE], 2),
            }
            for key, v in seconds.items()
        }
    write_json(
        args.out,
        {
            "what": "environment steps/s of the behaviour learners (acting, MuJoCo, updates), "
            f"{steps} steps after {warmup} warm-up updates, best of {args.repeats}",
            "machine": {
                "cpu": cpu_name(),
                "threads": 1,
                "torch": torch.__version__,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
            },
            "envs": results,
            "numpy": np.__version__,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Win rate of SMAX tier candidates when they act at a lower sampling temperature.

The tier policies sample their actions (Gumbel-max over the masked logits). Scaling the
Gumbel noise by ``T`` samples from ``softmax(logits / T)``, so ``T = 1`` is the tiers' own
sampling and ``T = 0`` the greedy action. This script measures, for given snapshots of a
MAPPO run's checkpoint, how many episodes each wins at each temperature, all on the same
episode seeds, to say how much of a good tier's losses come from sampling (docs/smax.md):

    python scripts/smax_temperature.py --map 5m_vs_6m \\
        --run committed=behaviour/smax_5m_vs_6m/mappo_state.pt --steps 49 50 \\
        --out results/data/smax_learner_runs/5m_vs_6m_temperature.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from cmt.device import cpu_name, jax_on_cpu

jax_on_cpu()  # before SMAX starts jax

import numpy as np  # noqa: E402

from cmt.atomic import write_json  # noqa: E402
from cmt.behaviour.mappo import learner_for, numpy_policy, policy_meta  # noqa: E402
from cmt.checkpoint import load_sealed  # noqa: E402
from cmt.envs.smax import run_episodes  # noqa: E402


class ScaledGumbel:
    """A numpy Generator stand-in whose Gumbel noise is scaled by ``temperature``: the tier
    policy's argmax over logits plus that noise samples ``softmax(logits / temperature)``."""

    def __init__(self, rng: np.random.Generator, temperature: float) -> None:
        self.rng, self.temperature = rng, temperature

    def gumbel(self, size: Any) -> np.ndarray:
        return np.asarray(self.rng.gumbel(size=size) * self.temperature)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", required=True)
    parser.add_argument("--run", action="append", required=True, help="NAME=mappo_state.pt")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="snapshots, in M")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    parser.add_argument("--ppo-json", default="{}", help="the runs' PpoConfig over the preset")
    parser.add_argument("--episodes", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1] / "perf"))
    from smax_learners import preset_ppo  # perf/: a map's preset settings

    cfg = preset_ppo(args.map).model_copy(update=json.loads(args.ppo_json))
    meta = policy_meta(learner_for(args.map, cfg), seed=0)  # what a tier file records
    rows = []
    for named in args.run:
        name, path = named.split("=", 1)
        snapshots = {s["step"] // 1_000_000: s for s in load_sealed(Path(path))["snapshots"]}
        for step in args.steps:
            for temperature in args.temperatures:
                start = time.perf_counter()
                noise = ScaledGumbel(np.random.default_rng(args.seed), temperature)
                rng = cast(np.random.Generator, noise)  # numpy_policy draws only gumbel()
                policy = numpy_policy(snapshots[step]["policy"], meta, rng)
                batch = run_episodes(args.map, args.episodes, policy, args.seed)
                rows.append(
                    {
                        "run": name,
                        "snapshot_step": snapshots[step]["step"],
                        "temperature": temperature,
                        "win_rate": float(batch.episode_won.mean()),
                        "mean_return": float(batch.returns.mean()),
                    }
                )
                print(rows[-1], f"{time.perf_counter() - start:.1f} s", flush=True)
    write_json(
        args.out,
        {
            "what": f"win rate of {args.map} snapshots acting at sampling temperatures "
            f"(1: the tiers' sampling, 0: greedy), {args.episodes} episodes each, episode "
            f"seed {args.seed} for all",
            "command": " ".join(["python", "scripts/smax_temperature.py", *sys.argv[1:]]),
            "runs": dict(r.split("=", 1) for r in args.run),
            "machine": {"cpu": cpu_name()},
            "results": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

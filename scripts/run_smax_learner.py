"""One measured SMAX behaviour run: train a map's learner with its preset's settings, build the
tier datasets, and record the run for the docs.

    python scripts/run_smax_learner.py --map 3m

trains (``cmt.behaviour.ppo.build_smax_datasets``, the collect stage's function) into
``--work`` (default ``/tmp/smax_learner_runs/<map>``) and writes
``results/data/smax_learner_runs/<map>.json``: the command, the settings, every snapshot (agent
and SMAX step, win rate, mean return, wall time and load average when it was taken), the
training metrics between snapshots, the tiers chosen and their datasets' win rates, the times
(training, tier rollouts, total), the load average at the start and the end, and the CPU.
``--ppo-json`` overrides preset fields, e.g. ``'{"total_steps": 20000000}'``. ``--publish``
then writes ``behaviour/smax_<map>/`` (tier policies, ``tiers.json``, learner state, manifest:
``cmt.behaviour.committed.publish_smax``), which ``collect`` rolls out with
``data.ppo.policies: committed`` once committed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cmt.device import jax_on_cpu

jax_on_cpu()  # one XLA thread, before jax starts

import yaml  # noqa: E402

from cmt.atomic import write_json  # noqa: E402
from cmt.behaviour.committed import publish_smax  # noqa: E402
from cmt.behaviour.ppo import build_smax_datasets  # noqa: E402
from cmt.device import cpu_name  # noqa: E402
from cmt.sections import PpoConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "data" / "smax_learner_runs"


def uptime() -> str:
    """``uptime``'s line (load averages over 1, 5 and 15 minutes)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", required=True, help="SMAX map with a preset, e.g. 3m")
    parser.add_argument("--work", type=Path, help="dataset and checkpoint directory")
    parser.add_argument("--ppo-json", default="{}", help="PpoConfig fields over the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="record (default: results/data/...)")
    parser.add_argument(
        "--publish", action="store_true", help="write behaviour/smax_<map>/ for committing"
    )
    args = parser.parse_args()
    preset = yaml.safe_load((ROOT / "presets" / f"smax_{args.map}.yaml").read_text())["data"]
    cfg = PpoConfig(**{**preset["ppo"], **json.loads(args.ppo_json)})
    work = args.work or Path("/tmp/smax_learner_runs") / args.map
    curve: list[dict[str, Any]] = []
    start_uptime, t0 = uptime(), time.perf_counter()

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        load = [round(x, 2) for x in os.getloadavg()]
        curve.append({"step": step, "wall_s": round(time.perf_counter() - t0, 1), "load": load})
        print(f"[{curve[-1]['wall_s']:7.1f}s] step {step:>10,} {metrics}", flush=True)

    summary = build_smax_datasets(
        args.map,
        work / "data",
        work / "behaviour",
        cfg,
        preset["episodes_per_tier"],
        args.seed,
        progress=False,
        on_metrics=on_metrics,
    )
    total = time.perf_counter() - t0
    for point, snap in zip(curve, summary["snapshots"], strict=False):
        snap.update(point)
    record = {
        "map": args.map,
        "command": " ".join(["python", "scripts/run_smax_learner.py", *sys.argv[1:]]),
        "seed": args.seed,
        "ppo": cfg.model_dump(mode="json"),
        "episodes_per_tier": preset["episodes_per_tier"],
        "snapshots": summary["snapshots"],
        "train_log": summary["ppo_log"],
        "medium_rule": summary["medium_rule"],
        "tiers": summary["tiers"],
        "seconds": {
            "training": round(summary["ppo"]["seconds"], 1),
            "tiers_and_files": round(total - summary["ppo"]["seconds"], 1),
            "total": round(total, 1),
        },
        "learner_stats": summary["ppo"],
        "uptime": {"start": start_uptime, "end": uptime()},
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count()},
    }
    out = args.out or RESULTS / f"{args.map}.json"
    write_json(out, record)
    print(json.dumps(record["tiers"], indent=1), f"\nwrote {out}")
    if args.publish:
        state = "mappo_state.pt" if cfg.learner == "mappo" else "state.pt"
        published = publish_smax(
            args.map, cfg, args.seed, work / "data", work / "behaviour" / state,
            record["command"], summary["ppo"],
        )  # fmt: skip
        print(f"wrote {published}")


if __name__ == "__main__":
    main()

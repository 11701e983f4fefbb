"""Build the SMAX datasets of one map outside the pipeline (the ``collect`` stage calls the
same :func:`cmt.behaviour.ppo.build_smax_datasets`).

    python scripts/build_smax_datasets.py --map 3m --out /work/smax_data/3m \
        --behaviour /work/smax_data/behaviour/3m

writes ``<out>/train.hdf5``, ``<out>/tiers.json`` and ``<out>/summary.json`` (with timings).
Budgets are :class:`cmt.sections.PpoConfig`'s defaults (the reduced budget) unless
``--ppo-json`` gives other fields, e.g. ``'{"total_steps": 5000000}'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from cmt.atomic import write_json
from cmt.device import jax_on_cpu

jax_on_cpu()  # before jax's first import
from cmt.behaviour.ppo import build_smax_datasets  # noqa: E402
from cmt.sections import PpoConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", required=True, help="SMAX map name, e.g. 3m")
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--behaviour", type=Path, required=True, help="PPO checkpoint directory")
    parser.add_argument("--episodes-per-tier", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppo-json", default="{}", help="PpoConfig fields as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = PpoConfig(**json.loads(args.ppo_json))
    t0 = time.perf_counter()
    summary = build_smax_datasets(
        args.map, args.out, args.behaviour, cfg, args.episodes_per_tier, args.seed
    )
    summary["seconds_total"] = time.perf_counter() - t0
    summary["machine"] = {"platform": platform.platform(), "processor": platform.processor()}
    write_json(args.out / "summary.json", summary)
    print(json.dumps(summary["tiers"], indent=2))


if __name__ == "__main__":
    main()

"""``cmt compare``: the method comparison in one process (every method, every seed) and its
results table, generated from the per-run records (``runs/*.json``) by
:func:`cmt.evaluation.report.write_report`, never by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmt.atomic import write_json
from cmt.benchmarks import make_benchmark
from cmt.benchmarks.base import REFERENCES_FILE
from cmt.config import Params
from cmt.evaluation.records import evaluate_method, seed_record
from cmt.evaluation.report import write_report
from cmt.experiment import load_data, make_prompts, pretrain_backbone
from cmt.integrity import sealed_json
from cmt.methods import backbones_for, get_method


def ensure_data(
    params: Params, data_dir: Path, behaviour_root: Path | None = None, progress: bool = True
) -> None:
    """Build the benchmark's datasets unless they are already there; trained behaviour
    policies keep their checkpoints under ``behaviour_root`` (default: beside the data)."""
    if not (data_dir / REFERENCES_FILE).exists():
        root = data_dir.parent / "behaviour" if behaviour_root is None else behaviour_root
        make_benchmark(params.data).build_datasets(data_dir, root, progress=progress)


def run_comparison(
    params: Params,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    progress: bool = True,
    behaviour_root: str | Path | None = None,
) -> dict[str, Any]:
    """Pretrain every needed backbone per seed, build each method's prompts, evaluate, report.

    Finished runs (``runs/<method>_seed<k>.json``) are skipped, so an interrupted comparison
    resumes where it stopped; pretraining resumes from its own checkpoints.
    """
    out_dir = Path(out_dir)
    data_dir = Path(data_dir) if data_dir is not None else out_dir / "data"
    ensure_data(params, data_dir, Path(behaviour_root) if behaviour_root else None, progress)
    data = load_data(params, data_dir)
    for seed in params.compare.seeds:
        for backbone in backbones_for(params.compare.methods):
            methods = [m for m in params.compare.methods if get_method(m).backbone == backbone]
            if all((out_dir / "runs" / f"{m}_seed{seed}.json").exists() for m in methods):
                continue
            ckpt_dir = out_dir / "checkpoints" / f"{backbone}_seed{seed}"
            ckpt = ckpt_dir / "model.pt"
            if not ckpt.exists():
                ckpt = pretrain_backbone(params, backbone, seed, data, ckpt_dir, progress=progress)
            for name in methods:
                record_path = out_dir / "runs" / f"{name}_seed{seed}.json"
                if record_path.exists():
                    continue
                prompts = make_prompts(
                    params, name, ckpt, data, seed, ckpt_dir / "prompts", progress=progress
                )
                result = evaluate_method(
                    params, ckpt, {t: p["prompt"] for t, p in prompts.items()}, data, seed
                )
                tuning = {
                    t: {k: v for k, v in p.items() if k != "prompt"}
                    for t, p in prompts.items()
                    if len(p) > 1
                }
                record = seed_record(name, seed, ckpt, result["per_task"], tuning)
                write_json(record_path, sealed_json(record))
    return write_report(out_dir, params)

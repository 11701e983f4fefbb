"""The method comparison on unseen tasks: every method, every seed, one results table.

The table is generated from the per-run result records (``runs/*.json``), never by hand;
``write_report`` can rebuild it from those records alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cmt.atomic import write_json, write_text
from cmt.config import Params
from cmt.envs.generate import generate_datasets
from cmt.experiment import (
    REFERENCES_FILE,
    evaluate_method,
    load_data,
    make_prompts,
    pretrain_backbone,
)
from cmt.methods import METHODS, backbones_for, get_method


def ensure_data(params: Params, data_dir: Path) -> None:
    """Generate the family's datasets unless they are already there."""
    if not (data_dir / REFERENCES_FILE).exists():
        generate_datasets(params.data, data_dir)


def run_comparison(
    params: Params, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Pretrain every needed backbone per seed, build each method's prompts, evaluate, report.

    Finished runs (``runs/<method>_seed<k>.json``) are skipped, so an interrupted comparison
    resumes where it stopped; pretraining resumes from its own checkpoints.
    """
    out_dir = Path(out_dir)
    data_dir = Path(data_dir) if data_dir is not None else out_dir / "data"
    ensure_data(params, data_dir)
    data = load_data(data_dir)
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
                write_json(
                    record_path,
                    {
                        "method": name,
                        "seed": seed,
                        "checkpoint": str(ckpt),
                        **result,
                        "tuning": tuning,
                    },
                )
    return write_report(out_dir, params)


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "runs").glob("*.json"))]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of the per-seed mean over tasks, per method (and per task)."""
    summary: dict[str, Any] = {}
    for name in METHODS:
        runs = [r for r in records if r["method"] == name]
        if not runs:
            continue
        scores = np.array([r["score_mean"] for r in runs])
        returns = np.array([r["return_mean"] for r in runs])
        tasks = sorted({int(t) for r in runs for t in r["per_task"]})
        summary[name] = {
            "label": METHODS[name].label,
            "seeds": sorted(r["seed"] for r in runs),
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "per_task_score": {
                t: float(np.mean([r["per_task"][str(t)]["score_mean"] for r in runs]))
                for t in tasks
            },
        }
    return summary


PROMPT_DT_PUBLISHED: dict[str, float] = {
    "cheetah_dir": 927.2,
    "cheetah_vel": -37.9,
    "ant_dir": 367.1,
}
"""Prompt-DT's published return on the test tasks with expert data and K* = 5 (Xu et al.,
ICML 2022). Other environments, data and budgets (docs/mujoco.md): context only."""


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per task family with each method's return (mean ± std over seeds),
    its normalised score, and Prompt-DT's published return. ``rows`` hold ``family``,
    ``run_id``, ``seeds`` and ``metrics`` (``{method: {return_mean, ...}}``)."""
    methods = [m for m in METHODS if any(m in r["metrics"] for r in rows)]
    head = ["family", "seeds", *(METHODS[m].label for m in methods), "Prompt-DT (published)"]
    lines = [
        "Return on the test tasks, mean ± std over seeds (normalised score in brackets: "
        "0 = random, 100 = our SAC expert). Prompt-DT's published returns come from per-task "
        "experts, expert-only data and mujoco-py environments (docs/mujoco.md): context, not a "
        "same-data comparison.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = []
        for m in methods:
            s = r["metrics"].get(m)
            cells.append(
                "–"
                if s is None
                else f"{s['return_mean']:.1f} ± {s['return_std']:.1f} "
                f"({s['score_mean']:.0f} ± {s['score_std']:.0f})"
            )
        published = PROMPT_DT_PUBLISHED.get(r["family"])
        lines.append(
            f"| {r['family']} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {'–' if published is None else f'{published:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def markdown_table(summary: dict[str, Any], params: Params) -> str:
    tasks = sorted({t for s in summary.values() for t in s["per_task_score"]})
    head = "| method | normalised score | return | " + " | ".join(f"task {t}" for t in tasks)
    seen = " (also training tasks)" if params.data.test_tasks_in_training else ""
    lines = [
        f"Test tasks {list(params.data.test_tasks)} of {params.data.family}{seen}; mean ± std over "
        f"seeds of the mean over tasks ({params.evaluate.episodes} episodes per task). "
        "Score: 100 × (R − random) / (expert − random) per task.",
        "",
        head + " |",
        "|" + "---|" * (3 + len(tasks)),
    ]
    for s in summary.values():
        cells = " | ".join(f"{s['per_task_score'][t]:.1f}" for t in tasks)
        lines.append(
            f"| {s['label']} | {s['score_mean']:.1f} ± {s['score_std']:.1f} | "
            f"{s['return_mean']:.2f} ± {s['return_std']:.2f} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [s["label"] for s in summary.values()]
    ax.barh(
        labels,
        [s["score_mean"] for s in summary.values()],
        xerr=[s["score_std"] for s in summary.values()],
        color="tab:blue",
        alpha=0.8,
    )
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(100, color="k", lw=0.8, ls="--")
    lowest = min(s["score_mean"] - s["score_std"] for s in summary.values())
    ax.set_xlim(min(0.0, lowest - 5.0), 105.0)
    ax.set_xlabel("normalised score on the test tasks (0 = random, 100 = expert)")
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out_dir: str | Path, params: Params) -> dict[str, Any]:
    """results.json, results.md and results.png from the run records in ``out_dir/runs``."""
    out_dir = Path(out_dir)
    summary = summarize(load_records(out_dir))
    write_json(
        out_dir / "results.json", {"params": params.model_dump(mode="json"), "summary": summary}
    )
    write_text(out_dir / "results.md", markdown_table(summary, params))
    plot_summary(summary, out_dir / "results.png")
    return summary

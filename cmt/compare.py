"""The method comparison on unseen tasks: every method, every seed, one results table.

The table is generated from the per-run result records (``runs/*.json``), never by hand;
``write_report`` can rebuild it from those records alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cmt.atomic import save_figure, write_json, write_text
from cmt.benchmarks import make_benchmark
from cmt.benchmarks.base import REFERENCES_FILE, Benchmark
from cmt.config import Params, flatten
from cmt.experiment import evaluate_method, load_data, make_prompts, pretrain_backbone
from cmt.integrity import read_json, sealed_json
from cmt.methods import METHODS, backbones_for, get_method


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
    ensure_data(params, data_dir, behaviour_root and Path(behaviour_root), progress)
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
                write_json(
                    record_path,
                    sealed_json(
                        {
                            "method": name,
                            "seed": seed,
                            "checkpoint": str(ckpt),
                            **result,
                            "tuning": tuning,
                        }
                    ),
                )
    return write_report(out_dir, params)


RECORD_KEYS = ("method", "seed", "return_mean", "score_mean", "per_task")


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """The run records ``out_dir/runs/*.json``, each checked against its content hash."""
    paths = sorted((Path(out_dir) / "runs").glob("*.json"))
    return [read_json(p, required=RECORD_KEYS) for p in paths]


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


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per dataset with each method's return (mean ± std over seeds), its
    normalised score, and a published result for context. ``rows`` hold ``name``,
    ``seeds``, ``metrics`` (``{method: {return_mean, ...}}``) and ``published`` (``{label,
    value, metric}`` or None); rows of one benchmark kind share a table."""
    methods = [m for m in METHODS if any(m in r["metrics"] for r in rows)]
    published = next((r["published"]["label"] for r in rows if r.get("published")), None)
    with_data = any(r.get("dataset") for r in rows)
    head = ["dataset", "seeds", *(METHODS[m].label for m in methods)]
    head += [published] if published else []
    head += ["the data's own score: mean / p90 / max"] if with_data else []
    with_levels = any(k.startswith("level/") for r in rows for k in r.get("dataset") or {})
    head += ["the data's score per behaviour level"] if with_levels else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for m in methods:
            s = r["metrics"].get(m)
            cells.append(
                "–"
                if s is None
                else f"{s['score_mean']:.1f} ± {s['score_std']:.1f} "
                f"(return {s['return_mean']:.1f} ± {s['return_std']:.1f})"
            )
        if published:
            p = r.get("published")
            cells.append("–" if not p else f"{p['value']:.1f} ({p['metric'].split('_')[0]})")
        if with_data:
            d = r.get("dataset") or {}
            cells.append(
                " / ".join(f"{d[k]:.1f}" for k in ("score_mean", "score_p90", "score_max"))
                if all(k in d for k in ("score_mean", "score_p90", "score_max"))
                else "–"
            )
        if with_levels:
            levels = {
                k.removeprefix("level/"): v
                for k, v in (r.get("dataset") or {}).items()
                if k.startswith("level/")
            }
            ordered = sorted(levels.items(), key=lambda kv: kv[1])  # lowest level first
            cells.append(", ".join(f"{k} {v:.1f}" for k, v in ordered) or "–")
        lines.append(f"| {r['name']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_tables(rows: list[dict[str, Any]]) -> str:
    """:func:`benchmark_table` per kind of benchmark (``row["kind"]``), each with a caption."""
    parts = []
    for kind in sorted({r["kind"] for r in rows}):
        group = [r for r in rows if r["kind"] == kind]
        parts += [f"**{kind}**", "", benchmark_table(group)]
        for r in group:
            cost = r.get("prompt")
            note = (
                f" Tuned prompt: {cost['bytes'] / 1024:.1f} KB, {cost['seconds']:.1f} s of "
                "tuning per prompt (mean over seeds and tasks)."
                if cost
                else ""
            )
            parts.append(f"- {r['name']}: {r.get('caption', '')}{note}")
        parts.append("")
    return "\n".join(parts)


def markdown_table(summary: dict[str, Any], params: Params) -> str:
    """The comparison of one dataset: a row per method, per-task columns if there are several."""
    tasks = sorted({t for s in summary.values() for t in s["per_task_score"]})
    tasks = tasks if len(tasks) > 1 else []
    bench = make_benchmark(params.data)
    head = f"| method | {bench.score_name} | return | " + " | ".join(f"task {t}" for t in tasks)
    lines = [
        bench.describe(params.evaluate.episodes),
        "",
        head.rstrip(" |") + " |",
        "|" + "---|" * (3 + len(tasks)),
    ]
    for s in summary.values():
        cells = "".join(f" {s['per_task_score'][t]:.1f} |" for t in tasks)
        lines.append(
            f"| {s['label']} | {s['score_mean']:.1f} ± {s['score_std']:.1f} | "
            f"{s['return_mean']:.2f} ± {s['return_std']:.2f} |{cells}"
        )
    return "\n".join(lines) + "\n"


def _methods_in(results: dict[str, dict[str, Any]]) -> list[str]:
    """The methods any variant's summary holds, in the registry's order."""
    return [m for m in METHODS if any(m in r["summary"] for r in results.values())]


def variants_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per variant of one comparison (``{name: results.json content}``), with
    the settings in which the variants differ and each method's score, mean ± std over seeds.
    Variants must share the dataset and its test tasks: scores on other tasks do not compare."""
    if not results:
        raise ValueError("no variants to tabulate")
    flat = {name: flatten(r["params"]) for name, r in results.items()}
    for key in ("data.name", "data.test_tasks", "evaluate.episodes"):
        if len({str(f.get(key)) for f in flat.values()}) > 1:
            raise ValueError(f"variants differ in {key}: their scores do not compare")
    keys = sorted({k for f in flat.values() for k in f})
    differ = [k for k in keys if len({str(f.get(k)) for f in flat.values()}) > 1]
    methods = _methods_in(results)
    head = ["variant", "settings", *(METHODS[m].label for m in methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        settings = ", ".join(f"{k}={flat[name].get(k)}" for k in differ) or "–"
        cells = []
        for m in methods:
            s = r["summary"].get(m)
            cells.append("–" if s is None else f"{s['score_mean']:.1f} ± {s['score_std']:.1f}")
        lines.append(f"| {name} | {settings} | " + " | ".join(cells) + " |")
    first = next(iter(flat.values()))
    seeds = sorted({len(s["seeds"]) for r in results.values() for s in r["summary"].values()})
    caption = (
        f"{first['data.name']}, tasks {first['data.test_tasks']} held out of pretraining; "
        f"score mean ± std over seeds ({' or '.join(map(str, seeds))} seeds per variant) of the "
        f"mean over tasks, {first['evaluate.episodes']} episodes per task."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: Path, bench: Benchmark) -> None:
    """Each method's mean score over seeds (bars) and its std (whiskers)."""
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
    ax.set_xlabel(f"{bench.score_name} on the test tasks {bench.score_axis}")
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_variants(results: dict[str, dict[str, Any]], path: Path) -> None:
    """:func:`variants_table` as a plot: per method, a point per variant (mean score over
    seeds) with its std as whiskers; points, not bars, so the axis can zoom on the gaps."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    methods = _methods_in(results)
    step = 0.6 / max(len(results) - 1, 1)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(methods) * len(results)))
    for j, (name, r) in enumerate(results.items()):
        rows = [(i, r["summary"][m]) for i, m in enumerate(methods) if m in r["summary"]]
        ax.errorbar(
            [s["score_mean"] for _, s in rows],
            [i - 0.3 + j * step for i, _ in rows],
            xerr=[s["score_std"] for _, s in rows],
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels([METHODS[m].label for m in methods])
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("score on the held-out tasks (mean ± std over seeds)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_report(
    out_dir: str | Path, params: Params, records_dir: str | Path | None = None
) -> dict[str, Any]:
    """results.json, results.md and results.png in ``out_dir`` from the run records in
    ``records_dir/runs`` (default: ``out_dir/runs``)."""
    out_dir = Path(out_dir)
    summary = summarize(load_records(out_dir if records_dir is None else records_dir))
    write_json(
        out_dir / "results.json", {"params": params.model_dump(mode="json"), "summary": summary}
    )
    write_text(out_dir / "results.md", markdown_table(summary, params))
    plot_summary(summary, out_dir / "results.png", make_benchmark(params.data))
    return summary

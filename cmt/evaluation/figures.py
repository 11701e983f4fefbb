"""Figures, each titled with its dataset and in its setting's words (``Benchmark.name``,
``score_name``, ``score_axis``, ``evaluated_on``): the data's score distribution, learning
and prompt-tuning curves, a comparison's scores per method and its returns per task, variants
of one comparison, and the registered model versions.

The ``plot_*`` functions that return a figure leave writing it to the caller (a file with
:func:`cmt.atomic.save_figure`, or an MLflow run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmt.atomic import save_figure
from cmt.benchmarks import Benchmark
from cmt.evaluation.tables import methods_in
from cmt.methods import METHODS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Interval = tuple[float, float]
"""A (low, high) interval of a method's score, drawn as its whisker."""


def _subplots(width: float, height: float) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _title(ax: Any, bench: Benchmark, what: str) -> None:
    # From the figure's left edge: long method labels push the axes right, and a title
    # aligned to the axes then runs off the figure.
    ax.figure.suptitle(f"{bench.name}: {what}", fontsize="medium", x=0.01, ha="left")


def _method_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Each method's per-seed scores (mean over its tasks), in the registry's order."""
    return {
        m: np.array([r["score_mean"] for r in records if r["method"] == m], dtype=np.float64)
        for m in METHODS
        if any(r["method"] == m for r in records)
    }


def score_spread(scores: np.ndarray) -> Interval | None:
    """Mean ± the sample standard deviation (ddof 1) of per-seed scores; None for one seed,
    which has no spread to show."""
    if scores.size < 2:
        return None
    mean, sd = float(scores.mean()), float(scores.std(ddof=1))
    return mean - sd, mean + sd


def plot_comparison(
    records: Sequence[Mapping[str, Any]],
    bench: Benchmark,
    intervals: Mapping[str, Interval] | None = None,
) -> Figure:
    """Each method's mean score over seeds (bars) with a whisker per method and its seeds as
    dots. The whisker is ``intervals[method]`` where given (the 95% t intervals of
    :func:`cmt.evaluation.stats.score_intervals`), else mean ± sample std over seeds."""
    scores = _method_scores(records)
    fig, ax = _subplots(8, 1.4 + 0.45 * len(scores))
    names = list(scores)
    means = [float(v.mean()) for v in scores.values()]
    ys = np.arange(len(names))
    ax.barh(ys, means, color="tab:blue", alpha=0.75)
    spread = "95% t interval of the mean" if intervals is not None else "± sample std"
    whiskers = {
        m: intervals.get(m) if intervals is not None else score_spread(v) for m, v in scores.items()
    }
    for y, (m, values) in zip(ys, scores.items(), strict=True):
        ax.plot(values, np.full(values.size, y), "k.", ms=4, alpha=0.6)
        if (whisker := whiskers[m]) is not None:
            ax.plot(whisker, (y, y), color="k", lw=1.5)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(100, color="k", lw=0.8, ls="--")
    ends = [(float(v.min()), float(v.max()), *(whiskers[m] or ())) for m, v in scores.items()]
    low, high = min(min(e) for e in ends), max(max(e) for e in ends)
    ax.set_xlim(min(0.0, low - 5.0), max(105.0, high + 5.0))
    ax.set_yticks(ys)
    ax.set_yticklabels([METHODS[m].label for m in names])
    ax.invert_yaxis()
    seeds = sorted({int(r["seed"]) for r in records})
    ax.set_xlabel(f"{bench.score_name} {bench.score_axis}")
    _title(
        ax,
        bench,
        f"{bench.score_name} on {bench.evaluated_on()}\n"
        f"bars: mean of {len(seeds)} seed(s) · dots: seeds · whiskers: {spread}",
    )
    fig.tight_layout()
    return fig


def plot_per_task(records: Sequence[Mapping[str, Any]], bench: Benchmark) -> Figure:
    """Each method's mean return over seeds on each evaluated task: a group of bars per task
    (one group, named by what is evaluated, for a single-task benchmark)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    tasks = sorted({int(t) for r in records for t in r["per_task"]})
    fig, ax = _subplots(8, 1.6 + 0.3 * len(methods) * len(tasks))
    height = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        mine = [r for r in records if r["method"] == m]
        means = [
            float(np.mean([r["per_task"][str(t)]["return_mean"] for r in mine])) for t in tasks
        ]
        ys = np.arange(len(tasks)) - 0.4 + (j + 0.5) * height
        ax.barh(ys, means, height=height * 0.9, label=METHODS[m].label)
    ax.set_yticks(np.arange(len(tasks)))
    single = len(tasks) == 1
    ax.set_yticklabels([bench.evaluated_on()] if single else [f"task {t}" for t in tasks])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("episode return (mean over seeds and episodes)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    _title(ax, bench, f"return on {bench.evaluated_on()}" + ("" if single else ", per task"))
    fig.tight_layout()
    return fig


def plot_score_histogram(
    edges: np.ndarray, counts: Mapping[str, np.ndarray], bench: Benchmark
) -> Figure:
    """Episodes per score bin (``edges``, fitted to the data) of each group of episodes
    (behaviour levels, demonstrations)."""
    fig, ax = _subplots(7, 3.4)
    centers = (edges[:-1] + edges[1:]) / 2
    for group, values in counts.items():
        ax.step(centers, values, where="mid", label=f"{group} ({int(values.sum())})")
    pad = float(edges[1] - edges[0]) / 2  # half a bin beyond each end: end bins stay visible
    ax.set_xlim(float(edges[0]) - pad, float(edges[-1]) + pad)
    ax.set_xlabel(f"episode {bench.score_name} {bench.score_axis}")
    ax.set_ylabel("episodes")
    ax.legend(fontsize="small", title="episodes of", title_fontsize="small")
    _title(ax, bench, f"{bench.score_name} of the data's episodes ({bench.kind})")
    fig.tight_layout()
    return fig


def plot_learning_curve(
    history: Sequence[Mapping[str, float]], bench: Benchmark, what: str
) -> Figure:
    """The pretraining losses (``train/*`` per ``step``): the total and each of its terms."""
    fig, ax = _subplots(7, 3.4)
    skip = {"train/lr", "train/grad_norm", "train/samples_per_s"}
    keys = [k for k in dict.fromkeys(k for row in history for k in row) if k.startswith("train/")]
    for key in [k for k in keys if k not in skip]:
        rows = [r for r in history if key in r]
        style = {"lw": 2.0} if key == "train/total" else {"lw": 1.0, "alpha": 0.8}
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key[6:], **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _title(ax, bench, f"pretraining loss of {what}")
    fig.tight_layout()
    return fig


def plot_tuning_curves(
    curves: Mapping[int, Sequence[tuple[int, float]]], bench: Benchmark, what: str
) -> Figure:
    """Each task's held-out action loss of its prompt by tuning step (step 0: zero-shot)."""
    fig, ax = _subplots(7, 3.4)
    single = len(curves) == 1
    for task, points in sorted(curves.items()):
        label = bench.evaluated_on() if single else f"task {task}"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.set_xlabel("prompt-tuning step")
    ax.set_ylabel("validation action loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _title(ax, bench, f"prompt tuning, {what}")
    fig.tight_layout()
    return fig


def plot_variants(results: dict[str, dict[str, Any]], path: Path) -> None:
    """:func:`variants_table` as a plot: per method, a point per variant (mean score over
    seeds) with its std as whiskers; points, not bars, so the axis can zoom on the gaps."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    methods = methods_in(results)
    step = 0.6 / max(len(results) - 1, 1)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(methods) * len(results)))
    for j, (name, r) in enumerate(results.items()):
        rows = [(i, r["summary"][m]) for i, m in enumerate(methods) if m in r["summary"]]
        ax.errorbar(
            [s["score_mean"] for _, s in rows],
            [i - 0.3 + j * step for i, _ in rows],
            xerr=[np.nan if s["score_std"] is None else s["score_std"] for _, s in rows],
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels([METHODS[m].label for m in methods])
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("score on the held-out tasks (mean ± std over seeds; one seed: no whisker)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_versions(
    versions: list[dict[str, Any]],
    metric: str,
    path: Path,
    colors: dict[str, str],
    title: str = "registered versions",
) -> None:
    """A bar per registered version with a value of ``metric``, coloured by its first alias
    in ``colors`` (alias -> matplotlib colour; grey without one) and labelled with its
    value."""
    from matplotlib.patches import Patch

    fig, ax = _subplots(max(6.0, 2.0 + 0.5 * len(versions)), 3.4)
    shown = [v for v in versions if v["value"] is not None]
    bar_colors = [
        next((c for alias, c in colors.items() if alias in v["aliases"]), "tab:gray") for v in shown
    ]
    bars = ax.bar(
        [f"v{v['version']}" for v in shown], [v["value"] for v in shown], color=bar_colors
    )
    ax.bar_label(bars, labels=[f"{v['value']:.1f}" for v in shown], fontsize="small")
    ax.margins(y=0.15)
    handles = [Patch(color=c, label=alias) for alias, c in colors.items()]
    ax.legend(handles=[*handles, Patch(color="tab:gray", label="no alias")], fontsize="small")
    ax.set_xlabel("model version")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize="medium", loc="left")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)

"""Results figures: a comparison's scores per method, variants of one comparison, and the
registered model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmt.atomic import save_figure
from cmt.benchmarks import Benchmark
from cmt.evaluation.tables import methods_in
from cmt.methods import METHODS


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

    methods = methods_in(results)
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


def plot_versions(
    versions: list[dict[str, Any]], metric: str, path: Path, colors: dict[str, str]
) -> None:
    """A bar per registered version with a value of ``metric``, coloured by its first alias
    in ``colors`` (alias -> matplotlib colour; grey without one)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    shown = [v for v in versions if v["value"] is not None]
    bar_colors = [
        next((c for alias, c in colors.items() if alias in v["aliases"]), "tab:gray") for v in shown
    ]
    ax.bar([str(v["version"]) for v in shown], [v["value"] for v in shown], color=bar_colors)
    legend = ", ".join(f"{c.removeprefix('tab:')}: {alias}" for alias, c in colors.items())
    ax.set_xlabel(f"model version ({legend})")
    ax.set_ylabel(metric)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)

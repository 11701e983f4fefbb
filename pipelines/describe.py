"""What the runs and registered models say about themselves, in the setting's words: the
descriptions of stage runs and pipeline runs (MLflow's ``mlflow.note.content``), and the
descriptions and tags of registered models and their versions.

Every sentence is built from the benchmark layer (``kind``, ``score_name``, ``score_axis``,
``evaluated_on``) and the numbers the stage produced, so no benchmark is named here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cmt.benchmarks import Benchmark
from cmt.config import Params
from cmt.methods import METHODS

DIGEST_SHOWN = 12  # hex digits of a content hash in a sentence


def _count(n: float, what: str) -> str:
    return f"{int(n):,} {what}"


def _dataset_sentence(facts: Mapping[str, Any]) -> str:
    """One dataset file: its size, hash, and the source it was imported from."""
    text = (
        f"`{facts['name']}`: {_count(facts['transitions'], 'transitions')} in "
        f"{_count(facts['episodes'], 'episodes')} (sha256 {facts['sha256'][:DIGEST_SHOWN]}…)"
    )
    if source := facts.get("source"):
        text += f", imported from {facts.get('dataset_id') or source}"
    return text


def collect(bench: Benchmark, datasets: Sequence[Mapping[str, Any]], out_dir: str) -> str:
    """What ``collect`` wrote."""
    files = "; ".join(_dataset_sentence(f) for f in datasets)
    return (
        f"Collected the {bench.kind} dataset **{bench.name}** into `{out_dir}`: {files}. "
        f"Behaviour levels: {', '.join(bench.levels)}."
    )


def preprocess(bench: Benchmark, summary: Mapping[str, Any]) -> str:
    """What ``preprocess`` found in the data."""
    train = summary["train"]
    levels = ", ".join(
        f"{key.removesuffix('_score_mean')} {value:.1f}"
        for key, value in train.items()
        if key.endswith("_score_mean")
    )
    return (
        f"Validated and summarised **{bench.name}**: {_count(train['episodes'], 'episodes')}, "
        f"{_count(train['transitions'], 'transitions')}; mean episode return "
        f"{train['return_mean']:.2f}, mean {bench.score_name} {train['score_mean']:.1f} "
        f"{bench.score_axis}; per group: {levels}."
    )


def pretrain(
    bench: Benchmark,
    backbone: str,
    seed: int,
    steps: int,
    metrics: Mapping[str, Any],
    checkpoint: str,
) -> str:
    """What one ``pretrain`` stage trained."""
    loss = metrics.get("loss")
    final = "" if loss is None else f"; final loss {loss:.4f}"
    return (
        f"Pretrained the `{backbone}` backbone, seed {seed}, on **{bench.name}** for "
        f"{steps:,} steps ({metrics['samples_per_s']:,.0f} samples/s){final}; checkpoint "
        f"`{checkpoint}`. Figure: figures/learning_curve.png."
    )


def prompt_tune(bench: Benchmark, seed: int, metrics: Mapping[str, float]) -> str:
    """What one ``prompt_tune`` stage tuned."""
    over = ", mean over tasks" if len(bench.eval_tasks) > 1 else ""
    return (
        f"Tuned the CMT prompt (backbone frozen), seed {seed}, for {bench.evaluated_on()}: "
        f"validation action loss {metrics['val_loss_zero_shot']:.4f} (zero-shot) -> "
        f"{metrics['val_loss_tuned']:.4f} (tuned){over}; "
        f"{metrics['seconds']:.1f} s and {metrics['prompt_bytes'] / 1024:.1f} KiB per prompt. "
        "Figure: figures/prompt_tuning.png."
    )


def evaluate(bench: Benchmark, params: Params, metrics: Mapping[str, Mapping[str, float]]) -> str:
    """What ``evaluate`` measured (registration is added by :func:`registered`)."""
    scores = "; ".join(
        f"{METHODS[m].label} {s['score_mean']:.1f} (return {s['return_mean']:.1f})"
        for m, s in metrics.items()
    )
    seeds = list(params.compare.seeds)
    per = "task and seed" if len(bench.eval_tasks) > 1 else "seed"
    return (
        f"Evaluated {len(metrics)} methods × {len(seeds)} seeds {seeds} on "
        f"{bench.evaluated_on()}, {params.evaluate.episodes} episodes per {per}. "
        f"Mean {bench.score_name} {bench.score_axis} over seeds: {scores}. "
        "Figures: figures/comparison.png, figures/per_task_returns.png."
    )


def registered(name: str, version: str, alias: str) -> str:
    """The sentence ``evaluate`` adds about the version it registered."""
    return f" Registered `{name}` version {version} as `{alias}`."


def report(bench: Benchmark, model: str, versions: int) -> str:
    """What ``report`` wrote."""
    return (
        f"Results of this evaluation of **{bench.name}** (results.md, results.png), the "
        f"{versions} registered versions of `{model}` (registry.md, registry.png), and every "
        "dataset's latest evaluation (benchmarks.md)."
    )


def pipeline(bench: Benchmark, changes: Sequence[str], preset: str | None) -> str:
    """What a pipeline run of the pipeline flow is."""
    how = f" (preset `{preset}`)" if preset else ""
    changed = ", ".join(f"`{c}`" for c in changes) if changes else "nothing"
    return (
        f"The CMT pipeline on the {bench.kind} dataset **{bench.name}**{how}, run as a "
        f"DVC experiment; changed from `params.yaml`: {changed}. Its stages are the runs "
        "nested under it; the parameters here are the whole config."
    )


# ---------------------------------------------------------------------- registry


def _score_meaning(bench: Benchmark, metric: str) -> str:
    over = "its tasks' episodes" if len(bench.eval_tasks) > 1 else "its episodes"
    if metric == "score_mean":
        return f"{bench.score_name} {bench.score_axis}, the mean over {over}"
    return f"undiscounted episode return, the mean over {over}"


def model_description(bench: Benchmark, method: str, metric: str) -> str:
    """A registered model's description: what its versions are and what their score means."""
    return (
        f"**{METHODS[method].label}** (`{method}`) policies for the {bench.kind} dataset "
        f"**{bench.name}**, acting on {bench.evaluated_on()}: the pretrained backbone with "
        "its prompt for every evaluated task, loadable with "
        "`mlflow.pyfunc.load_model` without this repository.\n\n"
        f"Versions are compared by `{metric}` ({_score_meaning(bench, metric)}; higher is "
        "better): the best is `champion`, a newer one that does not beat it `challenger`. "
        f"{bench.score_caption}"
    )


def model_tags(bench: Benchmark, method: str) -> dict[str, str]:
    """Tags to filter registered models by: setting, method, dataset."""
    return {"cmt.setting": bench.kind, "cmt.method": method, "cmt.dataset": bench.name}


def version_description(
    bench: Benchmark,
    record: Mapping[str, Any],
    datasets: Sequence[Mapping[str, Any]],
    promotion: Any,
    metric: str,
) -> str:
    """A model version's description: its data, seed, score (rounded, with its scale and the
    raw return) and how it compares with the champion it met."""
    data = "; ".join(_dataset_sentence(f) for f in datasets) or bench.name
    score = (
        f"{bench.score_name} {record['score_mean']:.1f} {bench.score_axis}, mean return "
        f"{record['return_mean']:.2f}, on {bench.evaluated_on()}"
    )
    value = f"{metric} {promotion.value:.2f}"
    if promotion.previous_champion is None:
        verdict = f"`champion`: the first version with a {metric}"
    elif promotion.alias == "champion":
        verdict = (
            f"`champion`: its {value} beats version {promotion.previous_champion}"
            f" ({_previous(promotion)})"
        )
    else:
        verdict = (
            f"`challenger`: its {value} does not beat the champion, version "
            f"{promotion.previous_champion} ({_previous(promotion)})"
        )
    return (
        f"Seed {record['seed']} of `{record['method']}` (the best seed of this evaluation). "
        f"Trained on {data}. Score: {score}. {verdict}."
    )


def _previous(promotion: Any) -> str:
    prev = promotion.previous_value
    return "no recorded value" if prev is None else f"{prev:.2f}"


def version_tags(bench: Benchmark, record: Mapping[str, Any]) -> dict[str, str]:
    """Tags of a version beside the registry's own: setting, dataset, rounded scores."""
    return {
        "cmt.setting": bench.kind,
        "cmt.dataset": bench.name,
        "cmt.evaluated_on": bench.evaluated_on(),
        "cmt.score_mean": f"{record['score_mean']:.2f}",
        "cmt.return_mean": f"{record['return_mean']:.2f}",
    }

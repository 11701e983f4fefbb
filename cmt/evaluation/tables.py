"""Results tables in Markdown: one comparison, every dataset of a kind, variants of one
comparison."""

from __future__ import annotations

from typing import Any

from cmt.benchmarks import Benchmark, make_benchmark
from cmt.benchmarks.base import Claim
from cmt.config import Params, flatten
from cmt.methods import METHODS


def mean_std(mean: float, std: float | None, digits: int = 1) -> str:
    """``mean ± std``; "–" for the std of a single seed, which has none."""
    spread = "–" if std is None else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per dataset with each method's return (mean ± sample std over seeds), its
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
                else f"{mean_std(s['score_mean'], s.get('score_std'))} "
                f"(return {mean_std(s['return_mean'], s.get('return_std'))})"
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
            f"| {s['label']} | {mean_std(s['score_mean'], s['score_std'])} | "
            f"{mean_std(s['return_mean'], s['return_std'], 2)} |{cells}"
        )
    return "\n".join(lines) + "\n"


def claims_table(claims: dict[str, Any], bench: Benchmark) -> str:
    """Markdown: each comparison of :func:`cmt.evaluation.stats.claims` (method − baseline,
    paired by seed) with its mean difference, 95% t interval and verdict; the main claim's
    verdict in bold."""
    baseline = METHODS[claims["baseline"]].label
    lines = [
        f"Paired by seed: {bench.score_name} of each method minus {baseline} (the main "
        f"baseline), then {METHODS[claims['method']].label} minus each other method; mean "
        f"difference over the seeds both have and its {claims['confidence']:.0%} t interval "
        f"(sample std, ddof 1). δ = {claims['margin']:g} points. Verdict: above (lower bound "
        "> 0), at or above (lower bound > −δ), below (upper bound < 0), else undecided "
        "(docs/method.md).",
        "",
        "| method | minus | seeds | mean difference | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims["comparisons"]:
        main = (c["method"], c["baseline"]) == (claims["method"], claims["baseline"])
        diff = "–" if c["mean_difference"] is None else f"{c['mean_difference']:+.1f}"
        interval = "–" if c["lo"] is None else f"[{c['lo']:.1f}, {c['hi']:.1f}]"
        verdict = f"**{c['verdict']}**" if main else c["verdict"]
        lines.append(
            f"| {METHODS[c['method']].label} | {METHODS[c['baseline']].label} | {c['n']} | "
            f"{diff} | {interval} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def methods_in(results: dict[str, dict[str, Any]]) -> list[str]:
    """The methods any variant's summary holds, in the registry's order."""
    return [m for m in METHODS if any(m in r["summary"] for r in results.values())]


def variants_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per variant of one comparison (``{name: results.json content}``), with
    the settings in which the variants differ and each method's score, mean ± std over seeds.
    Variants must share the dataset and its test tasks: scores on other tasks do not compare."""
    if not results:
        raise ValueError("no variants to tabulate")
    flat = {name: flatten(r["params"]) for name, r in results.items()}
    scored = ("data.name", "data.test_tasks", "data.validation_tasks")
    for key in (*scored, "evaluate.episodes", "evaluate.seed"):
        if len({str(f.get(key)) for f in flat.values()}) > 1:
            raise ValueError(f"variants differ in {key}: their scores do not compare")
    keys = sorted({k for f in flat.values() for k in f})
    # compare.* says which methods a variant ran, not how they were made
    differ = [
        k
        for k in keys
        if not k.startswith("compare.") and len({str(f.get(k)) for f in flat.values()}) > 1
    ]
    methods = methods_in(results)
    head = ["variant", "settings", *(METHODS[m].label for m in methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        settings = ", ".join(f"{k}={flat[name].get(k)}" for k in differ) or "–"
        cells = []
        for m in methods:
            s = r["summary"].get(m)
            cells.append("–" if s is None else mean_std(s["score_mean"], s["score_std"]))
        lines.append(f"| {name} | {settings} | " + " | ".join(cells) + " |")
    first = next(iter(flat.values()))
    seeds = sorted({len(s["seeds"]) for r in results.values() for s in r["summary"].values()})
    # single-task benchmarks have no test tasks; carved-out validation tasks replace them
    tasks = first.get("data.validation_tasks") or first.get("data.test_tasks")
    where = f"tasks {tasks} held out of pretraining" if tasks is not None else "its one task"
    caption = (
        f"{first['data.name']}, {where}, evaluation seed {first['evaluate.seed']}; score mean "
        f"± sample std over seeds ({' or '.join(map(str, seeds))} seeds per variant) of the "
        f"mean over tasks, {first['evaluate.episodes']} episodes per task."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def variant_differences(
    records: dict[str, list[dict[str, Any]]], reference: str, claim: Claim
) -> str:
    """Markdown: each variant's methods minus the same method in the ``reference`` variant,
    then each variant's ``claim.method`` minus ``claim.baseline``, paired by seed with 95% t
    intervals (:mod:`cmt.evaluation.stats`). ``records`` maps a variant to its run records
    (``runs/*.json``). A variant without baseline runs is paired with the first variant's
    that has them (``reference`` first): right for settings the baseline does not use."""
    from cmt.evaluation.stats import paired, t_interval

    if reference not in records:
        raise ValueError(f"reference variant {reference!r} is not among {sorted(records)}")
    order = [reference, *(v for v in records if v != reference)]
    label = {m: spec.label for m, spec in METHODS.items()}
    lines = [
        f"Paired by seed, 95% t interval (sample std, ddof 1): each method of a variant minus "
        f"the same method in `{reference}`, then {label[claim.method]} minus "
        f"{label[claim.baseline]} in each variant.",
        "",
        "| variant | method | minus | seeds | mean difference | 95% interval |",
        "|---|---|---|---|---|---|",
    ]

    def row(variant: str, method: str, base: str, where: str, theirs: list[Any]) -> None:
        seeds, diffs = paired(records[variant], method, base, baseline_records=theirs)
        diff = f"{diffs.mean():+.1f}" if diffs.size else "–"
        interval = "–" if diffs.size < 2 else "[{:.1f}, {:.1f}]".format(*t_interval(diffs))
        lines.append(
            f"| {variant} | {label[method]} | {label[base]}{where} | {len(seeds)} | {diff} | "
            f"{interval} |"
        )

    def has(variant: str, method: str) -> bool:
        return any(r["method"] == method for r in records[variant])

    for v in order[1:]:
        for m in METHODS:
            if has(v, m) and has(reference, m):
                row(v, m, m, f" in `{reference}`", records[reference])
    for v in order:
        source = next((u for u in [v, *order] if has(u, claim.baseline)), None)
        if has(v, claim.method) and source is not None:
            where = "" if source == v else f" in `{source}`"
            row(v, claim.method, claim.baseline, where, records[source])
    return "\n".join(lines) + "\n"

"""The statistics that decide a claim (docs/method.md, "Statistics and verdicts"): paired t
intervals, verdicts, sample std over seeds, and results tables and claims recomputed number by
number from the per-episode lists of the run records."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cmt.atomic import write_json, write_text
from cmt.benchmarks import DATA_SECTIONS, Data, Episodes, make_benchmark
from cmt.benchmarks.base import Claim
from cmt.config import Params, parse_params
from cmt.evaluation.records import load_records, seed_record, summarize, task_stats
from cmt.evaluation.report import write_report
from cmt.evaluation.stats import (
    compare,
    paired,
    score_intervals,
    seeds_to_decide,
    t_interval,
    verdict,
)
from cmt.evaluation.tables import benchmark_table, markdown_table, variant_differences
from cmt.integrity import sealed_json
from cmt.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"data": {"test_tasks": [2, 7]}, "evaluate": {"episodes": 4}, "compare": {"seeds": [0]}}
REFERENCES = {2: (-40.0, -5.0), 7: (-30.0, -4.0)}  # (random, expert) return of each task


def t_quantile_df2(p: float) -> float:
    """Student's t quantile for 2 degrees of freedom in closed form: (2p − 1) / √(2p(1 − p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


# ---------------------------------------------------------------- the interval and verdicts
def test_t_interval_matches_a_hand_worked_example():
    """Differences 1, 2, 4: mean 7/3, sample std √(7/3), so s/√n = √7/3; t(0.975, 2) from
    its closed form (4.3026527297494...)."""
    q = t_quantile_df2(0.975)
    assert q == pytest.approx(4.302652729749464, rel=1e-14)
    half = q * math.sqrt(7) / 3
    lo, hi = t_interval([1.0, 2.0, 4.0])
    assert (lo, hi) == pytest.approx((7 / 3 - half, 7 / 3 + half), rel=1e-12)
    assert lo == pytest.approx(-1.4612497002634, abs=1e-12)
    # n = 5 with a literal quantile, t(0.975, 4) = 2.7764451051977987
    x = np.array([0.5, -1.0, 2.0, 3.5, 1.0])
    half = 2.7764451051977987 * x.std(ddof=1) / math.sqrt(5)
    assert t_interval(x) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-12)
    assert t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)  # no spread: the point itself
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


@pytest.mark.parametrize(
    ("lo", "hi", "margin", "expected"),
    [
        (0.1, 5.0, 2.0, "above"),
        (0.0, 5.0, 2.0, "at or above"),  # a bound of exactly 0 is not above
        (-1.9, 3.0, 2.0, "at or above"),
        (-2.0, 3.0, 2.0, "undecided"),  # the δ boundary: the lower bound must exceed −δ
        (-2.0, 3.0, 2.0 + 1e-9, "at or above"),
        (-4.9, 1.0, 5.0, "at or above"),
        (-5.0, 1.0, 5.0, "undecided"),
        (-3.0, -0.1, 2.0, "below"),
        (-1.0, -0.5, 2.0, "below"),  # within δ but wholly below 0: below wins
        (-3.0, 0.0, 2.0, "undecided"),  # an upper bound of exactly 0 is not below
    ],
)
def test_verdict_boundaries(lo, hi, margin, expected):
    assert verdict(lo, hi, margin) == expected


def test_seeds_to_decide_projects_the_measured_mean_and_spread():
    """Worked by hand: differences 1, 2, 3, -1, 0.5 have mean 1.1 and sample std 1.517; at 3
    seeds the half-width would be 4.303 * 1.517 / sqrt(3) = 3.77 (lower bound -2.67, undecided
    at δ 2), at 4 seeds 3.182 * 1.517 / 2 = 2.41 (lower bound -1.31: at or above)."""
    assert seeds_to_decide([1.0, 2.0, 3.0, -1.0, 0.5], margin=2.0) == (4, "at or above")
    # Mean -3, std 3: below once t * 3 / sqrt(n) < 3, i.e. t(n - 1) < sqrt(n); at 6 seeds
    # 2.571 > 2.449, at 7 seeds 2.447 < 2.646.
    assert seeds_to_decide([0.0, -3.0, -6.0], margin=2.0) == (7, "below")
    assert seeds_to_decide([5.0, -5.0], margin=0.0, limit=50) is None
    with pytest.raises(ValueError, match="at least 2"):
        seeds_to_decide([1.0], margin=2.0)


def test_every_benchmark_names_its_claim_once():
    """Method under test, main baseline and δ per data section, fixed before any new run;
    both methods are among the ones the benchmark compares."""
    claims_of = {
        s.__name__: (s.claim.method, s.claim.baseline, s.claim.margin) for s in DATA_SECTIONS
    }
    assert claims_of == {
        "PointRobotData": ("cmt_tuned", "prompt_dt", 2.0),
        "MujocoMetaData": ("cmt_tuned", "prompt_dt", 2.0),
        "D4RLData": ("cmt_tuned", "dt", 2.0),
        "SmaxData": ("cmt_tuned", "madt", 5.0),
    }
    for section in DATA_SECTIONS:
        assert {section.claim.method, section.claim.baseline} <= set(section.methods)


# ---------------------------------------------------------------- pairing
def _record(method: str, seed: int, score: float, tasks: tuple[str, ...] = ("2",)) -> dict:
    per_task = {t: {"score_mean": score, "return_mean": score} for t in tasks}
    return {"method": method, "seed": seed, "score_mean": score, "return_mean": score,
            "per_task": per_task}  # fmt: skip


def test_pairing_drops_unpaired_seeds():
    records = [_record("cmt_tuned", s, 10.0 + s) for s in (0, 1, 2, 3)]
    records += [_record("prompt_dt", s, 5.0 + 2 * s) for s in (1, 2, 3, 5)]
    seeds, diffs = paired(records, "cmt_tuned", "prompt_dt")
    assert seeds == (1, 2, 3)
    assert diffs.tolist() == [4.0, 3.0, 2.0]
    c = compare(records, "cmt_tuned", "prompt_dt", 2.0)
    assert c.seeds == (1, 2, 3) and c.mean_difference == 3.0
    half = t_quantile_df2(0.975) * 1.0 / math.sqrt(3)  # sample std of 4, 3, 2 is 1
    assert (c.lo, c.hi) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-12)
    assert c.lo == pytest.approx(0.5158, abs=1e-4) and c.verdict == "above"
    assert compare(records[:4] + records[5:], "cmt_tuned", "prompt_dt", 2.0).seeds == (2, 3)


def test_fewer_than_two_paired_seeds_are_undecided():
    records = [_record("cmt_tuned", 0, 50.0), _record("cmt_tuned", 1, 60.0)]
    records += [_record("prompt_dt", 1, 20.0), _record("prompt_dt", 2, 20.0)]
    one = compare(records, "cmt_tuned", "prompt_dt", 2.0)
    assert (one.seeds, one.mean_difference, one.lo, one.hi) == ((1,), 40.0, None, None)
    assert one.verdict == "undecided" and "1 paired seed" in one.reason
    none = compare(records, "cmt_tuned", "mtdt", 2.0)
    assert none.mean_difference is None and none.verdict == "undecided" and none.as_dict()["n"] == 0


def test_paired_records_must_share_their_tasks():
    records = [_record("cmt_tuned", 0, 1.0, ("2", "7")), _record("prompt_dt", 0, 1.0, ("2",))]
    with pytest.raises(ValueError, match="other tasks"):
        paired(records, "cmt_tuned", "prompt_dt")
    with pytest.raises(ValueError, match="twice"):
        paired([*records, _record("prompt_dt", 0, 2.0)], "cmt_tuned", "prompt_dt")


def test_variant_differences_pair_each_variant_with_the_reference_and_the_baseline():
    """An ablation's table: a variant's method minus the reference's same method, and CMT +
    tuning minus MADT, where the variant without MADT runs takes the reference's."""
    claim = Claim("cmt_tuned", "madt", 5.0)  # SMAX's
    default = [_record("cmt_tuned", s, 70.0 + s) for s in range(3)]
    default += [_record("madt", s, 80.0) for s in range(3)]
    no_ssl = [_record("cmt_tuned", s, 80.0 + 2 * s) for s in (0, 1, 2, 7)]  # seed 7 unpaired
    text = variant_differences({"no_ssl": no_ssl, "default": default}, "default", claim)
    rows = {(r[0], r[2]): r[3:] for r in md_rows(text, "| variant | method | minus")}
    half = t_quantile_df2(0.975) * 1.0 / math.sqrt(3)  # differences 10, 11, 12: std 1
    ci = f"[{11 - half:.1f}, {11 + half:.1f}]"
    assert rows["no_ssl", "CMT + prompt tuning in `default`"] == ["3", "+11.0", ci]
    ci2 = f"[{2 - 2 * half:.1f}, {2 + 2 * half:.1f}]"  # 0, 2, 4 against MADT's 80
    assert rows["no_ssl", METHODS["madt"].label + " in `default`"] == ["3", "+2.0", ci2]
    assert rows["default", METHODS["madt"].label][:2] == ["3", "-9.0"]
    with pytest.raises(ValueError, match="reference"):
        variant_differences({"no_ssl": no_ssl}, "default", claim)


# ---------------------------------------------------------------- sample std over seeds
def test_summarize_uses_the_sample_std_and_a_single_seed_has_none():
    records = [_record("cmt_tuned", 0, 40.0), _record("cmt_tuned", 1, 50.0)]
    records.append(_record("mtdt", 0, 30.0))
    summary = summarize(records)
    assert summary["cmt_tuned"]["score_std"] == pytest.approx(math.sqrt(50.0), rel=1e-12)
    assert summary["cmt_tuned"]["return_std"] == pytest.approx(math.sqrt(50.0), rel=1e-12)
    assert summary["mtdt"]["score_std"] is None and summary["mtdt"]["return_std"] is None
    table = markdown_table(summary, parse_params(PARAMS))
    assert "| 45.0 ± 7.1 |" in table and "| 30.0 ± – |" in table
    row = {"name": "x", "kind": "k", "seeds": "0", "published": None,
           "metrics": {"mtdt": {"score_mean": 30.0, "return_mean": 1.0}}}  # fmt: skip
    assert "30.0 ± – (return 1.0 ± –)" in benchmark_table([row])


def test_comparison_whiskers_are_the_t_intervals():
    from cmt.evaluation.figures import plot_comparison

    records = [_record("cmt_tuned", s, v) for s, v in enumerate((40.0, 50.0, 70.0))]
    records += [_record("prompt_dt", s, v) for s, v in enumerate((30.0, 35.0))]
    intervals = score_intervals(records)
    assert intervals["cmt_tuned"] == t_interval([40.0, 50.0, 70.0])
    fig = plot_comparison(records, make_benchmark(Params().data), intervals)
    lines = [line.get_xdata() for line in fig.axes[0].lines if line.get_linestyle() == "-"]
    whiskers = [tuple(x) for x in lines if x[0] != x[1]]
    assert whiskers == [intervals["prompt_dt"], intervals["cmt_tuned"]]  # registry order
    assert "95% t interval" in fig.get_suptitle()


# ---------------------------------------------------------------- tables from the records
def write_records(root: Path, seeds: dict[str, tuple[int, ...]], params: Params) -> None:
    """Sealed run records (``root/runs``) made by the evaluation code from random episodes."""
    bench = make_benchmark(params.data)
    data = Data(train=None, demos=None, references=REFERENCES)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    for k, (method, method_seeds) in enumerate(seeds.items()):
        for seed in method_seeds:
            per_task = {}
            for t in bench.eval_tasks:
                returns = rng.normal(-20.0 + 2.0 * k, 4.0, size=params.evaluate.episodes)
                per_task[t] = task_stats(bench, data, t, Episodes(returns))
            record = seed_record(method, seed, f"ckpt/{method}/{seed}", per_task, {})
            write_json(root / "runs" / f"{method}_seed{seed}.json", sealed_json(record))


def _seed_means(runs: list[dict], tasks: list[str], key: str) -> dict[str, np.ndarray]:
    """Each task's per-seed mean of ``key`` ("score" or "return"), (seeds,), from the
    episodes; records made before per-episode lists (no ``scores``) give only their means."""
    out = {}
    for t in tasks:
        values = []
        for r in runs:
            mean, episodes = r["per_task"][t][f"{key}_mean"], r["per_task"][t].get(f"{key}s")
            if episodes is not None:  # every stored mean is its episodes' mean, bit for bit
                assert mean == np.mean(episodes), (r["method"], t)
            values.append(mean if episodes is None else np.mean(episodes))
        out[t] = np.array(values)
    return out


def recompute(records: list[dict[str, Any]], ddof: int = 1) -> dict[str, dict[str, Any]]:
    """Each method's statistics over seeds, from the records' per-episode lists alone (std
    with ``ddof``; none for one seed when ddof is 1)."""
    out = {}
    for m in {r["method"] for r in records}:
        runs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        tasks = sorted(runs[0]["per_task"], key=int)
        score, ret = _seed_means(runs, tasks, "score"), _seed_means(runs, tasks, "return")
        seed_score = np.mean([score[t] for t in tasks], axis=0)  # (seeds,) mean over tasks
        seed_return = np.mean([ret[t] for t in tasks], axis=0)
        spread = len(runs) > ddof
        out[m] = {
            "seeds": [r["seed"] for r in runs],
            "by_seed": dict(zip([r["seed"] for r in runs], seed_score, strict=True)),
            "score_mean": seed_score.mean(),
            "score_std": seed_score.std(ddof=ddof) if spread else None,
            "return_mean": seed_return.mean(),
            "return_std": seed_return.std(ddof=ddof) if spread else None,
            "per_task_score": {t: score[t].mean() for t in tasks},
        }
    return out


def recompute_claim(ours: dict, theirs: dict, margin: float) -> dict[str, Any]:
    """The paired interval by scipy's paired t test, and the verdict by its rules."""
    seeds = sorted(set(ours["by_seed"]) & set(theirs["by_seed"]))
    a = np.array([ours["by_seed"][s] for s in seeds])
    b = np.array([theirs["by_seed"][s] for s in seeds])
    out = {"seeds": seeds, "mean_difference": float(np.mean(a - b)) if seeds else None}
    if len(seeds) < 2:
        return {**out, "lo": None, "hi": None, "verdict": "undecided"}
    lo, hi = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    said = "above" if lo > 0 else "below" if hi < 0 else "at or above" if lo > -margin else None
    return {**out, "lo": lo, "hi": hi, "verdict": said or "undecided"}


def _close(got: Any, want: Any) -> bool:
    return got is None if want is None else got == pytest.approx(want, rel=1e-9, abs=1e-9)


def _fmt(mean: float, std: float | None, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± " + ("–" if std is None else f"{std:.{digits}f}")


def md_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table whose header starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def check_results_folder(folder: Path) -> None:
    """``folder/results.{json,md}`` agree, number by number, with what the per-episode lists
    of ``folder/runs/*.json`` give; raises AssertionError where they do not.

    Results written before the statistics of docs/method.md (the attention studies under
    results/attention/) have records without per-episode lists and a results.json without
    claims, made with the population std (ddof 0): their means, stds and seeds are checked
    against the records' per-task means as they were made."""
    result = json.loads((folder / "results.json").read_text())
    records = load_records(folder)
    legacy = "claims" not in result
    with_episodes = {all("scores" in t for t in r["per_task"].values()) for r in records}
    assert with_episodes == {not legacy}, f"{folder}: records and results.json differ in format"
    want = recompute(records, ddof=0 if legacy else 1)
    summary = result["summary"]
    assert set(summary) == set(want), f"{folder}: methods differ"
    for m, w in want.items():
        got = summary[m]
        assert got["seeds"] == w["seeds"], f"{folder}: {m} seeds"
        for key in ("score_mean", "score_std", "return_mean", "return_std"):
            assert _close(got[key], w[key]), f"{folder}: {m} {key} {got[key]} != {w[key]}"
        for t, value in w["per_task_score"].items():
            assert _close(got["per_task_score"][t], value), f"{folder}: {m} task {t}"
    comparisons = [] if legacy else result["claims"]["comparisons"]
    if not legacy:
        check_claims(folder, result, want)
    check_markdown(folder, want, comparisons)


def check_claims(folder: Path, result: dict[str, Any], want: dict[str, Any]) -> None:
    """results.json's claims: the benchmark's, and recomputed from the records."""
    claim = make_benchmark(parse_params(result["params"]).data).claim
    judged = result["claims"]
    assert (judged["method"], judged["baseline"], judged["margin"]) == (
        claim.method,
        claim.baseline,
        claim.margin,
    ), f"{folder}: not the benchmark's claim"
    for c in judged["comparisons"]:
        w = recompute_claim(want[c["method"]], want[c["baseline"]], claim.margin)
        for key in ("mean_difference", "lo", "hi"):
            assert _close(c[key], w[key]), f"{folder}: {c['method']}-{c['baseline']} {key}"
        assert (c["seeds"], c["verdict"]) == (w["seeds"], w["verdict"]), folder


def check_markdown(folder: Path, want: dict, comparisons: list[dict]) -> None:
    """results.md's cells, as the recomputed numbers print."""
    text = (folder / "results.md").read_text()
    rows = {r[0]: r for r in md_rows(text, "| method |")}
    for m, w in want.items():
        row = rows[METHODS[m].label]
        assert row[1] == _fmt(w["score_mean"], w["score_std"]), f"{folder}: {m} score cell"
        assert row[2] == _fmt(w["return_mean"], w["return_std"], 2), f"{folder}: {m} return"
        tasks = list(w["per_task_score"].values())
        if len(tasks) > 1:
            assert row[3:] == [f"{v:.1f}" for v in tasks], f"{folder}: {m} per-task cells"
    if not comparisons:
        assert "| method | minus |" not in text, f"{folder}: claims without comparisons"
        return
    claim_rows = {(r[0], r[1]): r for r in md_rows(text, "| method | minus |")}
    assert len(claim_rows) == len(comparisons)
    for c in comparisons:
        w = recompute_claim(want[c["method"]], want[c["baseline"]], c["margin"])
        row = claim_rows[(METHODS[c["method"]].label, METHODS[c["baseline"]].label)]
        assert row[2] == str(len(w["seeds"]))
        diff = w["mean_difference"]
        assert row[3] == ("–" if diff is None else f"{diff:+.1f}"), f"{folder}: difference"
        interval = "–" if w["lo"] is None else f"[{w['lo']:.1f}, {w['hi']:.1f}]"
        assert row[4] == interval and row[5].strip("*") == w["verdict"], folder


SEEDS = {"prompt_dt": (0, 1, 2), "cmt_tuned": (0, 1, 2, 3), "mtdt": (1,)}


def test_report_tables_recompute_from_the_records(tmp_path):
    """write_report's results.json and results.md, recomputed from the per-episode lists
    with numpy and scipy's paired t test; a changed number is caught."""
    params = parse_params(PARAMS)
    write_records(tmp_path, SEEDS, params)
    made = write_report(tmp_path, params)
    check_results_folder(tmp_path)
    main = made["claims"]["main"]
    assert (main["method"], main["baseline"], main["seeds"]) == (
        "cmt_tuned",
        "prompt_dt",
        [0, 1, 2],
    )
    pairs = [(c["method"], c["baseline"]) for c in made["claims"]["comparisons"]]
    assert pairs == [("mtdt", "prompt_dt"), ("cmt_tuned", "prompt_dt"), ("cmt_tuned", "mtdt")]
    # the check fails when results.json or results.md disagree with the records
    result = json.loads((tmp_path / "results.json").read_text())
    text = (tmp_path / "results.md").read_text()
    result["summary"]["cmt_tuned"]["score_std"] *= 1.0001
    write_json(tmp_path / "results.json", result)
    with pytest.raises(AssertionError, match="score_std"):
        check_results_folder(tmp_path)
    write_report(tmp_path, params)
    cell = _fmt(*(result["summary"]["prompt_dt"][k] for k in ("score_mean", "score_std")))
    write_text(tmp_path / "results.md", text.replace(cell, cell.replace(" ± ", " ± 1"), 1))
    with pytest.raises(AssertionError, match="prompt_dt score cell"):
        check_results_folder(tmp_path)


def committed_results_folders() -> list[Path]:
    return sorted({p.parent.parent for p in (ROOT / "results").glob("**/runs/*.json")})


@pytest.mark.parametrize("folder", committed_results_folders(), ids=str)
def test_committed_records_reproduce_their_results(folder):
    """Every committed ``results/**/runs/`` reproduces its sibling results.json and
    results.md."""
    check_results_folder(folder)


def test_claims_script_reads_the_committed_layout(tmp_path):
    """scripts/claims.py: one row per folder with records, its claim from the benchmark of
    the folder's params; the numbers are the report's."""
    params = parse_params(PARAMS)
    folder = tmp_path / "results" / "group" / params.data.name
    write_records(folder, SEEDS, params)
    made = write_report(folder, params)
    write_text(folder / "COMMAND", "python -m pipelines.pipeline\n")
    # A validation run of the same dataset chooses, it claims nothing: skipped.
    write_records(tmp_path / "results" / "validation" / "x", SEEDS, params)
    write_report(tmp_path / "results" / "validation" / "x", params)
    # The final claim of the dataset is results/claims/<name>/; the other folder is earlier.
    final = tmp_path / "results" / "claims" / params.data.name
    write_records(final, SEEDS, params)
    write_report(final, params)
    script = runpy.run_path(str(ROOT / "scripts" / "claims.py"), run_name="claims")
    assert script["main"](["--results", str(tmp_path / "results")]) == 0
    written = json.loads((tmp_path / "results" / "claims.json").read_text())
    assert written["command"] == "python scripts/claims.py"
    row, earlier = sorted(written["datasets"], key=lambda r: r["folder"])
    main = made["claims"]["main"]
    assert row["folder"] == f"claims/{params.data.name}" and row["final"]
    assert earlier["folder"] == f"group/{params.data.name}" and not earlier["final"]
    assert earlier["kind"] == "Offline meta-RL"
    assert earlier["records_command"] == "python -m pipelines.pipeline"
    assert [s["folder"] for s in written["skipped"]] == ["validation/x"]
    for key in ("method", "baseline", "seeds", "n", "mean_difference", "lo", "hi", "margin",
                "verdict"):  # fmt: skip
        assert row[key] == main[key] == earlier[key], key
    table = (tmp_path / "results" / "claims.md").read_text()
    final_part, earlier_part = table.split(script["EARLIER_HEADING"])
    assert f"| claims/{params.data.name} |" in final_part
    assert f"| group/{params.data.name} |" in earlier_part
    assert f"| {main['verdict']} |" in table and f"[{main['lo']:.1f}, {main['hi']:.1f}]" in table
    per_seed = table.split(script["PER_SEED_HEADING"])[1]
    assert f"| claims/{params.data.name} |" in per_seed and "| group/" not in per_seed
    for seed, diff in zip(main["seeds"], main["differences"], strict=True):
        assert f"{seed}: {diff:+.1f}" in per_seed
    # Only an undecided final claim gets a projection of the seeds that would decide it.
    if main["verdict"] == "undecided":
        n, reached = seeds_to_decide(main["differences"], main["margin"])
        assert row["projection"] == {"seeds": n, "verdict": reached}
        assert f"| {n} | {reached} |" in table.split(script["UNDECIDED_HEADING"])[1]
    else:
        assert row["projection"] is None and script["UNDECIDED_HEADING"] not in table


def test_committed_claims_are_up_to_date(tmp_path):
    """results/claims.json is what scripts/claims.py makes of the committed records now."""
    committed = ROOT / "results" / "claims.json"
    if not committed.exists():
        pytest.skip("no results/claims.json committed")
    script = runpy.run_path(str(ROOT / "scripts" / "claims.py"), run_name="claims")
    assert script["main"](["--out", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "claims.json").read_text())
    assert fresh == json.loads(committed.read_text()), "run python scripts/claims.py"
    assert (tmp_path / "claims.md").read_text() == (ROOT / "results" / "claims.md").read_text()


def test_report_stage_prints_and_logs_the_verdicts(tmp_path, monkeypatch):
    """pipelines/report.py: each verdict in the log, its numbers as MLflow metrics (those that
    are defined) and the verdict as a tag of the report's run."""
    from pipelines import report

    params = parse_params(PARAMS)
    write_records(tmp_path, SEEDS, params)
    made = write_report(tmp_path, params)
    logged: dict[str, Any] = {}
    lines: list[str] = []

    class Run:
        def log_metrics(self, metrics: dict[str, float]) -> None:
            logged.update(metrics)

        def set_tags(self, tags: dict[str, str]) -> None:
            logged.update(tags)

    class Logger:
        def info(self, message: str, *args: Any) -> None:
            lines.append(message % args)

    monkeypatch.setattr(report, "get_run_logger", Logger)
    report.log_claims(Run(), made["claims"])
    main = made["claims"]["main"]
    assert logged["cmt.verdict.cmt_tuned-prompt_dt"] == main["verdict"]
    assert logged["report/claim/cmt_tuned-prompt_dt/lo"] == main["lo"]
    assert logged["report/claim/cmt_tuned-mtdt/n"] == 1
    assert "report/claim/cmt_tuned-mtdt/lo" not in logged  # one paired seed: no interval
    assert len(lines) == 3
    assert lines[1].startswith(f"claim cmt_tuned vs prompt_dt: {main['verdict']} (")


def test_save_results_copies_a_comparison_with_its_records(tmp_path):
    """scripts/save_results.py --compare: the report and the run records it was made from,
    old records replaced, and the command; a comparison that has not finished is refused."""
    params = parse_params(PARAMS)
    source = tmp_path / "compare"
    write_records(source, SEEDS, params)
    write_report(source, params)
    out = tmp_path / "results" / "claims" / "x"
    (out / "runs").mkdir(parents=True)
    write_text(out / "runs" / "stale_seed9.json", "{}")
    script = runpy.run_path(str(ROOT / "scripts" / "save_results.py"), run_name="save")
    script["save_comparison"](source, out, "cmt compare --out compare")
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        p.name for p in (source / "runs").iterdir()
    )
    assert (out / "COMMAND").read_text() == "cmt compare --out compare\n"
    check_results_folder(out)  # its tables recompute from the copied records
    (source / "results.md").unlink()
    with pytest.raises(SystemExit, match="has not finished"):
        script["save_comparison"](source, tmp_path / "other", "x")


def test_variant_table_reads_pipeline_variants_from_mlflow(tmp_path, monkeypatch):
    """Ablations run by the pipeline (``dvc exp run -S ... -n NAME``) are tabulated from the
    evaluate runs in MLflow, named by their DVC experiment: the same table as from the same
    variants' folders; the older run of a variant is left out."""
    import mlflow

    from cmt import tracking
    from pipelines.evaluate import RECORDS_ARTIFACT

    for var in ("MLFLOW_TRACKING_URI", tracking.PARENT_ENV, "DVC_EXP_NAME", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    script = runpy.run_path(str(ROOT / "scripts" / "variant_table.py"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    raw = {**PARAMS, "tracking": {"tracking_uri": uri, "experiment": "cmt"}}
    try:
        for name, w_con in (("default", 0.5), ("no_ssl", 0.7), ("no_ssl", 0.0)):
            params = parse_params({**raw, "pretrain": {"w_con": w_con}})
            folder = tmp_path / "study" / name
            write_records(folder, SEEDS, params)
            write_report(folder, params)
            with tracking.stage_run("evaluate", params, tags={"dvc.exp_name": name}) as run:
                run.log_artifact(folder / "runs", RECORDS_ARTIFACT)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)
    from_mlflow = script["write_table"](script["from_mlflow"](uri, "point_robot"), tmp_path)
    from_folders = script["write_table"](script["from_folders"](tmp_path / "study"), tmp_path)
    assert from_mlflow == from_folders
    assert "| no_ssl | pretrain.w_con=0.0 |" in from_mlflow  # the latest no_ssl run
    rows = md_rows(from_mlflow, "| variant | method | minus")
    assert [r[0] for r in rows] == ["no_ssl", "no_ssl", "no_ssl", "default", "no_ssl"]
    with pytest.raises(ValueError, match="no finished evaluate run"):
        script["from_mlflow"](uri, "cheetah_vel")

"""Regenerate the README's results and performance sections from committed result files.

    python scripts/update_readme.py          # rewrite README.md in place
    python scripts/update_readme.py --check  # exit 1 if README.md is out of date (used in tests)

Sources: ``results/claims.md`` (its final claims, written by ``scripts/claims.py``),
``results/**/benchmarks.md`` (cross-dataset tables) and ``results/<name>/results.md``
(written by the report stage, copied by ``scripts/save_results.py``; datasets of a group such
as ``results/d4rl/<name>/`` appear only in their group's cross-dataset table) and
``results/<group>/<study>/table.md`` (variant studies, written by ``scripts/variant_table.py``),
``perf/results/throughput.json`` and ``decoding.json`` (written by
``perf/throughput.py``) and ``perf/results/stage_overhead.json`` (written by
``perf/stage_overhead.py``), ``perf/results/learners.json`` and ``smax_learners.json``
(``perf/learners.py``, ``perf/smax_learners.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "results"
THROUGHPUT = ROOT / "perf" / "results" / "throughput.json"
OVERHEAD = ROOT / "perf" / "results" / "stage_overhead.json"
DECODING = THROUGHPUT.with_name("decoding.json")
DECODING_2THREADS = THROUGHPUT.with_name("decoding_2threads.json")
TRAIN_STEP = THROUGHPUT.with_name("train_step.json")
GPU = THROUGHPUT.with_name("gpu_pretrain_graphs.json")
LEARNERS = THROUGHPUT.with_name("learners.json")
SMAX_LEARNERS = THROUGHPUT.with_name("smax_learners.json")


def claims_section() -> list[str]:
    """The final claim of each dataset: ``results/claims.md`` up to its earlier runs."""
    claims = RESULTS / "claims.md"
    if not claims.exists():
        return []
    text = claims.read_text().split("\n## ", 1)[0].strip()
    return ["**Final claims** (`results/claims.md`, paired by seed)\n", text + "\n"]


def results_section() -> str:
    parts = claims_section()
    for benchmarks in sorted(RESULTS.glob("**/benchmarks.md")):
        if benchmarks.parent != RESULTS and benchmarks.parent.parent != RESULTS:
            continue  # the copies kept beside each dataset's results
        if (benchmarks.parent / "results.md").exists():
            continue
        where = benchmarks.relative_to(ROOT)
        group = "All datasets" if benchmarks.parent == RESULTS else f"{benchmarks.parent.name}"
        parts.append(f"**{group}** (`{where}`, from MLflow by the report stage)\n")
        parts.append(benchmarks.read_text().strip() + "\n")
    for md in sorted(RESULTS.glob("*/results.md")):
        cmd = md.parent / "COMMAND"
        parts.append(f"**{md.parent.name}** (`results/{md.parent.name}/`)\n")
        parts.append(md.read_text().strip() + "\n")
        if cmd.exists():
            parts.append(f"Made by: `{cmd.read_text().strip()}`\n")
    for table in sorted(RESULTS.glob("*/*/table.md")):  # variant studies (variant_table.py)
        study = table.parent
        cmd = study / "COMMAND"
        parts.append(f"**{study.parent.name}: {study.name}** (`{study.relative_to(ROOT)}/`)\n")
        parts.append(table.read_text().strip() + "\n")
        if cmd.exists():
            parts.append(f"Made by: `{cmd.read_text().strip()}`\n")
    return "\n".join(parts) if parts else "_No results committed yet._\n"


def perf_section() -> str:
    if not THROUGHPUT.exists():
        return "_No benchmark results committed yet._\n"
    r = json.loads(THROUGHPUT.read_text())
    m, peak = r["machine"], r["matmul_peak_gflops"]
    lines = [
        f"Measured by `python perf/throughput.py` on {m['cpu']} ({m['threads']} threads, "
        f"torch {m['torch']}, {r['date']}); JSON in `perf/results/throughput.json`. "
        f"This CPU's own matmul peak: {peak['fp32']} GFLOP/s fp32, {peak['bf16']} GFLOP/s bf16.",
        "",
        "| backbone | precision | batch | samples/s | MFLOP/sample | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in r["pretrain"]:
        lines.append(
            f"| {p['backbone']} | {'bf16' if p['bf16'] else 'fp32'} | {p['batch_size']} | "
            f"{p['samples_per_s']:.0f} | {p['mflop_per_sample']:.0f} | "
            f"{p['achieved_gflops']:.0f} | {100 * p['fraction_of_peak']:.0f}% |"
        )
    s, e = r["sampler"], r["evaluation"]
    lines += [
        "",
        f"Batch builder: {s['vectorised_us_per_sample']} µs per sample vectorised vs "
        f"{s['loop_us_per_sample']} µs in a per-sample loop ({s['speedup']}×). "
        f"Evaluation of {e['episodes']} episodes × {e['horizon']} steps: "
        f"{e['batched_steps_per_s']:.0f} env steps/s batched vs "
        f"{e['one_episode_steps_per_s']:.0f} one episode at a time ({e['speedup']}×).",
    ]
    return "\n".join(lines) + "\n"


def overhead_section() -> str:
    if not OVERHEAD.exists():
        return "_No stage overhead measurement committed yet._\n"
    r = json.loads(OVERHEAD.read_text())
    m, runs = r["machine"], r["noop_stage"]
    labels = {
        "baseline": f"before (`{r['baseline_rev']}`): a temporary Prefect server per stage",
        "per_stage_server": "now, sharing off (`CMT_PREFECT_SERVER_IDLE_S=0`)",
        "shared_server_start": "now, first stage (starts the shared server)",
        "shared_server": "now, every later stage",
    }
    lines = [
        f"Start-up overhead of a stage, measured by `python perf/stage_overhead.py` on "
        f"{m['cpu']} ({m['cores']} cores, Prefect {m['prefect']}, MLflow {m['mlflow']}, "
        f"{r['date']}) on a stage that does no work, median wall seconds; JSON in "
        f"`perf/results/stage_overhead.json`. *MLflow run* includes importing MLflow and "
        f"SQLAlchemy; *CPU* counts the stage process and its own temporary server, not the "
        f"shared one." + (f" {r['note']}" if r.get("note") else ""),
        "",
        "| stage | total | imports | flow start | MLflow run | flow end | exit | CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, label in labels.items():
        if mode not in runs:
            continue
        x = runs[mode]["median"]
        lines.append(
            f"| {label} | {x['wall_s']:.1f} | {x['imports_s']:.1f} | {x['flow_start_s']:.1f} | "
            f"{x['tracking_start_s'] + x['tracking_end_s']:.1f} | {x['flow_end_s']:.1f} | "
            f"{x['exit_s']:.1f} | {x['cpu_s']:.1f} |"
        )
    if "pipeline" not in r:
        lines += [
            "",
            "The default pipeline's wall time with these changes is not measured yet "
            "(`python perf/stage_overhead.py --pipeline --no-stage`).",
        ]
    elif p := r["pipeline"]:
        lines += [
            "",
            f"The default pipeline (`{p['command']}`, commit `{p['commit'][:7]}`): "
            f"{p['wall_s'] / 60:.1f} min wall for {p['stages']} stages, of which "
            f"{p['work_in_stage_runs_s'] / 60:.1f} min inside the stages' MLflow runs (the work) "
            f"and {p['outside_stage_runs_s']:.0f} s ({100 * p['outside_fraction']:.0f}%) outside "
            f"them (imports, Prefect, MLflow set-up, DVC)."
            + (f" {p['note']}" if p.get("note") else ""),
        ]
    return "\n".join(lines) + "\n"


def decoding_section() -> str:
    if not DECODING.exists():
        return "_No decoding benchmark committed yet._\n"
    r = json.loads(DECODING.read_text())
    m = r["machine"]
    lines = [
        "Measured by `python perf/throughput.py --decoding-only` (with `--preset` for "
        f"each benchmark but the embedded default) on {m['cpu']} "
        f"({m['threads']} thread(s), torch {m['torch']}, {r['date']}, fp32, load average "
        f"{r['load_average_before']:.1f} to {r['load_average_after']:.1f}); JSON in "
        "`perf/results/decoding.json`. Env steps over all episodes "
        "per second of wall time and per second of the process's CPU time (what one idle "
        "core would give); memory is the peak RSS growth during the rollouts (`getrusage` "
        "maxrss), one process per mode.",
        "",
        "| benchmark | episodes × steps | mode | env steps/s (wall) | env steps/CPU-s | "
        "peak RSS growth (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for b in r["decoding"]:
        for mode in b["modes"].values():
            lines.append(
                f"| {b['benchmark']} | {b['episodes']} × {b['horizon']} | {mode['mode']} | "
                f"{mode['steps_per_s']:.0f} | {mode['steps_per_cpu_s']:.0f} | "
                f"{mode['peak_rss_growth_mib']} |"
            )
    lines.append("")
    for name, (loop, env) in _wall_ratios().items():
        lines.append(
            f"- {name}, 2 threads (`{DECODING_2THREADS.name}`, wall clock): cached {loop:.1f}× "
            f"the one-episode loop, {100 * env:.1f}% of the raw env step rate."
        )
    for b in r["decoding"]:
        lines.append(
            f"- {b['benchmark']}, 1 thread (CPU time): cached {b['cached_over_one_episode']}× the "
            "one-episode loop, "
            f"{b['cached_over_window_batched']}× the batched window, "
            f"{100 * b['cached_over_raw_env']:.1f}% of the raw env step rate."
        )
    return "\n".join(lines) + "\n"


def _wall_ratios() -> dict[str, tuple[float, float]]:
    """Per benchmark of ``decoding_2threads.json`` (if measured), by the wall clock: the cached
    rollout over the one-episode loop, and over the raw env."""
    if not DECODING_2THREADS.exists():
        return {}
    out = {}
    for b in json.loads(DECODING_2THREADS.read_text())["decoding"]:
        w = {m: v["steps_per_s"] for m, v in b["modes"].items()}
        out[b["benchmark"]] = (
            w["banded_cached"] / w["one_episode"],
            w["banded_cached"] / w["raw_env"],
        )
    return out


def _mark(ok: bool) -> str:
    return "**met**" if ok else "not met"


def _attention_rows() -> list[tuple[str, str, str]]:
    """Cached (banded, L = K) evaluation's scores against the window model's, per test study of
    ``results/attention/``: within one of the window run's standard deviations?"""
    rows = []
    for study in sorted((RESULTS / "attention").glob("*_test")):
        runs = {v: study / v / "results.json" for v in ("window", "banded_L20")}
        if not all(p.exists() for p in runs.values()):
            continue
        window, banded = (json.loads(p.read_text())["summary"] for p in runs.values())
        parts, ok = [], []
        for method, what in (("cmt_zero_shot", "zero-shot"), ("cmt_tuned", "tuned")):
            w, b = window[method], banded[method]
            ok.append(abs(b["score_mean"] - w["score_mean"]) <= w["score_std"])
            parts.append(
                f"{what} {b['score_mean']:.1f} vs {w['score_mean']:.1f} ± {w['score_std']:.1f}"
            )
        name = study.name.removesuffix("_test")
        rows.append(
            (
                f"cached evaluation's scores within 1 std of the window model's, {name}",
                f"banded L = K vs window, CMT {'; '.join(parts)} "
                f"({len(window['cmt_tuned']['seeds'])} seeds, `{study.relative_to(ROOT)}/`)",
                "**met**" if all(ok) else f"met for {sum(ok)} of {len(ok)}",
            )
        )
    return rows


def targets_section() -> str:
    """The speed targets of the performance work, each beside the committed measurement."""
    if not all(p.exists() for p in (DECODING, TRAIN_STEP, OVERHEAD)):
        return "_Not every benchmark JSON is committed yet._\n"
    dec, ts, ov = (json.loads(p.read_text()) for p in (DECODING, TRAIN_STEP, OVERHEAD))
    rows = []
    wall2 = {k: env for k, (_, env) in _wall_ratios().items()}  # 2 threads, where measured
    for b in dec["decoding"]:
        rate = {m: v["steps_per_cpu_s"] for m, v in b["modes"].items()}
        bound = rate["raw_env"] / rate["one_episode"]  # with a model that cost nothing
        rows.append(
            (
                f"evaluation ≥ 20× the one-episode loop, {b['episodes']} episodes, "
                f"{b['benchmark']}",
                f"{b['cached_over_one_episode']}× (banded, cached; CPU time"
                + (f"; the env alone caps it at {bound:.0f}×)" if bound < 100 else ")"),
                _mark(b["cached_over_one_episode"] >= 20),
            )
        )
        rows.append(
            (
                f"evaluation ≥ ½ the raw batched env's step rate, {b['benchmark']}",
                f"{100 * b['cached_over_raw_env']:.1f}% (1 thread, CPU time)"
                + (" (the env is a few numpy operations)" if bound >= 100 else "")
                + (
                    f"; {100 * wall2[b['benchmark']]:.1f}% with 2 threads (wall clock)"
                    if b["benchmark"] in wall2
                    else ""
                ),
                _mark(b["cached_over_raw_env"] >= 0.5)
                + (
                    " with 1 thread, **met** with 2"
                    if b["cached_over_raw_env"] < 0.5 <= wall2.get(b["benchmark"], 0.0)
                    else ""
                ),
            )
        )
    rows += _attention_rows()
    sp = ts["speed"]
    gpu = json.loads(GPU.read_text()) if GPU.exists() else None
    gpu_text = ""
    if gpu:
        corl = max(
            r["samples_per_s_on_device_batches"]
            for r in gpu["runs"]
            if r.get("model") == "corl_dt" and r["size"] == "default"
        )
        best = {
            b: max(
                r["samples_per_s_on_device_batches"]
                for r in gpu["runs"]
                if r.get("backbone") == b and r["size"] == "default" and r["batch_size"] == 256
            )
            for b in ("dt", "cmt")
        }
        gpu_text = (
            f"; {gpu['device']}: DT mode {best['dt'] / corl:.1f}×, CMT {best['cmt'] / corl:.1f}×"
        )
    rows.append(
        (
            f"training step ≥ 2× CORL's, batch {ts['batch_size']}, same run",
            f"{ts['machine']['cpu']} ({ts['precision'].split(' ')[0]}): DT mode "
            f"{sp['dt']['vs_corl']}×, CMT {sp['cmt']['vs_corl']}×{gpu_text}",
            _mark(min(sp["dt"]["vs_corl"], sp["cmt"]["vs_corl"]) >= 2) + " on this CPU",
        )
    )
    pipe = ov.get("pipeline")
    later = ov["noop_stage"]["shared_server"]["median"]["wall_s"]
    if pipe:
        stage_s = sorted(pipe["stage_run_s"].values())
        median_stage = stage_s[len(stage_s) // 2] + later
        short = sorted(
            {k.split("@")[0] for k, v in pipe["stage_run_s"].items() if later > 0.1 * (v + later)}
        )
        rows.append(
            (
                "stage overhead ≤ 10% of stage time",
                f"a no-work stage takes {later:.1f} s: {100 * later / median_stage:.0f}% of the "
                f"default pipeline's median stage ({median_stage:.0f} s with it)"
                + (f"; more than 10% of the short stages ({', '.join(short)})" if short else ""),
                _mark(later <= 0.1 * median_stage) + (" for the median stage" if short else ""),
            )
        )
        rows.append(
            (
                "default pipeline ≤ 10 min on 2 cores",
                f"{pipe['wall_s'] / 60:.1f} min ({pipe['work_in_stage_runs_s'] / 60:.1f} min of "
                f"it inside the {pipe['stages']} stages' runs)",
                _mark(pipe["wall_s"] <= 600),
            )
        )
    mem = {m["transitions"]: m for m in ts["memory"]["sizes"]}
    big = mem[max(mem)]
    cached = {
        b["benchmark"]: b["modes"]["banded_cached"]["peak_rss_growth_mib"] for b in dec["decoding"]
    }
    rows.append(
        (
            "peak memory",
            f"pretraining on {max(mem):,} transitions: {big['peak_rss_mb']:.0f} MB RSS, "
            f"{big['batch_build_peak_alloc_mb']} MB per batch built (the dataset is not copied); "
            "evaluation, RSS growth: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in cached.items()),
            "measured",
        )
    )
    lines = [
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    return "\n".join(lines) + "\n"


def learners_section() -> str:
    """The behaviour learners against the ones they replaced, from their two benchmark JSONs."""
    if not (LEARNERS.exists() and SMAX_LEARNERS.exists()):
        return "_No behaviour-learner benchmark committed yet._\n"
    mujoco = json.loads(LEARNERS.read_text())
    m = mujoco["machine"]
    lines = [
        f"MuJoCo (`python perf/learners.py`, `{LEARNERS.name}`; {m['cpu']}, {m['threads']} "
        f"thread, load average {m['load_before'][0]:.1f} to {m['load_after'][0]:.1f}): "
        "environment steps/s of SAC with one gradient step per environment step, best of 2.",
        "",
        "| environment | SB3 SAC | SBX SAC (train_freq 8, the presets') | SBX TQC |",
        "|---|---|---|---|",
    ]
    for env, r in mujoco["envs"].items():
        lines.append(
            f"| {env} | {r['sb3_sac']['steps_per_s']:.0f} | {r['sbx_sac']['steps_per_s']:.0f} "
            f"({r['sbx_sac']['speedup_vs_sb3_sac']:.1f}×) | {r['sbx_tqc']['steps_per_s']:.0f} |"
        )
    for path in sorted(SMAX_LEARNERS.parent.glob("smax_learners*.json")):
        lines += ["", *smax_learners_table(path)]
    return "\n".join(lines) + "\n"


UNIT_ACTORS = {"units": ", unit-wise actor", "unit_targets": ", unit-wise actor, who shot whom"}
"""How the SMAX learner table names a preset's unit-wise actor (``data.ppo.actor_arch``)."""


def smax_learners_table(path: Path) -> list[str]:
    """One SMAX learner benchmark JSON (one per CPU measured) as a paragraph and a table."""
    smax = json.loads(path.read_text())
    m = smax["machine"]
    lines = [
        f"SMAX (`{smax['command']}`, `{path.name}`; {m['cpu']}, {m['threads']} thread, "
        f"load average {m['load_before'][0]:.1f} to {m['load_after'][0]:.1f}): agent steps/s of "
        "whole rollouts and updates; JAX MAPPO with each map's preset actor.",
        "",
    ]
    overlap = all("mappo_overlap" in r for r in smax["maps"].values())  # measured since 262260f
    if overlap:
        lines[0] += (
            " Overlapped rollouts (`overlap_rollout`): the next rollout in a second thread "
            "while the learner updates, so two computations at once."
        )
    lines += ["| map | MaskablePPO | JAX MAPPO |" + (" overlapped rollouts |" if overlap else "")]
    lines += ["|---|---|---|" + ("---|" if overlap else "")]
    for name, r in smax["maps"].items():
        actor = r["mappo"]["settings"].get("actor_arch", "mlp")
        note = UNIT_ACTORS.get(actor, "")
        row = (
            f"| {name} | {r['maskable_ppo']['agent_steps_per_s']:,.0f} | "
            f"{r['mappo']['agent_steps_per_s']:,.0f} ({r['speedup']:.1f}×{note}) |"
        )
        if overlap:
            row += (
                f" {r['mappo_overlap']['agent_steps_per_s']:,.0f} "
                f"({r['overlap_speedup']:.2f}× sequential) |"
            )
        lines.append(row)
    return lines


def render(text: str) -> str:
    sections = (
        ("results", results_section()),
        ("targets", targets_section()),
        ("performance", perf_section()),
        ("decoding", decoding_section()),
        ("overhead", overhead_section()),
        ("learners", learners_section()),
    )
    for name, body in sections:
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", flags=re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start/end --> markers")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)  # noqa: B023
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    current = README.read_text()
    new = render(current)
    if args.check:
        if new != current:
            print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

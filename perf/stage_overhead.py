"""Start-up overhead of a pipeline stage, and the default pipeline's wall time.

    python perf/stage_overhead.py              # writes perf/results/stage_overhead.json
    python perf/stage_overhead.py --repeats 1  # a quicker, noisier run
    python perf/stage_overhead.py --pipeline   # also `dvc repro` of params.yaml in a fresh
                                                     # clone of HEAD (tens of minutes)
    python perf/stage_overhead.py --pipeline --no-stage   # only that

Each part keeps the other's last results in the JSON.

The overhead is measured on a stage that does no work: the real stage entry point
(``pipelines.common.run_entry``: config validation, Prefect flow, MLflow stage run) around an
empty body, run as its own process like DVC runs a stage. Each run reports when it finished
its imports, entered its flow, opened and closed its MLflow run and returned, so the wall time
splits into those phases. Modes:

- ``baseline``: the code of ``--baseline-rev`` (a temporary server started by every stage);
- ``per_stage_server``: this code with the shared server disabled (``CMT_PREFECT_SERVER_IDLE_S=0``);
- ``shared_server_start``: this code, the first stage of a run (starts the shared server);
- ``shared_server``: this code, a later stage (finds the shared server running).

Every mode uses its own ``PREFECT_HOME`` and MLflow store, both created by an untimed first run,
so no mode pays for creating databases. ``--pipeline`` runs the default pipeline in a fresh
clone of the committed HEAD and splits its wall time into the work inside the stages' MLflow
runs and everything else (imports, Prefect, MLflow set-up, DVC).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_name  # perf/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "perf" / "results" / "stage_overhead.json"
MARKS_ENV = "CMT_BENCH_MARKS"  # where the no-work stage writes its phase times
PHASES = ("imports", "flow_start", "tracking_start", "tracking_end", "flow_end", "exit")


def noop_stage() -> int:
    """A stage that does no work, run through the real stage entry point."""
    marks = {"start": time.time()}
    from prefect import flow

    from cmt import tracking
    from pipelines.common import run_entry, run_tags, stage_parser

    marks["imported"] = time.time()

    @flow(name="noop", flow_run_name="noop")
    def noop_flow(params: Any) -> None:
        marks["flow_entered"] = time.time()
        with tracking.stage_run("noop", params, tags=run_tags()):
            marks["run_opened"] = time.time()
        marks["run_closed"] = time.time()

    def body(args: argparse.Namespace, params: Any) -> None:
        marks["flow_called"] = time.time()
        noop_flow(params)
        marks["flow_returned"] = time.time()

    code = run_entry(stage_parser("a stage that does no work"), body, sys.argv[2:])
    Path(os.environ[MARKS_ENV]).write_text(json.dumps(marks))
    try:  # how the stages end their process (not in the baseline's code)
        from pipelines.common import exit_stage
    except ImportError:
        return code
    exit_stage(code)


def run_stage(
    cmd: list[str], cwd: Path, env: dict[str, str], marks_file: Path | None
) -> dict[str, float]:
    """Wall seconds of one stage process, and of its phases."""
    spawn = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate()
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.decode()[-3000:]}")
    result = {"wall_s": round(end - spawn, 3)}
    if marks_file is not None:
        m = json.loads(marks_file.read_text())
        edges = (
            spawn,
            m["imported"],
            m["flow_entered"],
            m["run_opened"],
            m["run_closed"],
            m["flow_returned"],
            end,
        )
        for name, a, b in zip(PHASES, edges[:-1], edges[1:], strict=True):
            result[f"{name}_s"] = round(b - a, 3)
    return result


def _rusage_children() -> float:
    """CPU seconds of the finished child processes (and their waited-for children): a
    stage's own temporary server is counted, the shared server is not."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _baseline_tree(rev: str, dest: Path) -> Path:
    """The ``cmt`` and ``pipelines`` packages of ``rev``, unpacked into ``dest``."""
    archive = subprocess.run(
        ["git", "archive", rev, "cmt", "pipelines"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _env(code: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "CMT_", "DVC_"))
    }
    return {
        **env,
        "PYTHONPATH": str(code),
        "PREFECT_HOME": str(home),
        **extra,
    }


def measure_modes(work: Path, repeats: int, baseline_rev: str) -> dict[str, Any]:
    """Per mode: the median of ``repeats`` no-work stages (and each run)."""
    base = _baseline_tree(baseline_rev, work / "baseline")
    # Each code revision reads the params.yaml of its own time (new sections fail old code).
    old_params = subprocess.run(
        ["git", "show", f"{baseline_rev}:params.yaml"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    modes = {
        "baseline": (base, {}),
        "per_stage_server": (ROOT, {"CMT_PREFECT_SERVER_IDLE_S": "0"}),
        "shared_server": (ROOT, {}),
    }
    results: dict[str, Any] = {}
    stop = [sys.executable, "-m", "pipelines.server", "stop"]
    for mode, (code, extra) in modes.items():
        home = work / f"home_{mode}"
        run_dir = work / f"run_{mode}"
        run_dir.mkdir()
        if code == base:
            (run_dir / "params.yaml").write_bytes(old_params)
        else:
            shutil.copy(ROOT / "params.yaml", run_dir / "params.yaml")
        marks = work / f"marks_{mode}.json"
        env = _env(code, home, **extra, **{MARKS_ENV: str(marks)})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--noop-stage"]
        cmd += ["--params", "params.yaml"]
        print(f"{mode}: untimed first run (creates the databases)", flush=True)
        run_stage(cmd, run_dir, env, marks)
        runs, starts = [], []
        for i in range(repeats):
            if mode == "shared_server":
                # The first stage of a run starts the shared server; stop it to time that too.
                subprocess.run(stop, cwd=ROOT, env=env, check=True, capture_output=True)
                cpu0 = _rusage_children()
                starts.append({**run_stage(cmd, run_dir, env, marks)})
                starts[-1]["cpu_s"] = round(_rusage_children() - cpu0, 3)
                print(f"  shared_server_start {i}: {starts[-1]}", flush=True)
            cpu0 = _rusage_children()
            runs.append(run_stage(cmd, run_dir, env, marks))
            runs[-1]["cpu_s"] = round(_rusage_children() - cpu0, 3)
            print(f"  {mode} {i}: {runs[-1]}", flush=True)
        if mode == "shared_server":
            subprocess.run(stop, cwd=ROOT, env=env, check=True, capture_output=True)
            results["shared_server_start"] = _summary(starts)
        results[mode] = _summary(runs)
    return results


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {
        "median": {k: round(statistics.median(r[k] for r in runs), 3) for k in keys},
        "runs": runs,
    }


def measure_pipeline(work: Path) -> dict[str, Any]:
    """``dvc repro`` of the default params.yaml in a fresh clone of HEAD; its wall time, and
    how much of it the stages' MLflow runs (their work) account for."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    env = _env(clone, work / "home_pipeline")
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    out = subprocess.run(["dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    (work / "pipeline.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"dvc repro failed:\n{(out.stdout + out.stderr)[-5000:]}")
    subprocess.run(
        [sys.executable, "-m", "pipelines.server", "stop"], cwd=clone, env=env, check=True
    )
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    stages = {}
    for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`cmt.kind` = 'stage'",
    ):
        name = run.data.tags.get("dvc.stage") or run.info.run_name
        stages[name] = round((run.info.end_time - run.info.start_time) / 1000, 2)
    work_s = sum(stages.values())
    return {
        "commit": head,
        "command": "dvc repro (params.yaml, fresh clone)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(wall, 1),
        "stages": len(stages),
        "work_in_stage_runs_s": round(work_s, 1),
        "outside_stage_runs_s": round(wall - work_s, 1),
        "outside_fraction": round((wall - work_s) / wall, 3),
        "stage_run_s": dict(sorted(stages.items())),
    }


def machine() -> dict[str, Any]:
    import mlflow
    import prefect

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "mlflow": mlflow.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    if sys.argv[1:2] == ["--noop-stage"]:
        return noop_stage()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    parser.add_argument(
        "--baseline-rev", default="d4663f6", help="git revision of the 'baseline' mode's code"
    )
    parser.add_argument("--pipeline", action="store_true", help="also time `dvc repro`")
    parser.add_argument("--no-stage", action="store_true", help="skip the no-work stage")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    result: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "baseline_rev": args.baseline_rev,
    }
    with tempfile.TemporaryDirectory(prefix="cmt-stage-overhead-") as tmp:
        work = Path(tmp)
        if not args.no_stage:
            result["noop_stage"] = measure_modes(work, args.repeats, args.baseline_rev)
            result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.pipeline:
            cpu = {k: v for k, v in result["machine"].items() if not k.startswith("load")}
            pipeline = {**measure_pipeline(work), "machine": cpu, "note": args.note}
    # Read only now: the other part may have been measured meanwhile; keep its results.
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.no_stage:
        result = {k: v for k, v in previous.items() if k != "pipeline"} or result
    if args.pipeline:
        result["pipeline"] = pipeline
    elif "pipeline" in previous:
        result["pipeline"] = previous["pipeline"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(json.dumps({k: v["median"] for k, v in result.get("noop_stage", {}).items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The whole pipeline as one Prefect flow: validate the parameters, run the DVC pipeline as a
DVC experiment (``dvc exp run -S key=value ...``), and collect its metrics.

The flow's parameter is the whole validated config (:class:`cmt.config.Params`), so the
Prefect UI shows a form with every field and its description, and a bad value is rejected
before anything runs. ``overrides`` (dotted keys, e.g. ``{"pretrain.lr": 0.001}``) are applied on
top and validated the same way; they are the short form for the command line. Only the values
that differ from the repository's ``params.yaml`` are passed to DVC, so the experiment records
exactly what changed. Its stages report to one MLflow pipeline run (created here, passed down
as ``CMT_MLFLOW_PARENT_RUN_ID``).
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from the
# flow's signature, and string annotations would leave `Params` unresolved in it.

import argparse
import json
import os
import re
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from cmt import tracking
from cmt.config import Params, apply_preset, load_params, parse_params, set_dotted
from pipelines.common import PIPELINE_FLOW_RUN_ENV

DEFAULT_PARAMS = Params()
REPO_ENV = "CMT_PIPELINE_REPO"  # the repository the served deployment runs in
METRICS_FILE = Path("outputs/evaluate/metrics.json")
RESULTS_FILE = Path("outputs/report/results.md")


def repo_root() -> Path:
    return Path(os.environ.get(REPO_ENV) or Path.cwd()).resolve()


def override_value(value: Any) -> str:
    """A value in the override grammar of ``dvc exp run -S`` (Hydra's): strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"cannot pass {value!r} to dvc exp run -S")


def param_overrides(params: Params, current: Params) -> list[str]:
    """``key=value`` for every config leaf where ``params`` differs from ``current``.

    A section whose keys differ (another benchmark's ``data``) is replaced whole:
    ``~data`` deletes it and ``+data={...}`` adds the new one (Hydra's override grammar)."""
    new_raw, old_raw = params.model_dump(mode="json"), current.model_dump(mode="json")
    out: list[str] = []
    for section, values in new_raw.items():
        new = tracking.flatten(values, prefix=section)
        old = tracking.flatten(old_raw.get(section, {}), prefix=section)
        if set(new) != set(old):
            out += [f"~{section}", f"+{section}={override_value(values)}"]
        else:
            out += [f"{k}={override_value(v)}" for k, v in new.items() if old[k] != v]
    return out


@task(name="plan experiment", cache_policy=NO_CACHE)
def plan(params: Params, repo: Path) -> list[str]:
    overrides = param_overrides(params, load_params(repo / "params.yaml"))
    get_run_logger().info("parameters changed from params.yaml: %s", overrides or "none")
    return overrides


@task(name="dvc exp run", cache_policy=NO_CACHE)
def run_experiment(
    repo: Path, overrides: list[str], name: str | None, env: dict[str, str]
) -> str | None:
    """Run the DVC pipeline as an experiment in ``repo``; streams DVC's output to the log and
    returns the experiment's name."""
    logger = get_run_logger()
    cmd = ["dvc", "exp", "run"]
    if name:
        cmd += ["--name", name]
    for item in overrides:
        cmd += ["--set-param", item]
    logger.info("running: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                logger.info("%s", line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"dvc exp run failed (exit {code}):\n" + "\n".join(tail))
    found = [m.group(1) for m in map(re.compile(r"Ran experiment\(s\): (\S+)").search, tail) if m]
    return found[-1] if found else None


@task(name="collect results", cache_policy=NO_CACHE)
def collect(repo: Path) -> dict[str, Any]:
    metrics = json.loads((repo / METRICS_FILE).read_text())
    results = repo / RESULTS_FILE
    if results.exists():
        create_markdown_artifact(
            results.read_text(),
            key="cmt-results",
            description="Method comparison on the unseen tasks",
        )
    return metrics


def apply_overrides(params: Params, overrides: dict[str, Any] | None) -> Params:
    """``params`` with dotted-key overrides, validated (a bad key or value raises ConfigError)."""
    if not overrides:
        return params
    raw = params.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return parse_params(raw, "overrides")


@flow(name="cmt-pipeline")
def cmt_pipeline(
    params: Params = DEFAULT_PARAMS,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    experiment_name: str | None = None,
) -> dict[str, Any]:
    """Run collect -> preprocess -> pretrain -> prompt_tune -> evaluate -> report with
    ``params``, then the benchmark ``preset`` (``presets/<preset>.yaml``: point_robot,
    cheetah_vel, cheetah_dir, ant_dir, <env>_<level> for D4RL), then ``overrides``, as a DVC
    experiment; returns its name and metrics."""
    import mlflow
    from mlflow.entities import Metric

    if preset:
        params = parse_params(apply_preset(params.model_dump(mode="json"), preset), preset)
    params = apply_overrides(params, overrides)
    repo = repo_root()
    os.chdir(repo)  # relative paths of the config (the SQLite store) are the repository's
    changes = plan(params, repo)
    exp_id = tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    run_id = str(flow_run.id or "")
    parent = tracking.start_pipeline_run(
        client,
        exp_id,
        params,
        tags={"prefect.flow_run_id": run_id, "cmt.overrides": " ".join(changes)[:5000]},
    )
    env = {
        **os.environ,
        tracking.PARENT_ENV: parent,
        PIPELINE_FLOW_RUN_ENV: run_id,
        "MLFLOW_TRACKING_URI": tracking.resolve_tracking_uri(params.tracking),
    }
    try:
        exp = run_experiment(repo, changes, experiment_name, env)
        metrics = collect(repo)
    except BaseException as err:
        client.set_tag(parent, tracking.TAG_ERROR, f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(parent, "FAILED")
        raise
    client.set_tag(parent, "dvc.exp_name", exp or "")
    flat = tracking.flatten(metrics, sep="/")
    now = int(time.time() * 1000)
    client.log_batch(
        parent, metrics=[Metric(f"eval/{k}", float(v), now, 0) for k, v in flat.items()]
    )
    client.set_terminated(parent, "FINISHED")
    return {"experiment": exp, "mlflow_run_id": parent, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.pipeline --preset cheetah_vel``: the pipeline as a DVC experiment
    in the workspace, orchestrated by Prefect and tracked in MLflow."""
    from pipelines.common import run_entry, stage_parser

    parser = stage_parser(main.__doc__ or "")
    parser.add_argument("--name", default=None, help="DVC experiment name (default: DVC's)")

    def body(args: argparse.Namespace, params: Params) -> None:
        result = cmt_pipeline(params=params, experiment_name=args.name)
        print(json.dumps(result, indent=2, default=str))

    return run_entry(parser, body, argv)


if __name__ == "__main__":
    from pipelines.pipeline import main as _main

    raise SystemExit(_main())

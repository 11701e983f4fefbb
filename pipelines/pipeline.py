"""The whole pipeline as one Prefect flow: validate the parameters, run the DVC pipeline as a
DVC experiment (``dvc exp run -S key=value ...``), and collect its metrics.

The flow's parameter is the whole validated config (:class:`cmt.config.Params`), so the
Prefect UI shows a form with every field and its description, and a bad value is rejected
before anything runs. ``overrides`` (dotted keys, e.g. ``{"pretrain.lr": 0.001}``) are applied on
top and validated the same way; they are the short form for the command line. Only the values
that differ from the repository's ``params.yaml`` are passed to DVC, so the experiment records
exactly what changed. Its stages report to one MLflow pipeline run (created here, passed down
as ``CMT_MLFLOW_PARENT_RUN_ID``).

A failed stage ends the flow run ``Failed`` with that stage's own one-line error; a killed
pipeline is cleaned up by :mod:`pipelines.recovery` (``params.yaml`` restored, both runs
ended).
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from the
# flow's signature, and string annotations would leave `Params` unresolved in it.

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import Field

from cmt import tracking
from cmt.benchmarks import make_benchmark
from cmt.config import (
    Origins,
    Params,
    SafeName,
    apply_preset,
    load_params,
    parse_params,
    preset_names,
    set_overrides,
)
from cmt.failure import Explained, headline
from cmt.procs import process_token
from pipelines import describe, recovery, watchdog
from pipelines.common import PIPELINE_FLOW_RUN_ENV

DEFAULT_PARAMS = Params()
if TYPE_CHECKING:
    PresetName = str
else:
    PresetName = Literal[tuple(preset_names())]  # the files in presets/
# Examples shown in the deployment's form (Prefect's UI reads `example`).
OVERRIDES_EXAMPLE = {"pretrain.lr": 0.001, "compare.seeds": [0, 1]}
Overrides = Annotated[
    dict[str, Any] | None,
    Field(json_schema_extra={"example": OVERRIDES_EXAMPLE, "examples": [OVERRIDES_EXAMPLE]}),
]
ExperimentName = Annotated[
    SafeName | None, Field(json_schema_extra={"example": "lr-1e-3", "examples": ["lr-1e-3"]})
]
NEW_EXPERIMENT = "new experiment"  # a pipeline run's name until DVC has named its experiment
REPO_ENV = "CMT_PIPELINE_REPO"  # the repository the served deployment runs in
METRICS_FILE = Path("outputs/evaluate/metrics.json")
RESULTS_FILE = Path("outputs/report/results.md")
FAILED_PREFIX = "pipeline failed in "


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


@dataclass(frozen=True)
class ExperimentOutcome:
    """How ``dvc exp run`` ended: its exit code, the experiment's name, and on failure the
    one line that says why (the failed stage's own error line where it printed one)."""

    code: int
    name: str | None
    error: str


def failure_line(lines: list[str], code: int) -> str:
    """The line that explains a failed ``dvc exp run``: the failed stage (from DVC's
    "failed to reproduce" line) and the last ``error:`` line before it."""
    stage = next(
        (m.group(1) for m in map(re.compile(r"failed to reproduce '([^']+)'").search, lines) if m),
        None,
    )
    cut = next((i for i, line in enumerate(lines) if "failed to reproduce" in line), len(lines))
    own = [line for line in lines[:cut] if line.startswith("error: ")]
    why = own[-1].removeprefix("error: ") if own else (lines[-1] if lines else "")
    where = f"stage '{stage}'" if stage else f"dvc exp run (exit {code})"
    return f"{where}: {why}"


@task(name="dvc exp run", cache_policy=NO_CACHE)
def run_experiment(
    repo: Path, overrides: list[str], name: str | None, env: dict[str, str]
) -> ExperimentOutcome:
    """Run the DVC pipeline as an experiment in ``repo``; streams DVC's output to the log.

    The command is an argument list (no shell), and every value in it has been validated."""
    logger = get_run_logger()
    cmd = ["dvc", "exp", "run"]
    if name:
        cmd += ["--name", name]
    for item in overrides:
        cmd += ["--set-param", item]
    logger.info("running: %s", cmd)
    tail: deque[str] = deque(maxlen=200)
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
    lines = list(tail)
    found = [m.group(1) for m in map(re.compile(r"Ran experiment\(s\): (\S+)").search, lines) if m]
    error = failure_line(lines, code) if code else ""
    return ExperimentOutcome(code, found[-1] if found else None, error)


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


def apply_overrides(
    params: Params, overrides: dict[str, Any] | None, preset: str | None = None
) -> Params:
    """``params`` with the ``preset``, then dotted-key ``overrides``, validated: a bad key or
    value raises ConfigError naming it and whether the preset or the overrides set it."""
    if not overrides and not preset:
        return params
    origins: Origins = {}
    raw = params.model_dump(mode="json")
    if preset:
        raw = apply_preset(raw, preset, origins)
    set_overrides(raw, overrides or {}, "overrides", origins)
    return parse_params(raw, "params", origins)


def pipeline_flow_run_name() -> str:
    """A pipeline flow run's name: its dataset (after the preset and the overrides), its
    experiment (until DVC names it: "new experiment") and its start time."""
    given = dict(flow_run.parameters)
    try:
        params = Params.model_validate(given.get("params", DEFAULT_PARAMS))
        params = apply_overrides(params, given.get("overrides"), given.get("preset"))
        dataset = params.data.name
    except Exception:  # the flow refuses it, naming the key; the name needs no more
        dataset = "invalid config"
    experiment = given.get("experiment_name") or NEW_EXPERIMENT
    return tracking.pipeline_run_name(dataset, experiment)


@flow(name="cmt-pipeline", flow_run_name=pipeline_flow_run_name)
def cmt_pipeline(
    params: Params = DEFAULT_PARAMS,
    preset: PresetName | None = None,
    overrides: Overrides = None,
    experiment_name: ExperimentName = None,
) -> dict[str, Any] | State:
    """Run collect -> preprocess -> pretrain -> prompt_tune -> evaluate -> report as a DVC
    experiment; returns its name and metrics, or a Failed state naming the failed stage.

    Args:
        params: The whole config (params.yaml), every field with its description; the
            preset and the overrides are applied on top of it.
        preset: A dataset preset (presets/<preset>.yaml) applied on top of params: its data
            section replaces params' data section whole (it switches the benchmark), its
            other keys (budgets, methods, backbones) override one by one. Empty: params as
            given.
        overrides: Dotted config keys applied last, each validated like params, e.g.
            {"pretrain.lr": 0.001, "compare.seeds": [0, 1]}. Empty: none.
        experiment_name: Name of the DVC experiment (letters, digits, '_', '-', '.'), e.g.
            lr-1e-3. Empty: DVC picks one.
    """
    params = apply_overrides(params, overrides, preset)
    repo = repo_root()
    os.chdir(repo)  # relative paths of the config (the SQLite store) are the repository's
    for line in recovery.recover_all(repo):  # a killed earlier run the watchdog missed
        get_run_logger().warning("earlier killed pipeline run: %s", line)
    changes = plan(params, repo)
    # The MLflow run takes the flow run's name (pipeline_flow_run_name), start time included.
    name = str(flow_run.name or "") or pipeline_flow_run_name()
    about = describe.pipeline(make_benchmark(params.data), changes, preset)
    client, parent, env = _start_pipeline_run(params, changes, name, about)
    with _recoverable(repo, params, parent, env):
        try:
            outcome = run_experiment(repo, changes, experiment_name, env)
            if outcome.code:
                return _fail(client, parent, FAILED_PREFIX + outcome.error)
            metrics = collect(repo)
        except BaseException as err:
            _fail(client, parent, f"{type(err).__name__}: {err}")
            raise
    _finish(client, parent, outcome.name, metrics)
    return {"experiment": outcome.name, "mlflow_run_id": parent, "metrics": metrics}


def _start_pipeline_run(
    params: Params, changes: list[str], name: str, about: str
) -> tuple[Any, str, dict[str, str]]:
    """The MLflow pipeline run of this flow run (owned by this process, which ends it), and
    the environment that makes the stages of ``dvc exp run`` report under it."""
    import mlflow

    exp_id = tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    run_id = str(flow_run.id or "")
    tags = {
        "prefect.flow_run_id": run_id,
        "cmt.overrides": " ".join(changes)[:5000],
        tracking.TAG_PROCESS: process_token(),
        tracking.NOTE_TAG: about,
        **tracking.source_tags("pipelines/pipeline.py"),
    }
    parent = tracking.start_pipeline_run(client, exp_id, params, tags=tags, name=name)
    env = {
        **os.environ,
        tracking.PARENT_ENV: parent,
        PIPELINE_FLOW_RUN_ENV: run_id,
        "MLFLOW_TRACKING_URI": tracking.resolve_tracking_uri(params.tracking),
    }
    return client, parent, env


@contextlib.contextmanager
def _recoverable(repo: Path, params: Params, parent: str, env: dict[str, str]) -> Iterator[None]:
    """While the body runs, a SIGKILL of this process is put right by the watchdog (or the
    next start): the record of what to restore, and the watchdog's command to do it."""
    record = recovery.begin(
        recovery.new_record(
            repo,
            (repo / "params.yaml").read_text(),
            params.model_dump(mode="json"),
            env["MLFLOW_TRACKING_URI"],
            parent,
            env[PIPELINE_FLOW_RUN_ENV],
        )
    )
    watchdog.on_exit([sys.executable, "-m", "pipelines.recovery", str(record)])
    try:
        yield
    finally:
        watchdog.on_exit(None)
        recovery.end(record)


def _finish(client: Any, parent: str, exp_name: str | None, metrics: dict[str, Any]) -> None:
    """End the MLflow pipeline run FINISHED with the experiment's name and its metrics."""
    from mlflow.entities import Metric

    if exp_name:
        tracking.name_after_experiment(client, parent, exp_name)
    client.set_tag(parent, "dvc.exp_name", exp_name or "")
    now = int(time.time() * 1000)
    flat = tracking.flatten(metrics, sep="/")
    # A single seed's std is None (no spread over seeds): left out, as the evaluate stage does.
    client.log_batch(
        parent,
        metrics=[Metric(f"eval/{k}", float(v), now, 0) for k, v in flat.items() if v is not None],
    )
    client.set_terminated(parent, "FINISHED")


def _fail(client: Any, parent: str, message: str) -> State:
    """End the MLflow pipeline run FAILED with ``message``; the flow's Failed state."""
    client.set_tag(parent, tracking.TAG_ERROR, headline(message))
    client.log_text(parent, message + "\n", "error.txt")
    client.set_terminated(parent, "FAILED")
    return Failed(message=message)


class PipelineFailed(Explained):
    """The pipeline ran and a stage failed; the message names it and gives its error line."""


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.pipeline --preset cheetah_vel``: the pipeline as a DVC experiment
    in the workspace, orchestrated by Prefect and tracked in MLflow."""
    from pipelines.common import run_entry, stage_parser

    parser = stage_parser(main.__doc__ or "")
    parser.add_argument(
        "--name", default=None, type=_experiment_name, help="DVC experiment name (default: DVC's)"
    )

    # Before params.yaml is read: a killed earlier run may have left its experiment's values
    # there. Its Prefect flow runs are ended inside the flow, once a Prefect API is up.
    for line in recovery.recover_all(repo_root(), prefect=False):
        print(f"earlier killed pipeline run: {line}", file=sys.stderr)

    def body(args: argparse.Namespace, params: Params) -> None:
        state = cmt_pipeline(params=params, experiment_name=args.name, return_state=True)
        message = state.message or ""
        if state.is_failed() and message.startswith(FAILED_PREFIX):
            raise PipelineFailed(message)
        result = state.result()  # re-raises what the flow raised
        print(json.dumps(result, indent=2, default=str))

    return run_entry(parser, body, argv)


def _experiment_name(value: str) -> str:
    from cmt.sections import NAME_RULE, is_safe_name

    if not is_safe_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a safe name ({NAME_RULE})")
    return value


if __name__ == "__main__":
    from pipelines.pipeline import main as _main

    raise SystemExit(_main())

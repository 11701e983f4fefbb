"""What a killed pipeline leaves behind, and how it is put right.

``dvc exp run -S ...`` writes the experiment's values into the workspace ``params.yaml``, and
the pipeline flow keeps an MLflow pipeline run and a Prefect flow run ``RUNNING`` until it
ends them. A pipeline killed with SIGKILL can do neither, so while it runs it keeps a record,
``.cmt/pipeline/<pid>.json`` in the repository: its process, ``params.yaml`` as it was before
DVC changed it, the experiment's parameters, and the ids of both runs. A normal end (success
or failure) deletes the record. :func:`recover` handles a record whose process has ended:

* ``params.yaml`` goes back to its text from before the run, unless it was edited since (it
  no longer holds the experiment's values): then it is left alone, with a warning; git's
  index, where DVC stages files during the run, goes back to its state before the run;
* the MLflow pipeline run and its stage runs, if still ``RUNNING``, end ``KILLED`` with the
  reason in ``cmt.error``;
* the Prefect flow run and those of its stages, if not final, are set ``Crashed``.

The watchdog (:mod:`pipelines.watchdog`) runs ``python -m pipelines.recovery RECORD`` as soon
as the pipeline process dies; the next pipeline start recovers any record left over (the
watchdog killed too, or the Prefect server gone meanwhile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmt.atomic import write_json, write_text
from cmt.procs import is_dead, process_token

RECORD_DIR = Path(".cmt") / "pipeline"


@dataclass(frozen=True)
class PipelineRecord:
    """What :func:`recover` needs to undo a killed pipeline run."""

    process: str  # cmt.procs.process_token() of the pipeline process
    repo: str
    params_before: str  # params.yaml's text before DVC wrote the experiment's values
    index_tree: str  # git's index then (`git write-tree`): DVC stages files while it runs
    experiment_params: dict[str, Any]  # the validated config the experiment ran
    tracking_uri: str
    mlflow_run_id: str
    prefect_flow_run_id: str
    prefect_api_url: str


def record_path(repo: Path, pid: int | None = None) -> Path:
    return repo / RECORD_DIR / f"{os.getpid() if pid is None else pid}.json"


def begin(record: PipelineRecord) -> Path:
    """Write ``record`` for this process; returns its path."""
    path = record_path(Path(record.repo))
    write_json(path, asdict(record))
    return path


def end(path: Path) -> None:
    """The run ended by itself: nothing to recover."""
    path.unlink(missing_ok=True)


def read(path: Path) -> PipelineRecord | None:
    try:
        return PipelineRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # half-written by a process killed mid-write (never: writes are atomic)


def _restore_params(record: PipelineRecord, reason: str) -> str:
    from cmt.config import ConfigError, load_params

    params_file = Path(record.repo) / "params.yaml"
    current = params_file.read_text() if params_file.exists() else ""
    if current == record.params_before:
        return "params.yaml unchanged"
    try:
        holds_experiment = (
            load_params(params_file).model_dump(mode="json") == record.experiment_params
        )
    except ConfigError:
        holds_experiment = False
    if not holds_experiment:
        warnings.warn(
            f"{params_file} was edited after the killed pipeline run: left as it is",
            UserWarning,
            stacklevel=2,
        )
        return "params.yaml edited since: left alone"
    write_text(params_file, record.params_before)
    return "params.yaml restored"


def _restore_index(record: PipelineRecord, reason: str) -> str:
    """DVC stages params.yaml, dvc.lock and outputs while it runs an experiment and unstages
    them when done; after a kill, git's index goes back to what it was before the run."""
    if not record.index_tree:
        return "no git index recorded"
    out = _git(Path(record.repo), "read-tree", record.index_tree)
    if out.returncode:
        raise RuntimeError(f"git read-tree {record.index_tree}: {out.stderr.strip()}")
    return "git index restored"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, timeout=60, check=False
    )


def index_tree(repo: Path) -> str:
    """The tree of git's index in ``repo`` (``git write-tree``); empty if there is none."""
    out = _git(repo, "write-tree")
    return out.stdout.strip() if out.returncode == 0 else ""


def _end_mlflow_run(record: PipelineRecord, reason: str) -> str:
    import mlflow

    from cmt import tracking

    client = mlflow.MlflowClient(record.tracking_uri)
    run = client.get_run(record.mlflow_run_id)
    stages = tracking.reap_dead_runs(client, run.info.experiment_id)  # its killed stages
    if run.info.status not in ("RUNNING", "SCHEDULED"):
        return f"MLflow run {record.mlflow_run_id} already {run.info.status}"
    client.set_tag(record.mlflow_run_id, tracking.TAG_ERROR, reason)
    client.set_terminated(record.mlflow_run_id, "KILLED")
    return f"MLflow run {record.mlflow_run_id} marked KILLED ({len(stages)} stage runs too)"


def _crash_flow_run(record: PipelineRecord, reason: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Crashed

    if not record.prefect_flow_run_id:
        return "no Prefect flow run"
    run_id = UUID(record.prefect_flow_run_id)
    with get_client(sync_client=True) as client:
        # The pipeline's flow run, and those of its stages (tagged with it, pipelines/common.py).
        stages = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"pipeline:{run_id}"]))
        )
        crashed = []
        for run in [client.read_flow_run(run_id), *stages]:
            if run.state is None or not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
                crashed.append(run.name)
    return f"Prefect flow runs marked CRASHED: {crashed or 'none (already ended)'}"


def recover(path: Path, prefect: bool = True) -> list[str]:
    """Undo what the killed pipeline run of record ``path`` left (see module docstring);
    returns what was done. The record is deleted once every step succeeded, so a step that
    failed (a Prefect server not running) or was left out (``prefect=False``: no Prefect API
    yet) is tried again later."""
    record = read(path)
    if record is None:
        path.unlink(missing_ok=True)
        return []
    if not is_dead(record.process):
        return []  # still running
    reason = f"killed: pipeline process {record.process} ended without ending its run"
    done, failed = [], []
    steps = [_restore_params, _restore_index, _end_mlflow_run]
    steps += [_crash_flow_run] if prefect else []
    for step in steps:
        try:
            done.append(step(record, reason))
        except Exception as err:  # a store or server not reachable now: retried next start
            failed.append(f"{step.__name__.strip('_')}: {type(err).__name__}: {err}")
    if not failed and prefect:
        path.unlink(missing_ok=True)
    return done + [f"not done yet: {f}" for f in failed]


def recover_all(repo: Path, prefect: bool = True) -> list[str]:
    """Recover every record of a dead pipeline process in ``repo``."""
    out = []
    for path in sorted((repo / RECORD_DIR).glob("*.json")):
        out += recover(path, prefect)
    return out


def new_record(
    repo: Path,
    params_before: str,
    experiment_params: dict[str, Any],
    tracking_uri: str,
    mlflow_run_id: str,
    prefect_flow_run_id: str,
) -> PipelineRecord:
    """The record of this process's pipeline run."""
    from prefect.settings import PREFECT_API_URL

    return PipelineRecord(
        process=process_token(),
        repo=str(repo),
        params_before=params_before,
        index_tree=index_tree(repo),
        experiment_params=experiment_params,
        tracking_uri=tracking_uri,
        mlflow_run_id=mlflow_run_id,
        prefect_flow_run_id=prefect_flow_run_id,
        prefect_api_url=str(PREFECT_API_URL.value() or ""),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.recovery RECORD``: recover one record (the watchdog's call)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0])
    record = read(path)
    url = record.prefect_api_url if record else ""
    with temporary_settings({PREFECT_API_URL: url} if url else {}):
        for line in recover(path):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

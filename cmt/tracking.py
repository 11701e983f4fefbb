"""MLflow tracking for the pipeline entry points: one run per stage execution, grouped under
one pipeline run, and the model registry with its ``champion`` / ``challenger`` aliases.

Nothing happens on import, and the library (:mod:`cmt.experiment` and below) never imports
this module: entry points call :func:`configure` or :func:`stage_run` explicitly.

**Grouping.** Every stage execution is a child run (tag ``mlflow.parentRunId``) of a pipeline
run. The parent is the run named by the environment variable ``CMT_MLFLOW_PARENT_RUN_ID``
when it is set (the Prefect pipeline flow sets it for the ``dvc exp run`` it starts);
otherwise it is the pipeline run whose tag ``cmt.pipeline_key`` matches this configuration
(a hash of the validated config without the orchestration section, plus the git commit),
created by the first stage that needs it. So all stages of one ``dvc repro`` of one config
share a parent, and a rerun after a failure joins the same parent.

**Crashes.** A stage run records its process (tag ``cmt.process``: host, pid, start time). A
stage killed with SIGKILL cannot end its own run; the next stage that starts on the same host
marks such runs (and their pipeline run) ``KILLED`` with the reason in ``cmt.error``.

**What a run says about itself.** A pipeline run is named for its dataset, DVC experiment
and start time; a stage run logs only the parameters that affect it (the caller names their
sections), its datasets as MLflow dataset inputs (the content hash as digest, the file or the
imported source as source), its description (``mlflow.note.content``) and its git commit as
its source.

**Promotion** is a compare-and-set under an exclusive lock (:func:`promotion_lock`), and
only a finite value of the primary metric can take the ``champion`` alias.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmt.config import Params, TrackingConfig, flatten
from cmt.failure import describe, headline
from cmt.integrity import NonFiniteError
from cmt.procs import is_dead, process_token

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput

PARENT_ENV = "CMT_MLFLOW_PARENT_RUN_ID"
TAG_KIND = "cmt.kind"  # "pipeline" or "stage"
TAG_STAGE = "cmt.stage"
TAG_KEY = "cmt.pipeline_key"
TAG_ERROR = "cmt.error"
TAG_PROCESS = "cmt.process"  # "<host> <pid> <start time>" of the process running a stage
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description
SCORE_DIGITS = 2  # registry tags and promotion compare scores rounded to this
CHAMPION, CHALLENGER = "champion", "challenger"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def _root() -> Path:
    # DVC sets DVC_ROOT to the repository of the pipeline, also for `dvc exp run --temp`,
    # whose commands run in a temporary copy: a relative store must not land in that copy.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``cfg.tracking_uri`` with relative SQLite paths
    made absolute against the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((_root() / uri[len(prefix) :]).resolve())
    return uri


def _is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in {"http", "https", "databricks"}


def _artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    loc = cfg.artifact_location
    if "://" in loc or loc.startswith("mlflow-artifacts:"):
        return loc
    # A tracking server chooses its own artifact store; a local directory is only meaningful
    # next to a local store.
    return None if _is_remote(uri) else (_root() / loc).resolve().as_uri()


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        try:
            exp_id = client.create_experiment(
                cfg.experiment, artifact_location=_artifact_location(cfg, uri)
            )
        except MlflowException:  # created by a concurrent process in the meantime
            created = client.get_experiment_by_name(cfg.experiment)
            if created is None:
                raise
            exp_id = created.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def config_params(params: Params, keys: Iterable[str] | None = None) -> dict[str, str]:
    """The validated config as MLflow params (dotted keys, JSON values): the keys under the
    dotted prefixes ``keys`` (every key when None), without the data fields that have no
    effect under these settings (``DataSection.unused_fields``)."""
    raw = params.model_dump(mode="json")
    unused = set(params.data.unused_fields())
    raw["data"] = {k: v for k, v in raw["data"].items() if k not in unused}
    flat = flatten(raw)
    if keys is not None:
        prefixes = tuple(keys)
        flat = {
            k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in prefixes)
        }
    return {
        k: (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN] for k, v in flat.items()
    }


_COMMITS: dict[Path, str] = {}


def _git_commit() -> str:
    root = _root()
    if root in _COMMITS:  # asked by every run a stage opens; it cannot change meanwhile
        return _COMMITS[root]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    _COMMITS[root] = commit = out.stdout.strip() if out.returncode == 0 else ""
    return commit


def source_tags(entry: str) -> dict[str, str]:
    """MLflow's source tags: the entry point and the git commit it ran at (the UI's Source
    and Version columns)."""
    commit = _git_commit()
    tags = {"mlflow.source.name": entry, "mlflow.source.type": "LOCAL"}
    return {**tags, "mlflow.source.git.commit": commit} if commit else tags


def pipeline_run_name(dataset: str, experiment: str | None, started: float | None = None) -> str:
    """``<dataset> · <DVC experiment, or workspace> · <local start time>``: what tells one
    pipeline run from another in a list of them."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return " · ".join([dataset, experiment or "workspace", stamp])


def pipeline_key(params: Params, commit: str | None = None) -> str:
    """What identifies one pipeline execution: the config (not how it is orchestrated) and
    the code version."""
    config = params.model_dump(mode="json", exclude={"orchestration"})
    commit = _git_commit() if commit is None else commit
    blob = json.dumps({"config": config, "commit": commit}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def start_pipeline_run(
    client: MlflowClient,
    experiment_id: str,
    params: Params,
    tags: Mapping[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Create a pipeline (parent) run, with the config as params; returns its id. Its name
    defaults to :func:`pipeline_run_name` of the dataset and the DVC experiment running."""
    key = pipeline_key(params)
    name = name or pipeline_run_name(params.data.name, os.environ.get("DVC_EXP_NAME"))
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            TAG_KIND: "pipeline",
            TAG_KEY: key,
            "git.commit": _git_commit(),
            "cmt.dataset": params.data.name,
            NOTE_TAG: f"The pipeline on dataset {params.data.name}; its stages are the runs "
            "nested under it. Parameters: the whole config.",
            **source_tags("dvc.yaml"),
            **{k: v for k, v in _dvc_tags().items() if k == "dvc.exp_name"},
            **(tags or {}),
        },
    )
    run_id = run.info.run_id
    _log_config(client, run_id, params)
    return run_id


def with_experiment(name: str, experiment: str) -> str:
    """A :func:`pipeline_run_name` with its DVC experiment set to ``experiment`` (any other
    name unchanged)."""
    parts = name.split(" · ")
    return " · ".join([parts[0], experiment, parts[2]]) if len(parts) == 3 else name


def name_after_experiment(client: MlflowClient, run_id: str, experiment: str) -> None:
    """Name the pipeline run ``run_id`` after its DVC ``experiment`` (tag ``dvc.exp_name``),
    unless it already is."""
    run = client.get_run(run_id)
    if run.data.tags.get("dvc.exp_name") == experiment:
        return
    client.set_tag(run_id, "dvc.exp_name", experiment)
    name = run.info.run_name or ""
    if (renamed := with_experiment(name, experiment)) != name:
        client.update_run(run_id, name=renamed)


def find_pipeline_run(
    client: MlflowClient, experiment_id: str, params: Params, key: str | None = None
) -> str:
    """The parent run for a stage: the env var's run, or the one of this config, or a new one."""
    if run_id := os.environ.get(PARENT_ENV):
        return run_id
    key = key or pipeline_key(params)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'pipeline' and tags.`{TAG_KEY}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    return start_pipeline_run(client, experiment_id, params)


def _log_config(
    client: MlflowClient, run_id: str, params: Params, keys: Iterable[str] | None = None
) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in config_params(params, keys).items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_dict(run_id, params.model_dump(mode="json"), "config/params.yaml")


@dataclass
class StageRun:
    """Handle of one stage execution's MLflow run. Every method names the run explicitly,
    so it may be used from task threads too (MLflow's fluent API is per thread)."""

    client: MlflowClient
    run_id: str
    parent_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def metrics_callback(self, prefix: str = "") -> Callable[[int, dict[str, float]], None]:
        """An ``on_metrics(step, metrics)`` callback for the library's training loops."""
        return lambda step, m: self.log_metrics({prefix + k: v for k, v in m.items()}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, payload, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def describe(self, text: str) -> None:
        """The run's description in the MLflow UI: what the stage did."""
        self.client.set_tag(self.run_id, NOTE_TAG, text)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact (``figures/...``); the figure is closed."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 110})
        finally:
            plt.close(figure)

    def log_datasets(
        self, data_dir: str | Path, context: str, demos: bool = True
    ) -> list[dict[str, Any]]:
        """The dataset files of ``data_dir`` (the training data, and the demonstrations where
        there are any unless ``demos`` is false) as the run's dataset inputs (the Dataset
        column of the MLflow UI), tagged ``mlflow.data.context`` = ``context``; returns what
        was logged (:func:`dataset_input`)."""
        from cmt.benchmarks.base import DEMOS_FILE, TRAIN_FILE

        data_dir = Path(data_dir)
        name = data_dir.name
        found = [(data_dir / TRAIN_FILE, name)]
        found += [(data_dir / DEMOS_FILE, f"{name} demos")] if demos else []
        inputs = [dataset_input(path, label, context) for path, label in found if path.is_file()]
        self.client.log_inputs(self.run_id, datasets=[i for i, _ in inputs])
        return [info for _, info in inputs]


def reap_dead_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark ``KILLED`` every run still ``RUNNING`` whose process, on this host, has ended (a
    SIGKILLed stage or pipeline cannot end its run): stage runs, and pipeline runs that
    record the pipeline process that owns them (those the pipeline flow creates); a killed
    stage's pipeline run too. Returns their ids."""
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    reaped = []
    for run in running:
        token = run.data.tags.get(TAG_PROCESS, "")
        if run.data.tags.get(TAG_KIND) not in ("stage", "pipeline") or not token:
            continue  # not ours, or from before processes were recorded
        if not is_dead(token):
            continue  # alive, or on another host
        run_id = run.info.run_id
        client.set_tag(run_id, TAG_ERROR, f"killed: process {token} ended without ending the run")
        client.set_terminated(run_id, "KILLED")
        reaped.append(run_id)
        parent = run.data.tags.get(PARENT_TAG)
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_tag(parent, TAG_ERROR, f"stage {run.info.run_name} was killed")
            client.set_terminated(parent, "KILLED")
    return reaped


def _dvc_tags() -> dict[str, str]:
    """The DVC stage and experiment a stage runs in, from the variables DVC sets."""
    names = (
        ("dvc.stage", "DVC_STAGE"),
        ("dvc.exp_name", "DVC_EXP_NAME"),
        ("dvc.baseline_rev", "DVC_EXP_BASELINE_REV"),
    )
    return {tag: os.environ[var] for tag, var in names if os.environ.get(var)}


DIGEST_LEN = 16  # hex digits of the content hash shown as a dataset's digest (MLflow: <= 36)


def hdf5_facts(path: str | Path) -> dict[str, Any]:
    """What identifies a dataset file without loading it: its recorded content hash, its
    transitions and episodes, and the source it was imported from (``metadata/source``,
    ``source_kind``, ``dataset_id``) where it records one."""
    import h5py
    import numpy as np

    from cmt.integrity import HASH_KEY

    with h5py.File(path, "r") as f:
        ends = np.asarray(f["terminals"][()], bool) | np.asarray(f["timeouts"][()], bool)
        meta = f.get("metadata")
        source = {
            key: (value.decode() if isinstance(value, bytes) else str(value))
            for key in ("source", "source_kind", "dataset_id")
            if meta is not None and key in meta and (value := meta[key][()]) is not None
        }
        return {
            "sha256": str(f.attrs.get(HASH_KEY, "")),
            "transitions": int(ends.size),
            "episodes": int(ends.sum()),
            **source,
        }


def dataset_input(path: Path, name: str, context: str) -> tuple[DatasetInput, dict[str, Any]]:
    """A dataset file as an MLflow dataset input: digest the start of its content hash,
    source the file it was imported from (a D4RL file, a Minari dataset) or else the file
    itself, profile its size and the whole hash. Also returns those facts."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    facts = {"name": name, "file": str(path.resolve()), **hdf5_facts(path)}
    source = facts.get("source") or facts["file"]
    profile = {k: facts[k] for k in ("transitions", "episodes", "sha256")}
    dataset = Dataset(
        name=name,
        digest=facts["sha256"][:DIGEST_LEN] or "unhashed",
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps(profile),
    )
    tags = {"mlflow.data.context": context, "cmt.file": facts["file"]}
    tags.update({f"cmt.{k}": facts[k] for k in ("source_kind", "dataset_id") if k in facts})
    return DatasetInput(dataset, [InputTag(k, v) for k, v in tags.items()]), facts


def _create_stage_run(
    client: MlflowClient,
    exp_id: str,
    stage: str,
    parent: str,
    name: str,
    tags: Mapping[str, str],
) -> StageRun:
    """A new stage run under ``parent``: its stage, process, source, DVC stage and ``tags``."""
    run = client.create_run(
        exp_id,
        run_name=name,
        tags={
            PARENT_TAG: parent,
            TAG_KIND: "stage",
            TAG_STAGE: stage,
            TAG_PROCESS: process_token(),
            **source_tags(f"pipelines/{stage}.py"),
            **_dvc_tags(),
            **tags,
        },
    )
    return StageRun(client, run.info.run_id, parent)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    param_keys: Iterable[str] | None = None,
) -> Iterator[StageRun]:
    """Run a stage inside its own MLflow run, nested under the pipeline run.

    The config keys under the dotted prefixes ``param_keys`` (every key when None) are logged
    as params, the whole config as ``config/params.yaml``. If the body raises, the run (and
    the pipeline run) end FAILED with the start of the error's message as tag ``cmt.error``
    and the whole message, then the traceback, as ``error.txt``, and the exception
    propagates. The run is also the active fluent run of the calling thread, for APIs such as
    ``mlflow.pyfunc.log_model``.
    """
    import mlflow

    exp_id = configure(params.tracking)
    client = mlflow.MlflowClient(mlflow.get_tracking_uri())
    reap_dead_runs(client, exp_id)
    key = pipeline_key(params)
    parent = find_pipeline_run(client, exp_id, params, key)
    # A pipeline run named by the env var belongs to the pipeline flow, which ends it itself.
    owned = bool(os.environ.get(PARENT_ENV))
    if not owned:
        client.update_run(parent, status="RUNNING")
    elif experiment := os.environ.get("DVC_EXP_NAME"):
        # DVC names the experiment once it runs: the first stage puts it in the name.
        name_after_experiment(client, parent, experiment)
    tags = {TAG_KEY: key, "cmt.dataset": params.data.name, **(tags or {})}
    handle = _create_stage_run(client, exp_id, stage, parent, run_name or stage, tags)
    _log_config(client, handle.run_id, params, param_keys)
    mlflow.start_run(run_id=handle.run_id)
    try:
        yield handle
    except BaseException as err:
        # Not an Exception: Ctrl-C, or SIGTERM, which Prefect raises as TerminationSignal
        # (the watchdog's way of stopping a stage whose pipeline was killed).
        killed = not isinstance(err, Exception)
        status = "KILLED" if killed else "FAILED"
        message = describe(err, joined=False)
        # A tag is cut off in the UI: its start there, the whole message in error.txt, first,
        # as the artifact view shows the top of the file.
        client.set_tag(handle.run_id, TAG_ERROR, headline(message))
        client.log_text(handle.run_id, f"{message}\n\n{traceback.format_exc()}", "error.txt")
        mlflow.end_run(status)
        if not (killed and owned):  # a killed pipeline's run is ended by its recovery
            client.set_tag(parent, TAG_ERROR, f"stage {run_name or stage} failed")
            client.set_terminated(parent, status)
        raise
    else:
        mlflow.end_run("FINISHED")
        if not owned:
            # The parent's status is that of its latest stage: FINISHED until a stage fails.
            client.set_terminated(parent, "FINISHED")


# ---------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Promotion:
    """What the evaluate stage did with a new model version."""

    name: str
    version: str
    alias: str  # "champion" or "challenger"
    value: float
    previous_champion: str | None
    previous_value: float | None


def _version_value(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    """The version's recorded ``metric``; None if it is missing or not a number."""
    raw = client.get_model_version(name, version).tags.get(f"cmt.{metric}")
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


@contextlib.contextmanager
def promotion_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock around the read-compare-set of the aliases.

    For a SQLite store it is a file beside the database, which every process that writes
    the store can reach; for any other store it is a file in this machine's temp directory,
    which serialises promotions from this machine only."""
    import fcntl

    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        path = Path(tracking_uri[len(prefix) :] + ".promote.lock")
    else:
        key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"cmt-promote-{key}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if killed
        yield


def promote(client: MlflowClient, name: str, version: str, metric: str, value: float) -> Promotion:
    """Record ``value`` of ``metric`` (higher is better) on the version; move ``champion`` to it
    if it beats the current champion (or there is none, or the champion's value is missing or
    not finite), otherwise set ``challenger``.

    A non-finite ``value`` raises :class:`~cmt.integrity.NonFiniteError` and changes nothing.
    Reading the champion and moving the alias happen under :func:`promotion_lock`, so two
    concurrent promotions cannot interleave (the later one compares with the earlier's result).
    """
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{name} version {version}: {metric} = {value} is not finite")
    # Rounded as the tag shows it, and compared so: differences below that are noise.
    value = round(value, SCORE_DIGITS)
    client.set_model_version_tag(name, version, "cmt.primary_metric", metric)
    client.set_model_version_tag(name, version, f"cmt.{metric}", f"{value:.{SCORE_DIGITS}f}")
    with promotion_lock(client.tracking_uri):
        return _compare_and_set(client, name, version, metric, value)


def _compare_and_set(
    client: MlflowClient, name: str, version: str, metric: str, value: float
) -> Promotion:
    """The body of :func:`promote`, run under its lock."""
    from mlflow.exceptions import MlflowException

    try:
        champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:  # no champion yet
        champion = None
    prev = None if champion is None else _version_value(client, name, champion, metric)
    wins = champion is None or prev is None or not math.isfinite(prev) or value > prev
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    if wins and champion is not None:
        # The old champion stays registered; only the challenger alias is cleared if it pointed
        # at the version that now wins.
        with contextlib.suppress(MlflowException):
            if str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version):
                client.delete_registered_model_alias(name, CHALLENGER)
    return Promotion(name, str(version), alias, float(value), champion, prev)


def registry_rows(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """One row per registered version: aliases, primary metric, method, seed, source run."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        metric = mv.tags.get("cmt.primary_metric", "")
        raw = mv.tags.get(f"cmt.{metric}") if metric else None
        rows.append(
            {
                "version": int(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "metric": metric,
                "value": None if raw is None else float(raw),
                "method": mv.tags.get("cmt.method", ""),
                "seed": mv.tags.get("cmt.seed", ""),
                "run_id": mv.run_id,
                "dvc_exp": mv.tags.get("dvc.exp_name", ""),
                "created": int(mv.creation_timestamp or 0),
            }
        )
    return sorted(rows, key=lambda r: r["version"])

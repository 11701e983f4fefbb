"""What every stage entry point shares: its command line, config loading, Prefect set-up,
its MLflow run (name, tags, the parameters it logs), its flow run as a child of the pipeline
flow run, and exit codes."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from prefect import tags, task
from prefect.cache_policies import NO_CACHE

from cmt import tracking
from cmt.cli import add_config_options, params_from_args
from cmt.config import ConfigError, Params
from cmt.failure import report
from cmt.integrity import ArtifactError

PIPELINE_FLOW_RUN_ENV = "CMT_PREFECT_PIPELINE_RUN"  # set by the pipeline flow for its stages
EPHEMERAL_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def stage_task(**kwargs: Any) -> Any:
    """Prefect's ``@task(...)`` without input caching: DVC decides what reruns, and Prefect's
    own caching would only hide work from it."""
    return task(cache_policy=NO_CACHE, **kwargs)


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The options every stage command has: ``--params``, ``--preset`` and ``--set``."""
    parser = argparse.ArgumentParser(description=description)
    add_config_options(parser)
    return parser


def dataset_dir(params: Params, given: str | None) -> str:
    """The dataset directory: as given, else ``data/<name>``, where ``collect`` writes it."""
    return given or f"data/{params.data.name}"


def eval_tasks(params: Params) -> tuple[int, ...]:
    """The tasks a stage maps over (one Prefect task each): the benchmark's evaluated tasks."""
    from cmt.benchmarks import make_benchmark

    return make_benchmark(params.data).eval_tasks


def stage_param_keys(stage: str) -> tuple[str, ...] | None:
    """The config keys (sections or dotted keys) that ``stage``'s results depend on: its
    ``params`` in ``dvc.yaml``, the one list of them. None (every key) without a
    ``dvc.yaml`` that names the stage (a stage run outside the repository)."""
    import yaml

    path = Path(os.environ.get("DVC_ROOT") or Path.cwd()) / "dvc.yaml"
    try:
        spec = yaml.safe_load(path.read_text())["stages"][stage]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    spec = spec.get("do", spec)  # a `foreach` stage keeps its definition under `do`
    return tuple(str(key) for key in spec.get("params", []) if isinstance(key, str))


def stage_run(
    stage: str, params: Params, tags: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[tracking.StageRun]:
    """The stage's MLflow run (:func:`cmt.tracking.stage_run`), named as its Prefect flow
    run, linked to it by tags, logging the parameters of :func:`stage_param_keys`."""
    from prefect.runtime import flow_run

    name = stage
    with contextlib.suppress(Exception):
        name = str(flow_run.name or stage)
    return tracking.stage_run(
        stage,
        params,
        run_name=name,
        tags={**run_tags(), **(tags or {})},
        param_keys=stage_param_keys(stage),
    )


def run_tags() -> dict[str, str]:
    """MLflow tags that link a stage's run to its Prefect flow run."""
    from prefect.runtime import flow_run

    out = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": ""}
    with contextlib.suppress(Exception):
        out["prefect.flow_run_name"] = str(flow_run.name or "")
    if parent := os.environ.get(PIPELINE_FLOW_RUN_ENV):
        out["prefect.pipeline_run_id"] = parent
    return out


def _prefect_tags(params: Params | None = None) -> list[str]:
    out = ["cmt"]
    if params is not None:
        out.append(f"dataset:{params.data.name}")
    if parent := os.environ.get(PIPELINE_FLOW_RUN_ENV):
        out.append(f"pipeline:{parent}")
    if exp := os.environ.get("DVC_EXP_NAME"):
        out.append(f"dvc-exp:{exp}")
    return out


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out: the stage's last line says what failed
    and where its log file is; the Prefect UI and that file keep the tracebacks."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class LogTail(logging.Handler):
    """The last Prefect log lines (tracebacks included), for the log file of a failure."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(
            logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def quiet_console_tracebacks(tail: LogTail) -> Iterator[None]:
    """Prefect's console handlers print without tracebacks; ``tail`` records everything."""
    from prefect.logging.handlers import PrefectConsoleHandler

    prefect_logger = logging.getLogger("prefect")
    # Prefect's console handler sits on the root logger (its logging.yml); look everywhere.
    handlers = {h for name in ("", "prefect") for h in logging.getLogger(name).handlers}
    consoles = [h for h in handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [h.formatter for h in consoles]
    for handler in consoles:
        handler.setFormatter(_NoTraceback(handler.formatter))
    prefect_logger.addHandler(tail)
    try:
        yield
    finally:
        prefect_logger.removeHandler(tail)
        for handler, formatter in zip(consoles, saved, strict=True):
            handler.setFormatter(formatter)


@contextlib.contextmanager
def _prefect_context(params: Params | None = None) -> Iterator[None]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    from pipelines.server import idle_seconds, shared_server

    settings: dict[Any, Any] = {}
    # Without a server (PREFECT_API_URL unset) a temporary one is started: Prefect's default
    # 20 s start-up limit is too short on a busy 2-core machine, and its telemetry heartbeat
    # only fails (no network, and a locked database) in a short-lived server.
    if EPHEMERAL_TIMEOUT_ENV not in os.environ:
        settings[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        settings[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with contextlib.ExitStack() as stack:
        stack.enter_context(temporary_settings(settings))
        current = get_current_settings()
        if not current.api.url and current.server.ephemeral.enabled and idle_seconds() > 0:
            # One temporary server for all stages instead of one per stage (pipelines/server.py).
            url = stack.enter_context(
                shared_server(timeout=current.server.ephemeral.startup_timeout_seconds)
            )
            stack.enter_context(temporary_settings({PREFECT_API_URL: url}))
        stack.enter_context(tags(*_prefect_tags(params)))
        yield


def run_stage_flow(flow_: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a stage's flow; under a pipeline flow run (``CMT_PREFECT_PIPELINE_RUN``), as its
    child, as Prefect shows a subflow: DVC runs the stage in its own process, so the flow run
    is created here with a tracking task run in the pipeline's flow run as its parent (the
    server keeps that task run's state the flow run's)."""
    parent = os.environ.get(PIPELINE_FLOW_RUN_ENV)
    if not parent:
        return flow_(*args, **kwargs)
    from uuid import UUID

    from prefect.exceptions import ObjectNotFound
    from prefect.flow_engine import run_flow
    from prefect.utilities.callables import get_call_parameters

    parameters = get_call_parameters(flow_.fn, args, kwargs)
    try:
        child = _child_flow_run(flow_, parameters, UUID(parent))
    except ObjectNotFound:  # the pipeline's flow run is on another server (one per stage)
        return flow_(*args, **kwargs)
    return run_flow(flow_, flow_run=child, parameters=parameters)


def _child_flow_run(flow_: Any, parameters: dict[str, Any], parent: Any) -> Any:
    """A new flow run of ``flow_`` whose parent is a new tracking task run in the flow run
    ``parent``, both named as the flow run would be."""
    from prefect import Task
    from prefect.client.orchestration import get_client
    from prefect.context import TagsContext
    from prefect.states import Pending

    template = flow_.flow_run_name
    name = template.format(**parameters) if isinstance(template, str) else flow_.name
    run_tags_ = TagsContext.get().current_tags
    tracker: Task[..., Any] = Task(name=flow_.name, fn=flow_.fn)
    with get_client(sync_client=True) as client:
        pipeline_run = client.read_flow_run(parent)
        task_run = client.create_task_run(
            tracker,
            flow_run_id=pipeline_run.id,
            dynamic_key=f"{os.environ.get('DVC_STAGE') or name}-{os.getpid()}",
            name=name,
            extra_tags=run_tags_,
        )
        child = client.create_flow_run(
            flow_,
            name=name,
            parameters=flow_.serialize_parameters(parameters),
            parent_task_run_id=task_run.id,
            tags=run_tags_,
            state=Pending(),
        )
        _name_pipeline_flow_run(client, pipeline_run)
    return child


def _name_pipeline_flow_run(client: Any, pipeline_run: Any) -> None:
    """DVC names an experiment once it runs: the first stage puts the name into the pipeline
    flow run's (as :func:`cmt.tracking.name_after_experiment` does for its MLflow run)."""
    if experiment := os.environ.get("DVC_EXP_NAME"):
        name = tracking.with_experiment(pipeline_run.name, experiment)
        if name != pipeline_run.name:
            client.set_flow_run_name(pipeline_run.id, name)


def run_entry(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace, Params], Any],
    argv: list[str] | None = None,
    check: Callable[[argparse.Namespace, Params], None] | None = None,
    inputs: Callable[[argparse.Namespace, Params], None] | None = None,
) -> int:
    """Parse, validate the config and the stage's arguments (``check``; exit 2 before any
    work if either is bad), verify the stage's input files (``inputs``), run the flow.

    ``inputs`` checks the files the stage consumes (:mod:`pipelines.preflight`): a corrupted
    one exits 1 with its path and the problem, before any MLflow run or Prefect server exists.
    A failing flow has already been reported by Prefect (Failed state, logs) and MLflow (run
    FAILED); the exit status 1 makes DVC record no outputs for the stage. Every failure ends
    with one line on stderr (:func:`cmt.failure.report`); tracebacks go to the log file it
    names, not to the console.
    """
    from pipelines.watchdog import guard

    prog = parser.prog.removesuffix(".py")
    args = parser.parse_args(argv)
    try:
        params = params_from_args(args)
        if check is not None:
            check(args, params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if inputs is not None:
            inputs(args, params)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    guard()  # the stage's child processes (Prefect's server) end with it, even on SIGKILL
    tail = LogTail()
    try:
        with _prefect_context(params), quiet_console_tracebacks(tail):
            body(args, params)
    except KeyboardInterrupt:
        return 130
    except ConfigError as err:  # found inside the flow (a served run's overrides)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        report(prog, err, tail.lines)
        return 1
    return 0


def exit_stage(code: int) -> NoReturn:
    """End a stage process with ``code``, skipping the interpreter's teardown of its modules.

    The teardown (freeing the modules of Prefect, MLflow, SQLAlchemy, torch) took seconds per
    stage on a busy 2-core machine (perf/stage_overhead.py) and does nothing a finished
    stage needs. What a normal exit does before it still runs: non-daemon threads are joined
    and the exit handlers (Prefect's log and event flush, MLflow's) run; the outputs are
    already written (atomically) and closed.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # what Python's exit does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)

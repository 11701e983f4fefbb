"""What every stage entry point shares: its command line, config loading, Prefect set-up,
MLflow tags and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from prefect import tags, task
from prefect.cache_policies import NO_CACHE

from cmt.cli import add_config_options, params_from_args
from cmt.config import ConfigError, Params
from cmt.integrity import ArtifactError

PIPELINE_FLOW_RUN_ENV = "CMT_PREFECT_PIPELINE_RUN"  # set by the pipeline flow for its stages
EPHEMERAL_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# DVC decides what reruns; Prefect's own input caching would only hide work from it.
stage_task = partial(task, cache_policy=NO_CACHE)


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


def run_tags() -> dict[str, str]:
    """MLflow tags that link a stage's run to its Prefect flow run."""
    from prefect.runtime import flow_run

    out = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": ""}
    with contextlib.suppress(Exception):
        out["prefect.flow_run_name"] = str(flow_run.name or "")
    if parent := os.environ.get(PIPELINE_FLOW_RUN_ENV):
        out["prefect.pipeline_run_id"] = parent
    return out


def _prefect_tags() -> list[str]:
    out = ["cmt"]
    if parent := os.environ.get(PIPELINE_FLOW_RUN_ENV):
        out.append(f"pipeline:{parent}")
    if exp := os.environ.get("DVC_EXP_NAME"):
        out.append(f"dvc-exp:{exp}")
    return out


@contextlib.contextmanager
def _prefect_context() -> Iterator[None]:
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    settings: dict[Any, Any] = {}
    # Without a server (PREFECT_API_URL unset) each stage starts a temporary one: Prefect's
    # default 20 s start-up limit is too short on a busy 2-core machine, and its telemetry
    # heartbeat only fails (no network, and a locked database) in a short-lived server.
    if EPHEMERAL_TIMEOUT_ENV not in os.environ:
        settings[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        settings[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(settings), tags(*_prefect_tags()):
        yield


def run_entry(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace, Params], Any],
    argv: list[str] | None = None,
    check: Callable[[argparse.Namespace, Params], None] | None = None,
) -> int:
    """Parse, validate the config and the stage's arguments (``check``; exit 2 before any
    work if either is bad), run the flow.

    ``body`` verifies its input files first (:mod:`pipelines.preflight`): a corrupted one
    exits 1 with its path and the problem, before any MLflow run or Prefect server exists.
    A failing flow has already been reported by Prefect (Failed state, logs) and MLflow (run
    FAILED); the exit status 1 makes DVC record no outputs for the stage.
    """
    from pipelines.watchdog import guard

    args = parser.parse_args(argv)
    try:
        params = params_from_args(args)
        if check is not None:
            check(args, params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    guard()  # the stage's child processes (Prefect's server) end with it, even on SIGKILL
    try:
        with _prefect_context():
            body(args, params)
    except KeyboardInterrupt:
        return 130
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        traceback.print_exc()
        print(f"error: stage failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0

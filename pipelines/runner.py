"""The Prefect task runner of the stage flows, chosen by the ``orchestration`` config section."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from cmt.config import OrchestrationConfig


def make_task_runner(cfg: OrchestrationConfig) -> TaskRunner[Any]:
    """A thread pool (default), or a Dask cluster through prefect-dask: a local cluster of
    ``dask_workers`` processes, or the scheduler at ``dask_address``."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_dask import DaskTaskRunner  # optional dependency, only for this runner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": cfg.dask_workers,
            "threads_per_worker": cfg.dask_threads_per_worker,
            "processes": True,
            "host": "127.0.0.1",  # never listen beyond this machine
            "dashboard_address": None,
            # The scheduler serves HTTP (health, metrics) even without a dashboard, on port
            # 8787 unless told otherwise: a free port of 127.0.0.1, and no dashboard.
            "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        },
    )

"""End to end: the DVC pipeline on a tiny config in a temporary git repository, its MLflow
runs and registry, a pyfunc load in a fresh process, the Dask task runner, and the pipeline
deployment served to a real local Prefect server and triggered through its client.

Every server started here binds 127.0.0.1 and is stopped at the end; Prefect and MLflow state
lives in temp dirs (PREFECT_HOME, the repository's own SQLite store).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import clone_like_repo

pytestmark = pytest.mark.slow

# Prefect creates its home directory when imported: keep these tests out of ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cmt-test-prefect-"))
ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {
        "num_tasks": 8,
        "test_tasks": [1, 5],
        "horizon": 20,
        "episodes_per_level": 2,
        "demo_episodes": 3,
        "reference_episodes": 3,
    },
    "model": {"n_layer": 1, "d_model": 32, "context_len": 5, "context_size": 8},
    "pretrain": {"steps": 20, "batch_size": 16, "warmup_steps": 5, "log_every": 5},
    "prompt_tune": {"steps": 10, "batch_size": 8, "eval_every": 5},
    "evaluate": {"episodes": 2},
    "compare": {"seeds": [0]},
}
MODEL = "cmt-point_robot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A local Prefect server on 127.0.0.1 with its own PREFECT_HOME; yields the env to use."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "CMT_", "DVC_"))
        },
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        "Prefect server did not start:\n"
                        + (home / "server.log").read_text()[-3000:]
                    ) from None
                time.sleep(1)
        yield env
    finally:
        _stop(proc)
        log.close()


@dataclass
class Repo:
    path: Path
    env: dict[str, str]
    failed: subprocess.CompletedProcess | None  # the `dvc repro` that failed in pretrain
    lock_after_failure: dict
    repro: subprocess.CompletedProcess  # the `dvc repro` that completed

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd,
            cwd=self.path,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def mlflow(self):
        import mlflow

        return mlflow.MlflowClient(f"sqlite:///{self.path / 'mlflow.db'}")


def _write_params(path: Path, extra: dict | None = None) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**TINY, **(extra or {})}.items():
        raw[section].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_server) -> Repo:
    """A fresh clone-like repository: code, dvc.yaml and a tiny params.yaml, committed.

    The first ``dvc repro`` asks for CUDA where there is none, so ``pretrain@dt-0`` fails after
    collect and preprocess succeeded; the second, with the device fixed, completes.
    """
    path = tmp_path_factory.mktemp("repo")
    env = dict(prefect_server)
    cuda = torch.cuda.is_available()
    _write_params(path, None if cuda else {"pretrain": {**TINY["pretrain"], "device": "cuda"}})
    clone_like_repo(path, env)

    def repro() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["dvc", "repro"], cwd=path, env=env, capture_output=True, text=True, timeout=900
        )

    failed, lock = None, {}
    if not cuda:
        failed = repro()
        lock = yaml.safe_load((path / "dvc.lock").read_text())
        _write_params(path)
    done = repro()
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return Repo(path, env, failed, lock, done)


def test_failed_stage_is_recorded_and_rerun_continues(repo: Repo):
    if repo.failed is None:
        pytest.skip("CUDA is available here: the induced failure does not fail")
    assert repo.failed.returncode != 0
    # DVC recorded the stages that succeeded, and none of the failed one's outputs.
    assert {"collect", "preprocess"} <= set(repo.lock_after_failure["stages"])
    assert "pretrain@dt-0" not in repo.lock_after_failure["stages"]
    # The stage said why in one line, with its traceback in the log file the line names.
    text = repo.failed.stdout + repo.failed.stderr
    assert "Traceback" not in text, text[-5000:]
    line = next(ln for ln in text.splitlines() if ln.startswith("error: pretrain failed: "))
    assert "RuntimeError: pretrain.device='cuda'" in line, line
    log = repo.path / line.rsplit("traceback in ", 1)[1].rstrip(")")
    assert "raise RuntimeError(" in log.read_text()
    # The rerun continued from there.
    out = repo.repro.stdout
    assert "Stage 'collect' didn't change, skipping" in out
    assert "Stage 'preprocess' didn't change, skipping" in out
    assert "Running stage 'pretrain@dt-0'" in out

    client = repo.mlflow()
    exp = client.get_experiment_by_name("cmt")
    failed = client.search_runs(
        [exp.experiment_id], "tags.`cmt.stage` = 'pretrain' and attributes.status = 'FAILED'"
    )
    assert len(failed) == 1 and "CUDA" in failed[0].data.tags["cmt.error"]
    assert len(failed[0].data.tags["cmt.error"]) <= 250  # the UI shows a tag whole
    error_txt = client.download_artifacts(failed[0].info.run_id, "error.txt", str(repo.path.parent))
    assert Path(error_txt).read_text().startswith("RuntimeError: pretrain.device='cuda'")
    parent = client.get_run(failed[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def flow_run_states() -> list[str]:
        async with get_client() as c:
            runs = await c.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=["seed0 · dt · pretrain"])
                )
            )
            return sorted(r.state.type.value for r in runs)

    import asyncio

    with temporary_settings({PREFECT_API_URL: repo.env["PREFECT_API_URL"]}):
        assert asyncio.run(flow_run_states()) == ["COMPLETED", "FAILED"]


def test_pipeline_outputs_metrics_and_plots(repo: Repo):
    p = repo.path
    metrics = json.loads((p / "outputs/evaluate/metrics.json").read_text())
    assert set(metrics) == {"mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"}
    assert all(
        set(m) == {"score_mean", "score_std", "return_mean", "return_std"} for m in metrics.values()
    )
    assert sorted(x.name for x in (p / "outputs/evaluate/runs").iterdir()) == [
        f"{m}_seed0.json" for m in ("cmt_tuned", "cmt_zero_shot", "mtdt", "prompt_dt")
    ]
    assert sorted(x.name for x in (p / "outputs/prompts/seed0").iterdir()) == [
        "task_1.pt",
        "task_5.pt",
    ]
    for name in ("results.md", "results.png", "registry.md", "registry.png"):
        assert (p / "outputs/report" / name).stat().st_size > 0
    curve = (p / "outputs/curves/cmt_seed0.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) > 3

    shown = repo.run("dvc", "metrics", "show", "--json")
    assert shown.returncode == 0 and "cmt_tuned" in shown.stdout
    plots = repo.run("dvc", "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr
    assert "Pretraining loss (one plot per backbone and seed" in plots.stdout  # titled
    assert "task 1 | cmt_tuned" in (p / "outputs/evaluate/per_task.csv").read_text()
    assert set(json.loads(plots.stdout)["data"]) == {
        "outputs/curves/cmt_seed0.csv",
        "outputs/curves/prompt_dt_seed0.csv",
        "outputs/curves/dt_seed0.csv",
        "per-task returns",
        "outputs/preprocess/returns.png",
        "outputs/report/results.png",
        "outputs/report/registry.png",
    }
    # Metrics and plot data are for git; cached outputs are ignored by it.
    status = repo.run("git", "status", "--porcelain", "--untracked-files=all").stdout
    assert "outputs/evaluate/metrics.json" in status and "outputs/checkpoints" not in status


def test_mlflow_runs_grouped_under_pipeline_run(repo: Repo):
    client = repo.mlflow()
    exp = client.get_experiment_by_name("cmt")
    [pretrain] = client.search_runs(
        [exp.experiment_id],
        "tags.`cmt.stage` = 'pretrain' and tags.`cmt.backbone` = 'cmt' "
        "and attributes.status = 'FINISHED'",
    )
    parent = pretrain.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["cmt.kind"] == "pipeline"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    stages = {r.data.tags["cmt.stage"]: r for r in children}
    # One pipeline run for the completed config (collect and preprocess ran under the failed
    # config's pipeline run when there is no CUDA).
    assert {"pretrain", "prompt_tune", "evaluate", "report"} <= set(stages)
    backbones = {r.data.tags.get("cmt.backbone") for r in children}
    assert {"cmt", "dt", "prompt_dt"} <= backbones
    assert all(r.info.status == "FINISHED" for r in children)
    assert pretrain.data.params["pretrain.steps"] == "20"
    assert len(client.get_metric_history(pretrain.info.run_id, "train/total")) > 2
    assert pretrain.data.tags["prefect.flow_run_name"] == "seed0 · cmt · pretrain"
    assert "eval/cmt_tuned/task_1/return" in stages["evaluate"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(stages["report"].info.run_id, "report")}
    assert "report/results.md" in artifacts
    _runs_say_what_they_are(repo, client, exp.experiment_id, parent)


def _runs_say_what_they_are(repo: Repo, client, exp_id: str, parent: str) -> None:
    """Names (the distinguishing part first), descriptions, only the stage's own parameters,
    the data as dataset inputs with its content hash as digest, figures on the stage run that
    made them, the git commit as source."""
    import h5py

    name, experiment, started = client.get_run(parent).info.run_name.split(" · ")
    assert (name, experiment) == ("point_robot", "workspace") and started[:2] == "20"
    with h5py.File(repo.path / "data/point_robot/train.hdf5") as f:
        digest = str(f.attrs["sha256"])[:16]
    commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    names = {
        "collect": "collect",
        "preprocess": "preprocess",
        "pretrain": "seed0 · cmt · pretrain",
        "prompt_tune": "seed0 · prompt_tune",
        "evaluate": "evaluate",
        "report": "report",
    }
    sections = {
        "collect": {"data"},
        "preprocess": {"data"},
        "pretrain": {"model", "pretrain"},
        "prompt_tune": {"prompt_tune", "data"},
        "evaluate": {"evaluate", "compare", "data", "prompt_tune", "tracking"},
        "report": set(),
    }
    figures = {
        "preprocess": ["figures/returns.png"],
        "pretrain": ["figures/learning_curve.png"],
        "prompt_tune": ["figures/prompt_tuning.png"],
        "evaluate": ["figures/comparison.png", "figures/per_task_returns.png"],
        "report": ["figures/registry.png", "figures/results.png"],
    }
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    for stage, run_name in names.items():
        # collect and preprocess ran under the failed config's pipeline run (without CUDA)
        mine = [r for r in children if r.info.run_name == run_name] or client.search_runs(
            [exp_id],
            f"tags.`cmt.stage` = '{stage}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        run = client.get_run(mine[0].info.run_id)  # with its dataset inputs
        tags = run.data.tags
        assert run.info.run_name == run_name == tags["prefect.flow_run_name"], stage
        assert tags["mlflow.note.content"] and tags["mlflow.source.git.commit"] == commit, stage
        assert {k.split(".")[0] for k in run.data.params} == sections[stage], stage
        found = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        assert sorted(found) == figures.get(stage, []), stage
        inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
        if stage == "report":
            assert not inputs
            continue
        assert inputs["point_robot"].digest == digest, stage
        source = json.loads(inputs["point_robot"].source)["uri"]
        assert source.endswith("data/point_robot/train.hdf5"), stage
        assert ("point_robot demos" in inputs) == (stage != "pretrain"), stage


def test_registry_champion_loads_in_fresh_process(repo: Repo):
    client = repo.mlflow()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["cmt.method"] == "cmt_tuned"
    # A catalogue entry: what the model is, what its score means, where each version's data
    # came from, its score rounded beside its return, and how it met the champion.
    model = client.get_registered_model(MODEL)
    assert "Offline meta-RL" in model.description and "normalised score" in model.description
    assert model.tags == {
        "cmt.setting": "Offline meta-RL",
        "cmt.method": "cmt_tuned",
        "cmt.dataset": "point_robot",
    }
    text = champion.description
    assert text.startswith("Seed 0 of `cmt_tuned`") and "`champion`" in text, text
    assert "mean return" in text and "the test tasks [1, 5]" in text, text
    import h5py

    with h5py.File(repo.path / "data/point_robot/train.hdf5") as f:
        assert str(f.attrs["sha256"])[:12] in text
    assert re.fullmatch(r"-?\d+\.\d\d", champion.tags["cmt.score_mean"])
    assert champion.tags["cmt.setting"] == "Offline meta-RL"
    scores = [
        float(v.tags["cmt.score_mean"]) for v in client.search_model_versions(f"name = '{MODEL}'")
    ]
    assert float(champion.tags["cmt.score_mean"]) == max(scores)
    code = textwrap.dedent(
        f"""
        import json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        obs = pd.DataFrame({{"task": [1, 5], "obs_0": [0.0, 0.2], "obs_1": [0.0, -0.1]}})
        print(json.dumps(model.predict(obs).to_numpy().tolist()))
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CMT_"))},
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo.path / 'mlflow.db'}",
    }
    # A directory outside the repository, and no PYTHONPATH: the model brings its own code.
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo.path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    actions = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(actions) == 2 and all(len(a) == 2 and all(-1 <= x <= 1 for x in a) for a in actions)


def test_noop_repro_is_fast(repo: Repo):
    start = time.perf_counter()
    out = repo.run("dvc", "repro")
    elapsed = time.perf_counter() - start
    assert out.returncode == 0
    assert "Data and pipelines are up to date." in out.stdout
    assert elapsed < 10, f"no-op dvc repro took {elapsed:.1f} s"


def test_dask_task_runner(repo: Repo, tmp_path):
    """prompt_tune on a local two-worker Dask cluster gives the prompts of the thread runner."""
    from cmt.checkpoint import load_prompt

    out = repo.run(
        sys.executable,
        "-m",
        "pipelines.prompt_tune",
        "--seed",
        "0",
        "--data",
        "data/point_robot",
        "--checkpoint",
        "outputs/checkpoints/cmt_seed0/model.pt",
        "--out",
        str(tmp_path / "prompts"),
        "--metrics",
        str(tmp_path / "metrics"),
        "--set",
        "orchestration.task_runner=dask",
        "--set",
        "orchestration.dask_workers=2",
    )
    assert out.returncode == 0, out.stderr[-5000:]
    assert "distributed.scheduler" in out.stderr  # it really ran on Dask
    for t in (1, 5):
        dask, _ = load_prompt(tmp_path / "prompts" / f"task_{t}.pt")
        threads, _ = load_prompt(repo.path / "outputs/prompts/seed0" / f"task_{t}.pt")
        torch.testing.assert_close(dask, threads, atol=1e-4, rtol=1e-4)


def test_deployment_triggered_on_prefect_server(repo: Repo):
    """Serve the pipeline deployment, trigger it through the client with a changed parameter,
    and see it complete as a DVC experiment that reran only the stages depending on it."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client = repo.mlflow()
    versions_before = len(client.search_model_versions(f"name = '{MODEL}'"))
    # The deployments' defaults are the committed params.yaml: commit the fixed device.
    for cmd in (
        ("git", "add", "params.yaml"),
        ("git", "commit", "-qm", "params: device", "--allow-empty"),
    ):
        assert repo.run(*cmd).returncode == 0
    log = open(repo.path.parent / "serve.log", "w")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "pipelines.serve"],
        cwd=repo.path,
        env=repo.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: repo.env["PREFECT_API_URL"]}):
            deadline = time.time() + 120
            while "being served" not in (repo.path.parent / "serve.log").read_text():
                assert serve.poll() is None and time.time() < deadline, (
                    repo.path.parent / "serve.log"
                ).read_text()[-3000:]
                time.sleep(1)
            # Rejected by the server's parameter schema before anything runs.
            for bad, key in (
                ({"params": {"pretrain": {"lr": -1}}}, "lr"),
                ({"params": {"data": {"name": "x;touch PWNED;"}}}, "name"),
                ({"preset": "../params"}, "preset"),
                ({"experiment_name": "x;touch PWNED;"}, "experiment_name"),
            ):
                with pytest.raises(Exception, match=key):
                    run_deployment("cmt-pipeline/cmt-pipeline", parameters=bad, timeout=0)
            # A preset's own deployment: only its benchmark's methods.
            with pytest.raises(Exception, match="mtdt"):
                run_deployment(
                    "cmt-pipeline/hopper_medium_replay",
                    parameters={"params": {"compare": {"methods": ["mtdt"]}}},
                    timeout=0,
                )
            schema = _deployment_schema("cmt-pipeline/cmt-pipeline")
            # Overrides are free-form: the flow refuses them before anything runs.
            injected = run_deployment(
                "cmt-pipeline/cmt-pipeline",
                parameters={
                    "preset": "hopper_medium_replay",
                    "overrides": {"data.source": "x;touch PWNED;.hdf5"},
                },
                timeout=300,
            )
            run = run_deployment(
                "cmt-pipeline/cmt-pipeline",
                parameters={"overrides": {"prompt_tune.lr": 0.02}, "experiment_name": "lr02"},
                timeout=600,
            )
    finally:
        _stop(serve)
        log.close()
    assert run.state.is_completed(), (repo.path.parent / "serve.log").read_text()[-5000:]
    assert injected.state.is_failed(), injected.state
    from cmt.config import preset_names

    assert schema["properties"]["preset"]["anyOf"][0]["enum"] == preset_names()
    assert schema["properties"]["preset"]["description"]
    assert "not a safe name" in (repo.path.parent / "serve.log").read_text()
    assert not list(repo.path.rglob("PWNED*"))

    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    exps = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                exps[rev["name"]] = rev["data"]
    assert "lr02" in exps, shown
    data = exps["lr02"]
    assert data["params"]["params.yaml"]["data"]["prompt_tune"]["lr"] == 0.02
    metrics = data["metrics"]["outputs/evaluate/metrics.json"]["data"]
    assert set(metrics) == {"mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"}

    exp = client.get_experiment_by_name("cmt")
    parent = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{run.id}'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["dvc.exp_name"] == "lr02"
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["cmt.stage"] for r in children) == [
        "evaluate",
        "prompt_tune",
        "report",
    ]
    # Both UIs name the pipeline run for its dataset and experiment, and show the stage runs
    # as its children.
    assert parent.info.run_name.startswith("point_robot · lr02 · ")
    flow_name, children_names = _flow_run_and_children(repo, run.id)
    assert flow_name == parent.info.run_name
    assert children_names == ["evaluate", "report", "seed0 · prompt_tune"]
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == versions_before + 1
    newest = str(max(int(v.version) for v in versions))
    aliases = {a for a, v in client.get_registered_model(MODEL).aliases.items() if str(v) == newest}
    assert aliases in ({"champion"}, {"challenger"})


def _deployment_schema(name: str) -> dict:
    """The parameter schema the Prefect server holds for a deployment (its form)."""
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_deployment_by_name(name).parameter_openapi_schema


def _flow_run_and_children(repo: Repo, flow_run_id) -> tuple[str, list[str]]:
    """A flow run's name and the sorted names of its child flow runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: repo.env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as c:
            name = c.read_flow_run(flow_run_id).name
            children = c.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
                )
            )
    return name, sorted(r.name for r in children)


def test_stage_runs_without_a_prefect_server(repo: Repo, tmp_path):
    """Without PREFECT_API_URL the first stage starts a temporary server and the next one
    uses it (pipelines/server.py); ``python -m pipelines.server stop`` stops it."""
    env = {k: v for k, v in repo.env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    try:
        for i in range(2):
            out = repo.run(
                sys.executable,
                "-m",
                "pipelines.preprocess",
                "--data",
                "data/point_robot",
                "--out",
                str(tmp_path / f"pre{i}"),
                env=env,
            )
            assert out.returncode == 0, out.stderr[-5000:]
            assert (tmp_path / f"pre{i}" / "metrics.json").exists()
            expected = "Using the shared temporary server" if i else "Starting temporary server"
            assert expected in out.stderr, out.stderr[-5000:]
        state = json.loads((tmp_path / "home" / "cmt-server.json").read_text())
    finally:
        stop = repo.run(sys.executable, "-m", "pipelines.server", "stop", env=env)
    assert stop.returncode == 0 and stop.stdout.strip() == "stopped", stop.stdout + stop.stderr
    assert not (tmp_path / "home" / "cmt-server.json").exists()
    # Gone, or an exited process waiting to be reaped by init (it was started detached).
    deadline = time.time() + 20
    while not _exited(state["pid"]) and time.time() < deadline:
        time.sleep(0.2)
    assert _exited(state["pid"]), f"shared server {state['pid']} still running after stop"


def _exited(pid: int) -> bool:
    """The process has ended: no such process, or a zombie not yet reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


# The cheetah-dir preset at a tiny SAC budget (a few seconds of SAC).
TINY_MUJOCO = {
    "data.episodes_per_level": 1,
    "data.demo_episodes": 2,
    "data.reference_episodes": 2,
    "data.sac.policies": "train",  # the preset rolls out committed policies of 500k steps
    "data.sac.train_freq": 4,
    "data.sac.eval_episodes": 1,
    "data.sac.sac_steps": 300,
    "data.sac.learning_starts": 100,
    "data.sac.eval_every": 100,
    "data.sac.batch_size": 32,
    "data.sac.net_arch": [32, 32],
    "pretrain.steps": 20,
    "evaluate.episodes": 2,  # the preset's 20 per task: the longest stage
}


def test_mujoco_preset_end_to_end(repo: Repo):
    """One command switches the benchmark: ``python -m pipelines.pipeline --preset cheetah_dir``
    runs every stage on HalfCheetah-v5 (SAC data included) as a DVC experiment, and the report
    tabulates both families from MLflow. Last in this module: it leaves the workspace on
    cheetah-dir."""
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY_MUJOCO.items()]
    cmd = [sys.executable, "-m", "pipelines.pipeline", "--preset", "cheetah_dir", *sets]
    out = repo.run(*cmd, "--name", "cheetah")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    p = repo.path
    params = yaml.safe_load((p / "params.yaml").read_text())
    assert params["data"]["benchmark"] == "cheetah_dir"
    assert params["data"]["sac"]["sac_steps"] == 300 and "horizon" not in params["data"]
    sac_log = json.loads((p / "data/cheetah_dir/sac_log.json").read_text())
    assert [s["step"] for s in sac_log["snapshots"]] == [100, 200, 300]
    assert (p / "outputs/sac/cheetah_dir/state.pt").is_file()  # kept for a resumed rerun
    metrics = json.loads((p / "outputs/evaluate/metrics.json").read_text())
    assert set(metrics) == {"mtdt", "prompt_dt", "cmt_zero_shot", "cmt_tuned"}
    assert sorted(x.name for x in (p / "outputs/prompts/seed0").iterdir()) == [
        "task_0.pt",
        "task_1.pt",
    ]
    results = (p / "outputs/report/results.md").read_text()
    assert "cheetah_dir (also training tasks)" in results
    rows = json.loads((p / "outputs/report/benchmarks.json").read_text())
    assert {r["name"] for r in rows} == {"point_robot", "cheetah_dir"}
    table = (p / "outputs/report/benchmarks.md").read_text()
    assert "| cheetah_dir |" in table and "927.2" in table
    client = repo.mlflow()
    assert client.get_registered_model("cmt-cheetah_dir").aliases["champion"]
    # SAC's progress reached the collect run's metrics while it trained.
    exp = client.get_experiment_by_name("cmt")
    collect = client.search_runs(
        [exp.experiment_id],
        "tags.`cmt.stage` = 'collect' and params.`data.name` = 'cheetah_dir'",
    )[0]
    history = client.get_metric_history(collect.info.run_id, "sac/eval_return")
    assert [m.step for m in history] == [100, 200, 300]

    # A rerun of collect with more data episodes reuses the persisted SAC checkpoint: no
    # retraining. DVC's collect stage alone: the stages after it are what the run above tested.
    out = repo.run("dvc", "exp", "run", "collect", "-S", "data.episodes_per_level=2")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    latest = client.search_runs(
        [exp.experiment_id],
        "tags.`cmt.stage` = 'collect' and params.`data.name` = 'cheetah_dir'",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert latest.data.metrics["data/sac/resumed_from"] == 300


# The hopper medium-replay preset at a tiny SAC budget and a minimal dataset.
TINY_D4RL = {
    "data.transitions": 1000,
    "data.reference_episodes": 1,
    "data.sac.policies": "train",  # the preset rolls out committed policies of 200k steps
    "data.sac.sac_steps": 300,
    "data.sac.learning_starts": 100,
    "data.sac.eval_every": 100,
    "data.sac.train_freq": 4,
    "data.sac.eval_episodes": 1,
    "data.sac.batch_size": 32,
    "data.sac.net_arch": [32, 32],
    "pretrain.steps": 20,
    "evaluate.episodes": 2,
}


def test_d4rl_preset_end_to_end(repo: Repo):
    """The single-agent setting through the same pipeline: collect (SAC on Hopper-v5, the
    medium-replay level) -> report, with its own methods, D4RL scores and registry entry.
    Runs after the cheetah-dir test: a preset replaces the whole data section."""
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY_D4RL.items()]
    cmd = [sys.executable, "-m", "pipelines.pipeline", "--preset", "hopper_medium_replay", *sets]
    out = repo.run(*cmd, "--name", "hopper")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    p = repo.path
    params = yaml.safe_load((p / "params.yaml").read_text())
    assert params["data"]["benchmark"] == "d4rl" and "test_tasks" not in params["data"]
    train = p / "data/hopper_medium_replay/train.hdf5"
    from cmt.data.hdf5 import read_hdf5

    data = read_hdf5(train)
    assert data.obs_dim == 11 and data.act_dim == 3 and set(data.task_ids) == {0}
    assert data.metadata["level"] == "medium_replay"
    assert (p / "outputs/sac/hopper/state.pt").is_file()
    refs = json.loads((p / "data/hopper_medium_replay/references.json").read_text())
    assert refs["0"] == {"random": -20.272305, "expert": 3234.3}  # D4RL's constants
    metrics = json.loads((p / "outputs/evaluate/metrics.json").read_text())
    assert set(metrics) == {"dt", "bc", "filtered_bc", "cmt_zero_shot", "cmt_tuned"}
    assert [x.name for x in (p / "outputs/prompts/seed0").iterdir()] == ["task_0.pt"]
    assert (p / "outputs/prompts/seed0/task_0.pt").stat().st_size < 8_000
    rows = json.loads((p / "outputs/report/benchmarks.json").read_text())
    hopper = next(r for r in rows if r["name"] == "hopper_medium_replay")
    assert hopper["published"] == {
        "label": "DT (paper, D4RL v2)",
        "value": 82.7,
        "metric": "score_mean",
    }
    levels = set(hopper["dataset"]) - {"score_mean", "score_p90", "score_max"}
    assert levels and all(k.startswith("level/") for k in levels)  # the data's own levels
    assert hopper["prompt"]["bytes"] < 8_000 and hopper["prompt"]["seconds"] > 0
    table = (p / "outputs/report/benchmarks.md").read_text()
    assert "Single-agent offline RL (D4RL-style)" in table and "| hopper_medium_replay |" in table
    assert "s of tuning per prompt" in table
    assert "D4RL normalised score" in (p / "outputs/report/results.md").read_text()
    client = repo.mlflow()
    assert client.get_registered_model("cmt-hopper_medium_replay").aliases["champion"]

    # The data-quality table, from the collect run in MLflow, against the file itself.
    script = str(ROOT / "scripts" / "data_quality.py")
    out = repo.run(sys.executable, script, "--out", "quality")  # the clone has no scripts/
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((p / "quality/data_quality.json").read_text())["rows"]
    [row] = [r for r in rows if r["dataset"] == "hopper_medium_replay"]
    from cmt.data.hdf5 import episode_bounds

    starts, lengths = episode_bounds(data.terminals, data.timeouts)
    returns = np.add.reduceat(data.rewards.astype(np.float64), starts)
    assert (row["level"], row["episodes"], row["transitions"]) == (
        "medium_replay",
        len(starts),
        len(data),
    )
    assert row["return_max"] == pytest.approx(returns.max(), rel=1e-5)
    low, high = -20.272305, 3234.3  # D4RL's hopper references, written out independently
    assert row["score_mean"] == pytest.approx(100 * (returns.mean() - low) / (high - low))
    assert (
        "| hopper_medium_replay | medium_replay |"
        in (p / "quality/single_agent_offline_rl_d4rl_style.md").read_text()
    )


# The SMAX 3m preset at a tiny MAPPO budget (trained here, not the committed policies) and a
# few episodes per tier.
TINY_SMAX = {
    "data.episodes_per_tier": 4,
    "data.ppo.policies": "train",  # the preset rolls out the committed policies of 24M steps
    "data.ppo.total_steps": 576,
    "data.ppo.n_envs": 2,
    "data.ppo.n_steps": 16,
    "data.ppo.batch_size": 48,
    "data.ppo.snapshot_every": 192,
    "data.ppo.eval_episodes": 4,
    "pretrain.steps": 20,
    "evaluate.episodes": 4,
    # Two backbones (MADT's and CMT's) keep the stage count down; BC is the same discrete path.
    "compare.methods": ["madt", "cmt_zero_shot", "cmt_tuned"],
    "compare.backbones": ["dt", "cmt"],
}


def test_smax_preset_end_to_end(repo: Repo):
    """The multi-agent setting through the same pipeline: collect (MAPPO on SMAX 3m, three
    tiers) -> report, with discrete masked actions, win rates, and a registered team policy
    that a fresh process loads and asks for actions of a batch of agents."""
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY_SMAX.items()]
    cmd = [sys.executable, "-m", "pipelines.pipeline", "--preset", "smax_3m", *sets]
    out = repo.run(*cmd, "--name", "smax", timeout=1500)  # jax compiles in several stages
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    p = repo.path
    from cmt.data.hdf5 import read_hdf5

    team = read_hdf5(p / "data/smax_3m/train.hdf5")
    assert team.observations.ndim == 3 and team.observations.shape[1] == 3  # 3 marines
    assert team.actions.dtype.kind == "i" and team.avail_actions.shape[:2] == (len(team), 3)
    levels = team.infos["level"][np.flatnonzero(team.terminals | team.timeouts)]
    assert sorted(np.unique(levels)) == [0, 1, 2]  # poor, medium, good
    assert (p / "outputs/sac/3m").is_dir()  # PPO snapshots kept for a resumed rerun
    metrics = json.loads((p / "outputs/evaluate/metrics.json").read_text())
    assert set(metrics) == {"madt", "cmt_zero_shot", "cmt_tuned"}
    for m in metrics.values():  # a win rate in percent
        assert 0.0 <= m["score_mean"] <= 100.0
    rows = json.loads((p / "outputs/report/benchmarks.json").read_text())
    smax = next(r for r in rows if r["name"] == "smax_3m")
    assert {"level/poor", "level/medium", "level/good"} <= set(smax["dataset"])
    table = (p / "outputs/report/benchmarks.md").read_text()
    assert "Offline multi-agent RL (SMAX)" in table and "| smax_3m |" in table
    assert "win rate" in (p / "outputs/report/results.md").read_text()

    # The registered team policy: one integer action per (episode, agent, step) row, always
    # an available one, from a fresh process.
    obs = team.observations[:2]  # (2, A, obs): the first two steps of the first episode
    avail = team.avail_actions[:2]
    avail[:, :, :] = False
    avail[:, :, 4] = True  # only "stop" available: the policy must pick it
    avail[1, 0, [0, 1]] = True
    rows_in = [
        {
            "task": 0,
            "episode": 0,
            "agent": a,
            **{f"obs_{i}": float(x) for i, x in enumerate(obs[t, a])},
            **{f"avail_{j}": int(x) for j, x in enumerate(avail[t, a])},
        }
        for t in range(2)
        for a in range(3)
    ]
    script = textwrap.dedent(
        f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri("sqlite:///{p / "mlflow.db"}")
        model = mlflow.pyfunc.load_model("models:/cmt-smax_3m@champion")
        out = model.predict(pd.DataFrame(json.loads(sys.stdin.read())))
        print(json.dumps(out["action"].tolist()))
        """
    )
    got = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(rows_in),
        cwd=tempfile.mkdtemp(),
        env=repo.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    actions = json.loads(got.stdout.strip().splitlines()[-1])
    assert len(actions) == 6
    for row, action in zip(rows_in, actions, strict=True):
        assert row[f"avail_{action}"] == 1

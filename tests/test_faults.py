"""Fault injection on real files, real processes and a real SQLite MLflow store: corrupted
bytes in every artifact kind, non-finite numbers, bad config, killed processes and concurrent
promotions. Each test asserts the exact failure and that nothing was registered or lost.
The tests that start many processes or a real stage with its Prefect server are marked slow."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, clone_like_repo

from cmt.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_policy,
    load_prompt,
    load_sealed,
    safe_load,
)
from cmt.config import parse_params
from cmt.data.hdf5 import read_hdf5
from cmt.experiment import load_data, make_prompts, pretrain_backbone
from cmt.integrity import ArtifactError, NonFiniteError, digest, read_json, sealed_json

# Prefect creates its home directory when imported: keep these tests out of ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cmt-test-prefect-"))
ROOT = Path(__file__).resolve().parents[1]
OFFSETS = 40  # corrupted positions tried per file, spread over its whole length


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CMT_", "DVC_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _flip(path: Path, offset: int, n: int = 2) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(raw))):
        raw[i] ^= 0xA5
    path.write_bytes(bytes(raw))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_data_dir) -> dict[str, Path]:
    """One real file of every kind the stages consume."""
    from cmt.serving import save_prompt_set

    params = parse_params(TINY)
    out = tmp_path_factory.mktemp("artifacts")
    data = load_data(params, tiny_data_dir)
    ckpt = pretrain_backbone(params, "cmt", 0, data, out / "ckpt", progress=False)
    prompts = make_prompts(params, "cmt_tuned", ckpt, data, 0, out / "prompts", progress=False)
    save_prompt_set(out / "prompts.pt", {t: p["prompt"] for t, p in prompts.items()})
    record = {"method": "cmt_tuned", "seed": 0, "return_mean": 1.0, "score_mean": 2.0}
    (out / "record.json").write_text(json.dumps(sealed_json({**record, "per_task": {}})))
    return {
        "checkpoint": ckpt,
        "prompt": out / "prompts" / "task_1.pt",
        "prompt_set": out / "prompts.pt",
        "train.hdf5": tiny_data_dir / "train.hdf5",
        "demos.hdf5": tiny_data_dir / "demos.hdf5",
        "references.json": tiny_data_dir / "references.json",
        "run record": out / "record.json",
    }


def _load(kind: str, path: Path):
    """What a stage reads from ``path``, as a comparable value."""
    from cmt.serving import load_prompt_set

    if kind == "checkpoint":
        load_policy(path)
        return digest(safe_load(path))
    if kind == "prompt":
        return digest(load_prompt(path))
    if kind == "prompt_set":
        return digest(load_prompt_set(path))
    if kind.endswith(".hdf5"):
        d = read_hdf5(path)
        return digest({"arrays": [d.observations, d.actions, d.rewards, d.terminals,
                                  d.timeouts, d.next_observations, d.task_ids],
                       "infos": d.infos, "metadata": d.metadata})  # fmt: skip
    return digest(read_json(path))


@pytest.mark.parametrize(
    "kind",
    ["checkpoint", "prompt", "prompt_set", "train.hdf5", "demos.hdf5", "references.json",
     "run record"],
)  # fmt: skip
def test_corrupted_bytes_are_never_used(kind, artifacts, tmp_path):
    """Flipped bytes anywhere in a file: loading fails with the file's name, or, where the
    bytes carry no content (zip padding, HDF5 free space), loads exactly the original."""
    original = artifacts[kind]
    want = _load(kind, original)
    size = original.stat().st_size
    caught = 0
    for offset in np.linspace(0, size - 2, OFFSETS).astype(int):
        bad = tmp_path / f"{offset}{original.suffix}"
        shutil.copy(original, bad)
        _flip(bad, int(offset))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = _load(kind, bad)
        except ArtifactError as err:
            assert str(bad) in str(err), err
            caught += 1
        else:
            assert got == want, f"{kind}: byte {offset} changed the content and loaded"
    # The rest hit bytes that carry no content (padding, reserved header space).
    assert caught >= OFFSETS // 4, f"{kind}: only {caught}/{OFFSETS} corruptions detected"
    print(f"{kind}: {caught}/{OFFSETS} corruptions rejected, the rest loaded unchanged")


def test_content_change_with_valid_container_is_caught(artifacts, tmp_path):
    """A weight changed inside an intact archive (not only broken bytes) is caught."""
    obj = torch.load(artifacts["checkpoint"], weights_only=True)
    key = next(iter(obj["state_dict"]))
    obj["state_dict"][key] = obj["state_dict"][key] + 1.0
    torch.save(obj, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: content does not match"):
        load_policy(tmp_path / "edited.pt")


def test_missing_keys_are_named_with_the_file(artifacts, tiny_data_dir, tmp_path):
    from cmt.benchmarks import make_benchmark

    obj = load_sealed(artifacts["checkpoint"])
    del obj["normalizer"]
    atomic_torch_save(obj, tmp_path / "no_norm.pt")  # validly sealed, but incomplete
    with pytest.raises(CheckpointError, match=r"no_norm\.pt: missing keys \['normalizer'\]"):
        load_policy(tmp_path / "no_norm.pt")

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    refs = read_json(data_dir / "references.json")
    del refs["5"]
    (data_dir / "references.json").write_text(json.dumps(sealed_json(refs)))
    params = parse_params(TINY)
    with pytest.raises(ArtifactError, match=r"references\.json: missing keys \['5'\]"):
        make_benchmark(params.data).load(data_dir)


def test_outputs_are_byte_reproducible(tiny_data_dir, tmp_path):
    """Same config and seed: byte-identical checkpoint, prompt and dataset files."""
    from cmt.benchmarks import make_benchmark

    params = parse_params(TINY)
    for run in ("a", "b"):
        make_benchmark(params.data).build_datasets(tmp_path / run / "data", progress=False)
        data = load_data(params, tmp_path / run / "data")
        ckpt = pretrain_backbone(params, "cmt", 0, data, tmp_path / run / "ckpt", progress=False)
        make_prompts(params, "cmt_tuned", ckpt, data, 0, tmp_path / run / "prompts", progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert {f.suffix for f in files} == {".pt", ".hdf5", ".json"}
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_non_finite_training_stops_naming_the_step(tiny_data_dir, tmp_path):
    params = parse_params(TINY)
    data = load_data(params, tiny_data_dir)
    # A finite but absurd rate: the first update overflows the weights.
    bad = parse_params({**TINY, "pretrain": {**TINY["pretrain"], "lr": 1e30, "grad_clip": 1e30}})
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient norm at step 1 "):
        pretrain_backbone(bad, "cmt", 0, data, tmp_path / "ckpt", progress=False)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())

    ckpt = pretrain_backbone(params, "cmt", 0, data, tmp_path / "good", progress=False)
    bad = parse_params({**TINY, "prompt_tune": {**TINY["prompt_tune"], "lr": 1e30}})
    with pytest.raises(NonFiniteError, match=r"prompt tuning: non-finite .* at step \d+"):
        make_prompts(bad, "cmt_tuned", ckpt, data, 0, tmp_path / "prompts", progress=False)
    assert not (tmp_path / "prompts").exists()


def test_corrupt_resume_state_falls_back_to_the_previous_one(tiny_data_dir, tmp_path):
    params = parse_params(TINY)  # checkpoint_every 10, 30 steps
    data = load_data(params, tiny_data_dir)
    straight = pretrain_backbone(params, "cmt", 0, data, tmp_path / "straight", progress=False)

    class Killed(Exception):
        pass

    def kill_at_25(step, metrics):
        if step >= 25:
            raise Killed

    p = parse_params({**TINY, "pretrain": {**TINY["pretrain"], "log_every": 1}})
    with pytest.raises(Killed):
        pretrain_backbone(p, "cmt", 0, data, tmp_path / "a", on_metrics=kill_at_25, progress=False)
    last, prev = tmp_path / "a" / "last.pt", tmp_path / "a" / "prev.pt"
    assert safe_load(last)["step"] == 20 and safe_load(prev)["step"] == 10
    _flip(last, last.stat().st_size // 2)
    steps = []
    with pytest.warns(UserWarning, match=r"last\.pt: .*; trying an older resume state"):
        resumed = pretrain_backbone(
            p, "cmt", 0, data, tmp_path / "a", on_metrics=lambda s, m: steps.append(s),
            progress=False,
        )  # fmt: skip
    assert steps == list(range(30))  # steps 0-9 replayed from prev.pt, 10-29 trained again
    a, b = load_policy(resumed)[0].state_dict(), load_policy(straight)[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs after resuming from prev.pt")


@pytest.mark.parametrize(
    "override, path",
    [
        ("pretrain.lr=.inf", "pretrain.lr"),
        ("prompt_tune.lr=.nan", "prompt_tune.lr"),
        ("compare.seeds=[0,0]", "compare.seeds"),
        ("compare.seeds=[-1]", "compare.seeds"),
        ("data.test_tasks=[1,99]", "data"),
    ],
)
@pytest.mark.parametrize("stage", ["pretrain", "prompt_tune", "evaluate"])
def test_bad_config_exits_2_before_any_work(stage, override, path, tmp_path, monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"pipelines.{stage}")
    assert module.main(["--params", str(ROOT / "params.yaml"), "--set", override]) == 2
    assert f"  {path}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no outputs


def test_stage_arguments_are_checked_against_the_config(tmp_path, monkeypatch, capsys):
    from pipelines import pretrain, prompt_tune

    monkeypatch.chdir(tmp_path)
    base = ["--params", str(ROOT / "params.yaml")]
    assert pretrain.main([*base, "--seed", "7"]) == 2
    assert "--seed 7: not one of compare.seeds [0, 1, 2]" in capsys.readouterr().err
    assert pretrain.main([*base, "--backbone", "bc"]) == 2
    assert "--backbone 'bc': not one of compare.backbones" in capsys.readouterr().err
    assert prompt_tune.main([*base, "--seed", "-1"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_pipeline_flow_rejects_non_finite_and_duplicate_values():
    from pipelines.pipeline import cmt_pipeline

    with pytest.raises(Exception, match="finite number"):
        cmt_pipeline.validate_parameters({"params": {"pretrain": {"lr": float("inf")}}})
    with pytest.raises(Exception, match="duplicates"):
        cmt_pipeline.validate_parameters({"params": {"compare": {"seeds": [1, 1]}}})


def test_corrupt_input_stops_the_stage_before_any_work(artifacts, tiny_data_dir, tmp_path):
    """A corrupted checkpoint: exit 1 naming it, no MLflow run, no Prefect server, no output."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    bad = tmp_path / "model.pt"
    shutil.copy(artifacts["checkpoint"], bad)
    _flip(bad, bad.stat().st_size // 2)
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.prompt_tune", "--params", "params.yaml",
         "--data", "data", "--checkpoint", "model.pt", "--out", "prompts", "--metrics", "m"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"error: {bad.name}: " in out.stderr and "sha256" in out.stderr, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model.pt", "params.yaml"]
    assert "Starting temporary server" not in out.stdout + out.stderr


def test_cli_names_a_corrupt_dataset_without_a_traceback(tiny_data_dir, tmp_path, capsys):
    """``cmt compare`` on a dataset with a flipped byte: exit 1, one line naming the file."""
    from cmt.cli import main

    shutil.copytree(tiny_data_dir, tmp_path / "data")
    train = tmp_path / "data" / "train.hdf5"
    _flip(train, train.stat().st_size // 2)
    sets = [a for k, v in TINY.items() for f, x in v.items() for a in ("--set", f"{k}.{f}={x}")]
    argv = ["compare", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), *sets]
    assert main([*argv, "--params", str(ROOT / "params.yaml"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "train.hdf5" in err and "sha256" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------- registry


@pytest.fixture
def registry(tmp_path):
    """A real SQLite store with a registered model of 8 versions."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(8):
        client.create_model_version("m", str(tmp_path), None)
    return client


def _aliases(client, name="m") -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def test_non_finite_metric_never_becomes_champion(registry):
    from cmt import tracking

    with pytest.raises(NonFiniteError, match="m version 1: score_mean = nan is not finite"):
        tracking.promote(registry, "m", "1", "score_mean", float("nan"))
    with pytest.raises(NonFiniteError):
        tracking.promote(registry, "m", "1", "score_mean", float("inf"))
    assert _aliases(registry) == {}
    assert "cmt.score_mean" not in registry.get_model_version("m", "1").tags
    assert tracking.promote(registry, "m", "2", "score_mean", 5.0).alias == "champion"
    # A champion whose recorded value is not finite (or missing) is always replaced.
    for broken in ("nan", "inf", None):
        if broken is None:
            registry.delete_model_version_tag("m", "2", "cmt.score_mean")
        else:
            registry.set_model_version_tag("m", "2", "cmt.score_mean", broken)
        registry.set_registered_model_alias("m", "champion", "2")
        assert tracking.promote(registry, "m", "3", "score_mean", -100.0).alias == "champion"
    assert _aliases(registry)["champion"] == "3"


@pytest.mark.slow
def test_concurrent_promotions_do_not_interleave(registry, tmp_path):
    """Four processes promote at the same moment, twice: the champion is always the best
    version, and each decision compared with the champion of the one before."""
    values = [3.0, 7.0, 8.0, 2.0]
    code = textwrap.dedent(
        """
        import json, os, sys, time, mlflow
        from cmt import tracking
        client = mlflow.MlflowClient(sys.argv[1])
        open(sys.argv[4] + "." + sys.argv[2], "w").close()  # imported: ready
        while not os.path.exists(sys.argv[4]):
            time.sleep(0.01)
        p = tracking.promote(client, "m", sys.argv[2], "score_mean", float(sys.argv[3]))
        print(json.dumps([p.version, p.alias, p.value, p.previous_champion, p.previous_value]))
        """
    )
    for trial in range(2):
        for alias in ("champion", "challenger"):
            if alias in _aliases(registry):
                registry.delete_registered_model_alias("m", alias)
        go = tmp_path / f"go{trial}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, registry.tracking_uri, str(v + 1), str(x), str(go)],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for v, x in enumerate(values)
        ]
        deadline = time.time() + 300
        while len(list(tmp_path.glob(f"go{trial}.*"))) < len(values) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()  # all at once
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        assert _aliases(registry)["champion"] == "3", (trial, results)
        # Serialised: the champions taken form one increasing chain, each one replacing the
        # previous champion in the chain (none was overwritten by a stale comparison).
        chain = sorted((r for r in results if r[1] == "champion"), key=lambda r: r[2])
        assert [r[3] for r in chain[1:]] == [r[0] for r in chain[:-1]], results
        for _, alias, value, _, prev in results:
            assert (alias == "champion") == (prev is None or value > prev), results


@pytest.mark.slow
def test_champion_with_corrupted_files_does_not_load(artifacts, tmp_path, monkeypatch):
    """``models:/<name>@champion`` checks its files' content hashes when it loads."""
    import mlflow
    import pandas as pd

    from cmt import tracking
    from cmt.serving import log_policy_model

    for var in ("MLFLOW_TRACKING_URI", "CMT_MLFLOW_PARENT_RUN_ID", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    params = parse_params(
        {"tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t"}}
    )
    model, _, _ = load_policy(artifacts["checkpoint"])
    example = pd.DataFrame({"task": [1], **{f"obs_{i}": [0.0] for i in range(model.obs_dim)}})
    previous = mlflow.get_tracking_uri()
    try:
        with tracking.stage_run("evaluate", params) as run:
            info = log_policy_model(
                artifacts["checkpoint"], artifacts["prompt_set"], model.obs_dim, model.act_dim,
                example, registered_model_name="cmt-t",
            )  # fmt: skip
            version = str(info.registered_model_version)
            assert tracking.promote(run.client, "cmt-t", version, "score_mean", 1.0).alias == (
                "champion"
            )
        mlflow.pyfunc.load_model("models:/cmt-t@champion")  # intact: loads
        stored = [
            p
            for p in (tmp_path / "mlruns").rglob("*.pt")
            if p.read_bytes() == artifacts["checkpoint"].read_bytes()
        ]
        assert len(stored) == 1
        _flip(stored[0], stored[0].stat().st_size // 2)
        with pytest.raises(Exception, match=r"content does not match its recorded sha256"):
            mlflow.pyfunc.load_model("models:/cmt-t@champion")
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


# ---------------------------------------------------------------------- killed processes


def test_killed_stage_run_is_marked_killed_at_the_next_start(tmp_path, monkeypatch):
    import mlflow

    from cmt import tracking

    for var in ("MLFLOW_TRACKING_URI", "CMT_MLFLOW_PARENT_RUN_ID", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    raw = {"tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t"}}
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import json, time
            from cmt import tracking
            from cmt.config import parse_params
            params = parse_params(json.load(open("raw.json")))
            with tracking.stage_run("pretrain", params) as run:
                print(run.run_id, flush=True)
                time.sleep(600)
            """
        )],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed_id = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    client = mlflow.MlflowClient(raw["tracking"]["tracking_uri"])
    assert client.get_run(killed_id).info.status == "RUNNING"  # nobody could end it
    previous = mlflow.get_tracking_uri()
    try:
        with tracking.stage_run("pretrain", parse_params(raw)) as run:
            pass
    finally:
        mlflow.set_tracking_uri(previous)
    dead = client.get_run(killed_id)
    assert dead.info.status == "KILLED"
    assert dead.data.tags[tracking.TAG_ERROR].startswith("killed: process ")
    assert str(proc.pid) in dead.data.tags[tracking.TAG_ERROR]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_watchdog_stops_the_children_of_a_killed_stage(tmp_path):
    """A child server of a stage killed with SIGKILL stops within seconds."""
    code = textwrap.dedent(
        """
        import subprocess, sys, time
        from pipelines.watchdog import guard
        guard()
        cmd = [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, text=True
    )
    child = int(proc.stdout.readline())
    time.sleep(1.5)  # the watchdog has seen the child
    assert _alive(child)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the killed stage's child server is still running"


@pytest.mark.slow
def test_stage_killed_mid_training_and_rerun(tiny_data_dir, tmp_path):
    """kill -9 of a real pretrain stage after its first resume checkpoint: its Prefect server
    stops, the rerun resumes, marks the killed MLflow run KILLED, and the learning curve keeps
    the steps before the resume point."""
    import mlflow

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    raw["pretrain"].update(steps=60, checkpoint_every=20, log_every=5)
    raw["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    # The shared server (pipelines/server.py) stops itself 2 s after its last stage's lease.
    env = {**_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "CMT_PREFECT_SERVER_IDLE_S": "2",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "pipelines.pretrain", "--params", "params.yaml", "--data",
           "data", "--out", "ckpt", "--metrics", "m.json", "--curve", "curve.csv"]  # fmt: skip
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while not (tmp_path / "ckpt" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    from cmt.procs import descendants

    servers = ("uvicorn", "pipelines.server")  # Prefect's own, or the shared one
    children = [
        p
        for p in descendants(proc.pid)
        if any(name in Path(f"/proc/{p}/cmdline").read_text() for name in servers)
    ]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert children, "expected the stage's temporary Prefect server"
    deadline = time.time() + 30
    while any(map(_alive, children)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, children)), "Prefect server of the killed stage still running"

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    client = mlflow.MlflowClient(raw["tracking"]["tracking_uri"])
    runs = client.search_runs(
        [client.get_experiment_by_name("cmt").experiment_id], "tags.`cmt.kind` = 'stage'"
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    steps = [int(line.split(",")[0]) for line in (tmp_path / "curve.csv").read_text().split()[1:]]
    assert steps == [*range(0, 60, 5), 59]
    assert (
        not (tmp_path / "ckpt" / "last.pt").exists() and (tmp_path / "ckpt" / "model.pt").exists()
    )


# ---------------------------------------------------------------------- names as an attacker

# Shell payloads in a dataset id: each would run `touch PWNED` if it reached a shell unquoted
# (or, for the quote, even quoted).
PAYLOADS = ["x;touch PWNED;", "x$(touch PWNED)", "x`touch PWNED`", "x'; touch PWNED; echo '"]
ENTRY_POINTS = {
    "cmt generate": [sys.executable, "-m", "cmt.cli", "generate"],
    "collect stage": [sys.executable, "-m", "pipelines.collect", "--out", "d", "--behaviour", "b"],
    "pipeline": [sys.executable, "-m", "pipelines.pipeline"],
}


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_shell_payload_in_a_name_is_refused_and_nothing_runs(entry, tmp_path):
    """A dataset id (given directly, or derived from a D4RL file name) that carries shell
    syntax, a path escape or a space: exit 2 naming the key, nothing created, nothing run."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    probes = [(["--set", f"data.name={p}"], "data.name: not a safe name") for p in PAYLOADS[:2]] + [
        (["--preset", "hopper_medium_replay", "--set", f"data.source={s}"], "data: the dataset id")
        for s in ("x;touch PWNED;.hdf5", "/tmp/...hdf5", "/tmp/hopper medium.hdf5")
    ]
    for args, expected in probes:
        out = _run([*ENTRY_POINTS[entry], "--params", "params.yaml", *args], tmp_path)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.rstrip().endswith("]"), out.stderr  # names where the value came from
        assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], args


def test_a_yaml_tag_in_set_is_refused_as_config(tmp_path, monkeypatch, capsys):
    """``--set`` values are plain YAML: an object tag is a config error (exit 2), not a
    crash, and constructs nothing."""
    from cmt.cli import main

    monkeypatch.chdir(tmp_path)
    for item in ('a=!!python/object/apply:os.system ["touch PWNED"]', "pretrain.lr=[open"):
        assert main(["config", "--params", str(ROOT / "params.yaml"), "--set", item]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --set {item!r}: the value is not plain YAML"), err
    assert list(tmp_path.iterdir()) == []


def test_every_payload_is_refused_by_the_config():
    from cmt.config import load_params

    for payload in PAYLOADS:
        with pytest.raises(Exception, match="data.name: not a safe name"):
            load_params(ROOT / "params.yaml", {"data.name": payload})


def test_unsafe_experiment_name_and_preset_are_refused(tmp_path, capsys):
    from pipelines.pipeline import cmt_pipeline, main

    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(ROOT / "params.yaml"), "--name", "x;touch PWNED;"])
    assert exit_.value.code == 2 and "not a safe name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # The deployment's form: refused when submitted, before the flow starts.
    for bad, key in (
        ({"preset": "../params"}, "preset"),
        ({"experiment_name": "a b"}, "experiment_name"),
        ({"params": {"data": {"name": "x;touch PWNED;"}}}, "params.data.point_robot.name"),
    ):
        with pytest.raises(Exception, match="invalid parameters") as err:
            cmt_pipeline.validate_parameters(bad)
        assert f"- {key}: " in str(err.value), err.value
    schema = cmt_pipeline.parameters.model_dump()["properties"]
    from cmt.config import preset_names

    assert set(preset_names()) <= set(json.dumps(schema["preset"]).split('"'))


def test_failures_print_one_line_and_keep_the_traceback_in_a_log(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    """An unexpected error in ``cmt``: one line naming it and the log file, whose traceback
    is complete; the line never recommends loading with weights_only=False."""
    from cmt.cli import main

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    monkeypatch.setenv("CMT_LOG_DIR", str(tmp_path / "logs"))
    sets = ["--set", "pretrain.steps=1", "--set", "evaluate.episodes=1"]
    argv = ["compare", "--params", str(ROOT / "params.yaml"), "--quiet", "--out", "o", *sets]
    # A references.json that is a directory: not an error we foresee (IsADirectoryError).
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    (tmp_path / "data" / "references.json").unlink()
    (tmp_path / "data" / "references.json").mkdir()
    code = main([*argv, "--data", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: cmt-compare failed: ") and "traceback in " in err[0], err
    log = Path(err[0].rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text()


def test_a_full_disk_is_named(tmp_path):
    """A write that fills the disk fails naming the file, and leaves no partial file."""
    from cmt.atomic import WriteError, write_bytes

    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        target = mount / "data" / "train.hdf5"
        with pytest.raises(WriteError, match=rf"{target}: cannot write \(No space left"):
            write_bytes(target, b"x" * 200_000)
        assert list((mount / "data").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---------------------------------------------------------------------- the whole pipeline


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A committed clone-like repository on the tiny config, with its own Prefect home and
    the stages' shared Prefect server, stopped at the end."""
    path = tmp_path_factory.mktemp("repo")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in _env().items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(path), PREFECT_HOME=str(path.parent / "prefect_home"))
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    clone_like_repo(path, env)
    yield path, env
    subprocess.run([sys.executable, "-m", "pipelines.server", "stop"], cwd=path, env=env)


@pytest.mark.slow
def test_dvc_exp_run_with_a_shell_payload_runs_nothing(tiny_repo):
    """``dvc exp run -S`` writes the value into params.yaml before any of our code runs: the
    check stage refuses it, and no stage command (which would interpolate it) ever runs."""
    path, env = tiny_repo
    for payload in ("'x;touch PWNED;'", "\"x'; touch PWNED; echo '\""):
        out = subprocess.run(["dvc", "exp", "run", "-S", f"data.name={payload}"], cwd=path,
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode != 0
        assert "data.name: not a safe name" in out.stdout + out.stderr, out.stdout + out.stderr
        assert "failed to reproduce 'check'" in out.stderr, out.stderr
        assert not list(path.rglob("PWNED*"))
        assert "Running stage 'collect'" not in out.stdout
        subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=path, check=True)


def _prefect_runs(env: dict[str, str]) -> list[tuple[str, str]]:
    """(name, state type) of every flow run on the repository's shared Prefect server."""
    code = textwrap.dedent(
        """
        import json
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from pipelines.server import shared_server
        with shared_server(timeout=120) as url, temporary_settings({PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs()
        print(json.dumps([(r.name, r.state.type.value) for r in runs]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.stdout.splitlines()[-1])]


def _pipeline_runs(path: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cmt")
    return client.search_runs([exp.experiment_id], "tags.`cmt.kind` = 'pipeline'")


def _start_and_kill(path: Path, env: dict[str, str], watchdog_too: bool) -> int:
    """Start the pipeline (a long pretraining), SIGKILL it once pretraining's flow runs."""
    from cmt.procs import descendants

    log = open(path / "killed.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.pipeline", "--set",
                             "pretrain.steps=5000"], cwd=path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    # Under the pipeline flow a stage's flow run is its child: Prefect calls it a subflow run.
    while "run 'seed0 · dt · pretrain'" not in (path / "killed.log").read_text():
        assert proc.poll() is None and time.time() < deadline, (path / "killed.log").read_text()
        time.sleep(0.5)
    assert list((path / ".cmt" / "pipeline").glob(f"{proc.pid}.json"))
    assert "steps: 5000" in (path / "params.yaml").read_text()  # DVC wrote the experiment's
    if watchdog_too:  # the watchdog is in a session of its own, not among the descendants
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"pipelines.watchdog" in cmdline and str(proc.pid).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
    children = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    if watchdog_too:
        for pid in children:  # nobody stops them now: do it, as the test's own cleanup
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return proc.pid


@pytest.mark.slow
def test_killed_pipeline_leaves_nothing_running_and_nothing_changed(tiny_repo):
    """kill -9 of ``python -m pipelines.pipeline``: its watchdog restores params.yaml and
    ends the MLflow pipeline run (KILLED) and the Prefect flow runs (CRASHED); with the
    watchdog killed too, the next start does it. That next run fails in a stage: it ends with
    one line naming the stage and its log, and prints no traceback."""
    path, env = tiny_repo
    before = (path / "params.yaml").read_bytes()
    pid = _start_and_kill(path, env, watchdog_too=False)
    deadline = time.time() + 120
    while list((path / ".cmt" / "pipeline").glob("*.json")) and time.time() < deadline:
        time.sleep(0.5)
    assert not list((path / ".cmt" / "pipeline").glob("*.json")), "not recovered"
    assert (path / "params.yaml").read_bytes() == before
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=path)
    assert staged.returncode == 0, "params.yaml left staged"
    (run,) = _pipeline_runs(path)
    assert run.info.status == "KILLED", run.info
    assert (
        run.data.tags["cmt.error"].startswith("killed: pipeline process ")
        and str(pid) in (run.data.tags["cmt.error"])
    )
    states = _prefect_runs(env)
    assert ("seed0 · dt · pretrain", "CRASHED") in states, states  # the stage's flow run
    pipeline = [s for name, s in states if name.startswith("point_robot · ")]  # dataset first
    assert pipeline == ["CRASHED"], states

    _start_and_kill(path, env, watchdog_too=True)
    assert len(list((path / ".cmt" / "pipeline").glob("*.json"))) == 1  # nobody recovered
    device = "cpu" if torch.cuda.is_available() else "cuda"  # fails at once without CUDA
    out = subprocess.run([sys.executable, "-m", "pipelines.pipeline", "--set",
                          f"pretrain.device={device}"], cwd=path, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert "earlier killed pipeline run: params.yaml restored" in out.stderr, out.stderr[-3000:]
    assert not list((path / ".cmt" / "pipeline").glob("*.json"))
    last_run = "FAILED" if device == "cuda" else "FINISHED"
    assert sorted(r.info.status for r in _pipeline_runs(path)) == sorted(
        [last_run, "KILLED", "KILLED"]
    )
    assert [s for _, s in _prefect_runs(env)].count("CRASHED") == 4  # 2 pipelines, 2 stages
    if device == "cuda":
        text = out.stdout + out.stderr
        last = out.stderr.rstrip().splitlines()[-1]
        assert out.returncode == 1 and "Traceback" not in text, text[-5000:]
        assert last.startswith("error: pipeline failed in stage 'pretrain@dt-0': pretrain "
                               "failed: RuntimeError: pretrain.device='cuda'"), last  # fmt: skip
        log = path / last.rsplit("traceback in ", 1)[1].rstrip(")")
        assert "Traceback (most recent call last)" in log.read_text()
        assert len(text.splitlines()) < 100, text  # one pipeline run, not 330 lines

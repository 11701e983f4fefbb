"""Fault injection on real files, real processes and a real SQLite MLflow store: corrupted
bytes in every artifact kind, non-finite numbers, bad config, killed processes and concurrent
promotions. Each test asserts the exact failure and that nothing was registered or lost.
The tests that start many processes or a real stage with its Prefect server are marked slow."""

from __future__ import annotations

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
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

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

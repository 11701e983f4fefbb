"""Pipeline contracts that need no DVC run: config sections, import hygiene, the library
without Prefect and MLflow, MLflow stage runs and the registry, the pyfunc model, the
pipeline flow's parameters and the stage graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmt.config import ConfigError, Params, TrackingConfig, load_params

# Prefect creates its home directory when imported: keep these tests out of ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cmt-test-prefect-"))
ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = ("collect", "preprocess", "pretrain", "prompt_tune", "evaluate", "report")


def _python(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CMT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite store in a temp dir; MLflow's process-wide state is restored after."""
    import mlflow

    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_ID",
        "CMT_MLFLOW_PARENT_RUN_ID",
        "DVC_ROOT",
        "DVC_STAGE",
        "DVC_EXP_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    params = Params.model_validate(
        {"tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t"}}
    )
    yield params
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_pipeline_sections_in_params_yaml():
    params = load_params(ROOT / "params.yaml")
    assert params.tracking == TrackingConfig()
    assert params.tracking.model_name(params.data.name) == "cmt-point_robot"
    assert params.orchestration.task_runner == "threads"
    with pytest.raises(ConfigError, match="orchestration.task_runner"):
        load_params(ROOT / "params.yaml", {"orchestration.task_runner": "ray"})
    with pytest.raises(ConfigError, match="tracking.primary_metric"):
        load_params(ROOT / "params.yaml", {"tracking.primary_metric": "loss"})


def test_imports_have_no_side_effects(tmp_path):
    """Importing the library, the tracking module and every flow module creates no files,
    sets no tracking URI and no environment variable, and the library pulls in neither
    MLflow nor Prefect."""
    out = _python(
        f"""
        import os, sys, importlib
        for name in ("JAX_PLATFORMS", "XLA_FLAGS"):  # what an import used to set
            os.environ.pop(name, None)
        before = dict(os.environ)
        library = ["cmt", "cmt.config", "cmt.experiment", "cmt.compare", "cmt.cli",
                   "cmt.evaluation.rollout", "cmt.evaluation.report", "cmt.checkpoint",
                   "cmt.behaviour.rollout", "cmt.methods", "cmt.envs.smax", "cmt.behaviour.ppo"]
        for m in library:
            importlib.import_module(m)
        assert "mlflow" not in sys.modules and "prefect" not in sys.modules, "library"
        changed = {{k for k in {{*before, *os.environ}} if before.get(k) != os.environ.get(k)}}
        changed = {{k for k in changed if not k.startswith(("TPU_", "TF_"))}}  # jax's own
        assert not changed, f"importing the library changed the environment: {{changed}}"
        for m in ["cmt.tracking", "cmt.serving", "pipelines.runner", "pipelines.pipeline",
                  "pipelines.serve"] + ["pipelines." + s for s in {STAGE_MODULES!r}]:
            importlib.import_module(m)
        assert "MLFLOW_TRACKING_URI" not in os.environ
        import mlflow.tracking._tracking_service.utils as u
        assert not u._tracking_uri, u._tracking_uri
        print(sorted(os.listdir(".")))
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_library_runs_without_prefect_or_mlflow(tmp_path):
    """The experiment steps run in a process where importing Prefect or MLflow fails."""
    out = _python(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"mlflow", "prefect", "prefect_dask", "dvc"}:
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        from cmt.benchmarks import make_benchmark
        from cmt.config import parse_params
        from cmt.evaluation.records import evaluate_method
        from cmt.experiment import load_data, make_prompts, pretrain_backbone
        p = parse_params({
            "data": {"num_tasks": 4, "test_tasks": [1], "horizon": 10, "episodes_per_level": 2,
                     "demo_episodes": 3, "reference_episodes": 2},
            "model": {"n_layer": 1, "d_model": 16, "context_len": 4, "context_size": 4},
            "pretrain": {"steps": 3, "batch_size": 4, "warmup_steps": 1},
            "prompt_tune": {"steps": 2, "batch_size": 4, "eval_every": 1},
            "evaluate": {"episodes": 1}})
        make_benchmark(p.data).build_datasets("data", progress=False)
        data = load_data(p, "data")
        seen = []
        ckpt = pretrain_backbone(p, "cmt", 0, data, "ckpt", on_metrics=lambda s, m: seen.append(s),
                                 progress=False)
        prompts = make_prompts(p, "cmt_tuned", ckpt, data, 0, "prompts", progress=False)
        r = evaluate_method(p, ckpt, {t: v["prompt"] for t, v in prompts.items()}, data, 0)
        assert seen and "score_mean" in r
        print("ok")
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_stage_runs_grouped_and_failures_recorded(mlflow_store, monkeypatch):
    import mlflow

    from cmt import tracking

    params = mlflow_store
    with tracking.stage_run("collect", params) as a:
        a.log_metrics({"data/x": 1.0})
        a.metrics_callback("x/")(3, {"y": 2.0})
    with tracking.stage_run("preprocess", params) as b:
        pass
    assert a.parent_id == b.parent_id  # same config: one pipeline run
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("pretrain", params) as c:
            raise RuntimeError("boom")
    client = mlflow.MlflowClient()
    run_a, run_c = client.get_run(a.run_id), client.get_run(c.run_id)
    assert run_a.info.status == "FINISHED"
    assert run_a.data.tags[tracking.PARENT_TAG] == a.parent_id
    assert run_a.data.params["pretrain.lr"] == str(params.pretrain.lr)
    assert [m.step for m in client.get_metric_history(a.run_id, "x/y")] == [3]
    assert run_c.info.status == "FAILED"
    assert run_c.data.tags[tracking.TAG_ERROR] == "RuntimeError: boom"
    error_txt = client.download_artifacts(c.run_id, "error.txt")
    assert Path(error_txt).read_text().startswith("RuntimeError: boom\n\nTraceback")
    assert client.get_run(c.parent_id).info.status == "FAILED"
    assert "config" in [f.path for f in client.list_artifacts(a.run_id)]
    # A long message: the tag is its start, on one line; error.txt has all of it, first.
    long = "invalid configuration\n" + "\n".join(f"  pretrain.x{i}: bad" for i in range(40))
    with pytest.raises(ConfigError), tracking.stage_run("pretrain", params) as g:
        raise ConfigError(long)
    tag = client.get_run(g.run_id).data.tags[tracking.TAG_ERROR]
    assert len(tag) <= 250 and tag.startswith("ConfigError: invalid configuration | pretrain")
    assert tag.endswith("…") and "\n" not in tag
    error_txt = client.download_artifacts(g.run_id, "error.txt")
    assert Path(error_txt).read_text().startswith(f"ConfigError: {long}\n\nTraceback")

    # A different config is a different pipeline run; the env var names one explicitly.
    other = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"lr": 1.0})})
    with tracking.stage_run("collect", other) as d:
        pass
    assert d.parent_id != a.parent_id
    monkeypatch.setenv(tracking.PARENT_ENV, a.parent_id)
    with tracking.stage_run("collect", other) as e:
        pass
    assert e.parent_id == a.parent_id
    # The env var's run belongs to the pipeline flow, which ends it: a stage leaves it alone.
    assert client.get_run(a.parent_id).info.status == "FAILED"
    # SIGTERM (Prefect raises TerminationSignal) ends a stage KILLED; the pipeline's run is
    # left RUNNING for the killed pipeline's recovery (pipelines/recovery.py) to end.
    from prefect.exceptions import TerminationSignal

    client.update_run(a.parent_id, status="RUNNING")
    with pytest.raises(TerminationSignal), tracking.stage_run("pretrain", other) as k:
        raise TerminationSignal(signal=15)
    assert client.get_run(k.run_id).info.status == "KILLED"
    assert client.get_run(a.parent_id).info.status == "RUNNING"
    client.set_terminated(a.parent_id, "FAILED")
    monkeypatch.delenv(tracking.PARENT_ENV)
    with tracking.stage_run("collect", params) as f:
        pass
    assert f.parent_id == a.parent_id
    assert client.get_run(a.parent_id).info.status == "FINISHED"  # status of its latest stage


def test_stage_runs_say_what_they_are(mlflow_store, tiny_data_dir):
    """A stage run logs only the parameters of its sections, its datasets as dataset inputs
    (content hash as digest, the file as source), its git commit as source, its figures and
    its description; a pipeline run is named for its dataset, experiment and start time."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from cmt import tracking

    params = mlflow_store
    with tracking.stage_run("pretrain", params, "seed0 · cmt · pretrain", None, ["model"]) as a:
        logged = a.log_datasets(tiny_data_dir, "training")
        a.log_figure(plt.figure(), "figures/curve.png")
        a.describe("Pretrained.")
    client = mlflow.MlflowClient()
    run = client.get_run(a.run_id)
    assert run.info.run_name == "seed0 · cmt · pretrain"
    assert {k.split(".")[0] for k in run.data.params} == {"model"}
    assert run.data.tags[tracking.NOTE_TAG] == "Pretrained."
    assert run.data.tags["mlflow.source.name"] == "pipelines/pretrain.py"
    with h5py.File(tiny_data_dir / "train.hdf5") as f:
        sha = str(f.attrs["sha256"])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {tiny_data_dir.name, f"{tiny_data_dir.name} demos"}
    train = inputs[tiny_data_dir.name]
    assert train.dataset.digest == sha[:16]
    assert json.loads(train.dataset.source)["uri"] == str(tiny_data_dir / "train.hdf5")
    assert json.loads(train.dataset.profile)["sha256"] == sha
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    assert logged[0]["episodes"] == json.loads(train.dataset.profile)["episodes"] > 0
    assert [f.path for f in client.list_artifacts(a.run_id, "figures")] == ["figures/curve.png"]
    parent = client.get_run(a.parent_id)
    name, experiment, started = parent.info.run_name.split(" · ")
    assert (name, experiment) == (params.data.name, "workspace") and len(started) == 16
    assert len(parent.data.params) > len(run.data.params)  # the whole config
    assert tracking.with_experiment(parent.info.run_name, "lr02").split(" · ")[1] == "lr02"


def test_parameters_without_effect_are_not_logged():
    """A D4RL dataset read from a file generates nothing: no SAC or budget parameters."""
    from cmt import tracking

    generated = load_params(ROOT / "params.yaml", preset="hopper_medium_replay")
    keys = set(tracking.config_params(generated, ["data"]))
    assert {"data.transitions", "data.sac.sac_steps", "data.top_fraction"} <= keys
    sourced = load_params(
        ROOT / "params.yaml",
        {"data.source": "/x/hopper-medium-replay-v2.hdf5", "data.name": "hopper-medium-replay-v2"},
        preset="hopper_medium_replay",
    )
    keys = set(tracking.config_params(sourced, ["data"]))
    assert "data.source" in keys and "data.top_fraction" in keys
    assert not {k for k in keys if k.startswith(("data.sac.", "data.transitions"))}


def test_stage_parameters_come_from_dvc_yaml(monkeypatch):
    from pipelines.common import stage_param_keys

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert stage_param_keys("pretrain") == ("model", "pretrain")  # a matrix stage
    assert stage_param_keys("prompt_tune") == ("prompt_tune", "data")  # a foreach stage
    assert stage_param_keys("report") == ()
    assert "tracking.registered_method" in (stage_param_keys("evaluate") or ())
    assert stage_param_keys("noop") is None  # not a stage of dvc.yaml: every key


def test_figures_speak_the_setting(tmp_path):
    """Titles name the dataset; a single-task dataset is not said to have test tasks."""
    from cmt.benchmarks import make_benchmark
    from cmt.evaluation.figures import plot_comparison, plot_per_task, plot_score_histogram

    def records(method: str, task: int) -> list[dict]:
        per_task = {str(task): {"return_mean": 10.0 + seed, "score_mean": 5.0} for seed in (0,)}
        return [
            {"method": method, "seed": seed, "score_mean": 40.0 + 10 * seed, "per_task": per_task}
            for seed in (0, 1)
        ]

    meta = make_benchmark(Params().data)
    d4rl = make_benchmark(load_params(ROOT / "params.yaml", preset="hopper_medium_replay").data)
    for bench, method, task, words in (
        (meta, "cmt_tuned", 2, "test tasks"),
        (d4rl, "dt", 0, "Hopper-v5"),
    ):
        for fig in (
            plot_comparison(records(method, task), bench),
            plot_per_task(records(method, task), bench),
        ):
            title = fig.get_suptitle()
            assert title.startswith(f"{bench.name}: ") and words in title, title
            assert bench is meta or "task" not in title.replace(bench.name, ""), title
    comparison = plot_comparison(records("dt", 0), d4rl)
    lines = [line for line in comparison.axes[0].lines if line.get_linestyle() == "-"]
    whiskers = [x for x in (line.get_xdata() for line in lines) if x[0] != x[1]]  # not axvline
    assert np.allclose(whiskers, [[45 - np.sqrt(50), 45 + np.sqrt(50)]])  # mean ± sample std
    edges = np.linspace(300.0, 900.0, 31)  # far outside 0-100: the axis follows the data
    hist = plot_score_histogram(edges, {"dataset": np.ones(30)}, d4rl)
    low, high = hist.axes[0].get_xlim()
    assert 280 < low < 300 and 900 < high < 920


def test_registry_descriptions_speak_the_setting():
    """A single-task dataset's model and versions name its environment and its imported
    source, round the score with its scale beside the raw return, and compare with the
    champion they met."""
    from cmt.benchmarks import make_benchmark
    from cmt.tracking import Promotion
    from pipelines import describe

    bench = make_benchmark(load_params(ROOT / "params.yaml", preset="hopper_medium_replay").data)
    model = describe.model_description(bench, "cmt_tuned", "score_mean")
    assert "Single-agent offline RL" in model and "Hopper-v5" in model
    assert "D4RL normalised score" in model and "test tasks" not in model
    facts = {"name": "hopper_medium_replay", "transitions": 5000, "episodes": 217,
             "sha256": "ab" * 32, "source": "/data/hopper-medium-replay-v2.hdf5"}  # fmt: skip
    record = {"method": "cmt_tuned", "seed": 2, "score_mean": 1.8452560374799167,
              "return_mean": 39.791}  # fmt: skip
    beaten = Promotion("cmt-x", "4", "challenger", 1.85, "3", 12.5)
    text = describe.version_description(bench, record, [facts], beaten, "score_mean")
    assert "Seed 2" in text and "5,000 transitions in 217 episodes" in text
    assert "imported from /data/hopper-medium-replay-v2.hdf5" in text
    assert "normalised score 1.8 (0 = random, 100 = expert), mean return 39.79" in text
    assert "`challenger`: its score_mean 1.85 does not beat the champion, version 3 (12.50)" in text
    assert "test tasks" not in text and "on Hopper-v5" in text
    tags = describe.version_tags(bench, record)
    assert tags["cmt.score_mean"] == "1.85" and tags["cmt.evaluated_on"] == "Hopper-v5"


def _tiny_policy(tmp: Path) -> tuple[Path, Path]:
    from cmt.checkpoint import save_policy
    from cmt.config import ModelConfig
    from cmt.data.dataset import Normalizer
    from cmt.models.policy import SequencePolicy
    from cmt.serving import save_prompt_set

    torch.manual_seed(0)
    model = SequencePolicy(ModelConfig(n_layer=1, d_model=16, context_len=4), 2, 2)
    norm = Normalizer(np.zeros(2, np.float32), np.ones(2, np.float32), 1.0, 1.0)
    save_policy(tmp / "model.pt", model, norm, {})
    save_prompt_set(tmp / "prompts.pt", {1: torch.randn(5, 16), 5: torch.randn(5, 16)})
    return tmp / "model.pt", tmp / "prompts.pt"


def test_registry_aliases_and_pyfunc_model(mlflow_store, tmp_path):
    import mlflow

    from cmt import tracking
    from cmt.serving import log_policy_model

    ckpt, prompts = _tiny_policy(tmp_path)
    example = pd.DataFrame({"task": [1, 5], "obs_0": [0.1, 0.2], "obs_1": [0.0, 0.3]})
    client = mlflow.MlflowClient(tracking.resolve_tracking_uri(mlflow_store.tracking))
    aliases = []
    with tracking.stage_run("evaluate", mlflow_store):
        for value in (1.0, 0.5, 2.0):
            info = log_policy_model(ckpt, prompts, 2, 2, example, registered_model_name="cmt-t")
            version = str(info.registered_model_version)
            aliases.append(tracking.promote(client, "cmt-t", version, "score_mean", value).alias)
    assert aliases == ["champion", "challenger", "champion"]
    assert str(client.get_model_version_by_alias("cmt-t", "champion").version) == "3"
    rows = tracking.registry_rows(client, "cmt-t")
    assert [(r["version"], r["aliases"], r["value"]) for r in rows] == [
        (1, [], 1.0),
        (2, ["challenger"], 0.5),
        (3, ["champion"], 2.0),
    ]

    model = mlflow.pyfunc.load_model("models:/cmt-t@champion")
    assert [c.name for c in model.metadata.signature.outputs.inputs] == ["act_0", "act_1"]
    episode = pd.DataFrame(
        {
            "task": [5, 5, 5],
            "episode": [7, 7, 7],
            "obs_0": [0.1, 0.3, 0.5],
            "obs_1": [0.0, 0.1, 0.2],
        }
    )
    acts = model.predict(episode)
    assert acts.shape == (3, 2) and np.all(np.abs(acts.to_numpy()) <= 1.0)
    # Causal: an episode's first action depends only on its first observation.
    first = model.predict(episode.iloc[:1].drop(columns="episode"))
    np.testing.assert_allclose(first.to_numpy(), acts.to_numpy()[:1], atol=1e-5)
    with pytest.raises(Exception, match="no prompt for tasks"):
        model.predict(pd.DataFrame({"task": [3], "obs_0": [0.0], "obs_1": [0.0]}))


def test_pipeline_flow_parameters_are_validated():
    from prefect.utilities.callables import parameter_schema

    from pipelines.pipeline import apply_overrides, cmt_pipeline, override_value, param_overrides

    ok = cmt_pipeline.validate_parameters({"params": {"pretrain": {"lr": 0.001}}})
    assert isinstance(ok["params"], Params) and ok["params"].pretrain.lr == 0.001
    with pytest.raises(Exception, match="lr"):
        cmt_pipeline.validate_parameters({"params": {"pretrain": {"lr": -1}}})
    with pytest.raises(Exception, match="params.pretrain.lrr: Extra inputs"):
        cmt_pipeline.validate_parameters({"params": {"pretrain": {"lrr": 1}}})
    # The UI form carries the config's field descriptions.
    schema = json.dumps(parameter_schema(cmt_pipeline).model_dump())
    assert "Peak learning rate of AdamW." in schema

    base = Params()
    changed = apply_overrides(base, {"pretrain.lr": 0.001, "compare.seeds": [0]})
    assert param_overrides(changed, base) == ["pretrain.lr=0.001", "compare.seeds=[0]"]
    with pytest.raises(ConfigError, match="pretrain.nope"):
        apply_overrides(base, {"pretrain.nope": 1})
    assert override_value("cmt-{name}") == "'cmt-{name}'"
    assert override_value([True, None, 1.5]) == "[true,null,1.5]"
    assert override_value({"a": 1, "b": [2]}) == "{a:1,b:[2]}"
    # Another benchmark's data section has other keys: it replaces the section whole.
    d4rl = load_params(ROOT / "params.yaml", preset="hopper_medium_replay")
    changes = param_overrides(d4rl, base)
    assert changes[:2] == ["~data", "+data=" + override_value(d4rl.data.model_dump(mode="json"))]
    assert "compare.methods=['dt','bc','filtered_bc','cmt_zero_shot','cmt_tuned']" in changes


def test_deployment_forms(tmp_path):
    """The served deployments' forms: every field described, ``preset`` a choice of the
    presets, the data section as the benchmark's own fields, methods limited to the
    benchmark's, defaults from the committed params.yaml."""
    import yaml

    from cmt.config import preset_names
    from cmt.methods import METHODS
    from pipelines.serve import committed_params, deployments

    deps = {d.name: d for d in deployments(Params(), "cmt-pipeline", ["hopper_medium_replay"])}
    assert set(deps) == {"cmt-pipeline", "hopper_medium_replay"}
    for name, dep in deps.items():
        schema = dep._parameter_openapi_schema.model_dump()
        props = schema["properties"]
        undescribed = [k for k, v in props.items() if not v.get("description")]
        for section, spec in schema["definitions"].items():
            undescribed += [
                f"{section}.{k}" for k, v in spec["properties"].items() if not v.get("description")
            ]
        assert not undescribed, (name, undescribed)
        assert "example" in props["overrides"] and "example" in props["experiment_name"]
        data = schema["definitions"]["Params"]["properties"]["data"]
        assert "oneOf" not in data and data["$ref"].startswith("#/definitions/")
        methods = schema["definitions"]["CompareConfig"]["properties"]["methods"]["items"]
        accepted = dep.parameters["params"]["compare"]["methods"]
        assert set(accepted) <= set(methods["enum"]) < set(METHODS)
    main = deps["cmt-pipeline"]._parameter_openapi_schema.model_dump()
    assert main["properties"]["preset"]["anyOf"][0]["enum"] == preset_names()
    d4rl = deps["hopper_medium_replay"]._parameter_openapi_schema.model_dump()
    assert "preset" not in d4rl["properties"]  # the deployment is the preset
    assert d4rl["definitions"]["Params"]["properties"]["data"]["$ref"].endswith("D4RLData")
    assert "PointRobotData" not in d4rl["definitions"]
    assert deps["hopper_medium_replay"].parameters["params"]["data"]["env"] == "hopper"

    # The committed params.yaml, not what an experiment left in the workspace.
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "params.yaml"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"],
    ):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    raw["pretrain"]["lr"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert committed_params(tmp_path / "params.yaml").pretrain.lr == Params().pretrain.lr
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))  # not committed: the file
    assert committed_params(tmp_path / "other.yaml").pretrain.lr == 0.5


def test_task_runner_from_config():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from cmt.config import OrchestrationConfig
    from pipelines.runner import make_task_runner

    threads = make_task_runner(OrchestrationConfig(max_workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    dask = make_task_runner(OrchestrationConfig(task_runner="dask", dask_workers=2))
    assert isinstance(dask, DaskTaskRunner)
    assert dask.cluster_kwargs["n_workers"] == 2 and dask.cluster_kwargs["host"] == "127.0.0.1"
    remote = make_task_runner(OrchestrationConfig(task_runner="dask", dask_address="tcp://h:1"))
    assert remote.address == "tcp://h:1"


def test_local_dask_cluster_listens_on_loopback_free_ports_only():
    """The local cluster the dask runner starts: no dashboard, nothing on Dask's default 8787,
    every socket on 127.0.0.1."""
    import psutil
    from distributed import LocalCluster

    from cmt.config import OrchestrationConfig
    from pipelines.runner import make_task_runner

    kwargs = make_task_runner(
        OrchestrationConfig(task_runner="dask", dask_workers=1)
    ).cluster_kwargs
    cluster_class = kwargs.pop("cluster_class", None)
    assert cluster_class in (None, "distributed.LocalCluster")
    with LocalCluster(**kwargs) as cluster:
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = [
            c.laddr
            for proc in procs
            for c in proc.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        assert 8787 not in {addr.port for addr in listening}, listening
        assert "8787" not in (cluster.dashboard_link or "")


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_stage_commands_reject_bad_config_before_work(stage, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"pipelines.{stage}")
    code = module.main(["--params", str(ROOT / "params.yaml"), "--set", "pretrain.lr=-1"])
    assert code == 2
    assert "pretrain.lr" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dvc_stage_graph(tmp_path):
    """dvc.yaml resolves with the default params: every stage, per seed where it should be."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run(
        ["dvc", "stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    seeds = Params().compare.seeds
    assert out.stdout.split() == [
        "check",
        "collect",
        "preprocess",
        *[f"pretrain@{b}-{s}" for b in Params().compare.backbones for s in seeds],
        *[f"prompt_tune@{s}" for s in seeds],
        "evaluate",
        "report",
    ]
    for stage in STAGE_MODULES:
        assert f"python -m pipelines.{stage} " in (ROOT / "dvc.yaml").read_text()


def test_stage_dataset_dir_follows_the_preset():
    """Run by hand with --preset, a stage reads data/<name>, where collect wrote it."""
    from pipelines.common import dataset_dir

    params = load_params(ROOT / "params.yaml", preset="ant_dir")
    assert dataset_dir(params, None) == "data/ant_dir"
    assert dataset_dir(params, "elsewhere") == "elsewhere"
    params = load_params(ROOT / "params.yaml", preset="walker2d_medium_expert")
    assert dataset_dir(params, None) == "data/walker2d_medium_expert"


@pytest.mark.slow
def test_shared_prefect_server_is_reused_and_stops_when_idle(tmp_path):
    """Without PREFECT_API_URL the stages share one temporary server: two flows in two
    processes report to the same server (and database), which stops itself once unused."""
    home = tmp_path / "prefect_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CMT_"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), CMT_PREFECT_SERVER_IDLE_S="20")
    flow = textwrap.dedent(
        """
        import sys
        from prefect import flow
        from prefect.settings import PREFECT_API_URL
        from pipelines.common import run_entry, stage_parser

        @flow(name="noop")
        def noop():
            print("api", PREFECT_API_URL.value())

        argv = ["--params", sys.argv[1]]
        sys.exit(run_entry(stage_parser("noop"), lambda args, params: noop(), argv))
        """
    )
    outs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", flow, str(ROOT / "params.yaml")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        outs.append(out)
    assert "Starting temporary server on" in outs[0].stderr
    assert "Using the shared temporary server on" in outs[1].stderr
    urls = [
        line.split()[1] for out in outs for line in out.stdout.splitlines() if line[:4] == "api "
    ]
    assert len(urls) == 2 and urls[0] == urls[1] and urls[0].startswith("http://127.0.0.1:")
    state = json.loads((home / "cmt-server.json").read_text())
    assert state["url"] == urls[0]
    # Both flow runs are in the one server's database.
    req = urllib.request.Request(
        urls[0] + "/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert len(json.loads(resp.read())) == 2
    # Unused for 20 s: it stops and removes its state file.
    deadline = time.time() + 60
    while (home / "cmt-server.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not (home / "cmt-server.json").exists()
    for _ in range(100):
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(state["pid"], signal.SIGKILL)
        pytest.fail("the shared server did not exit")

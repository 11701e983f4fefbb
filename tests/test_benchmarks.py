"""The benchmark layer: one protocol for every setting, a discriminated ``data`` section, the
point-robot results unchanged by the move onto it, and the D4RL-style single-task benchmark."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cmt.benchmarks import DATA_SECTIONS, Benchmark, Episodes, make_benchmark
from cmt.benchmarks.d4rl import D4RLData
from cmt.config import ConfigError, load_params, parse_params, preset_names

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "point_robot_tiny.json"


# --------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_a_conforming_benchmark(preset: str) -> None:
    """API conformance over every registered benchmark (one preset each, at least)."""
    params = load_params(ROOT / "params.yaml", preset=preset)
    bench = make_benchmark(params.data)
    assert isinstance(bench, Benchmark) and bench.name == preset
    spaces = bench.spaces
    assert spaces.obs_dim > 0 and spaces.act_dim > 0 and spaces.num_agents >= 1
    assert bench.eval_tasks and bench.horizon > 0 and bench.levels
    assert params.data.methods and set(params.compare.methods) <= set(params.data.methods)
    episodes = np.array(bench.eval_tasks[:2])
    env = bench.make_batched_env(episodes)
    # A team's agents are rows of their own (folded into the batch, as the policy sees them).
    assert env.num_envs == len(episodes) * spaces.num_agents
    obs = env.reset(seed=0)
    assert obs.shape == (env.num_envs, spaces.obs_dim)
    action = np.zeros((env.num_envs, spaces.act_dim), dtype=np.float32)
    if spaces.discrete:  # one-hot of an available action
        action[np.arange(env.num_envs), env.action_mask().argmax(-1)] = 1.0
    obs, rew, term, trunc = env.step(action)
    assert obs.shape == (env.num_envs, spaces.obs_dim) and rew.shape == term.shape == trunc.shape


def test_benchmark_names_appear_only_in_their_modules() -> None:
    """No code outside ``cmt/benchmarks``, the environments and the behaviour learners (which
    generate one setting's data each) branches on a benchmark."""
    names = {t for s in DATA_SECTIONS for t in s.model_fields["benchmark"].annotation.__args__}
    pattern = re.compile("|".join(rf"['\"]{n}['\"]" for n in names))
    allowed = ("cmt/benchmarks/", "cmt/envs/", "cmt/behaviour/")
    offenders = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder in ("cmt", "pipelines", "scripts", "perf")
        for path in (ROOT / folder).rglob("*.py")
        if not str(path.relative_to(ROOT)).startswith(allowed)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_data_section_holds_only_its_benchmarks_fields() -> None:
    d4rl = {"benchmark": "d4rl", "env": "hopper", "level": "medium"}
    with pytest.raises(ConfigError, match=r"data\.num_tasks: Extra inputs are not permitted"):
        parse_params({"data": {**d4rl, "num_tasks": 3}, **_D4RL_METHODS})
    with pytest.raises(ConfigError, match=r"data\.level: Input should be"):
        parse_params({"data": {**d4rl, "level": "medium-replay"}, **_D4RL_METHODS})
    with pytest.raises(ConfigError, match=r"data\.env: Input should be"):
        parse_params({"data": {**d4rl, "env": "ant"}, **_D4RL_METHODS})
    with pytest.raises(ConfigError, match=r"data\.transitions: Extra inputs"):
        parse_params({"data": {"transitions": 10}})  # a point-robot section (the default)
    with pytest.raises(ConfigError, match="name 'hopper_medium' does not match"):
        parse_params({"data": {**d4rl, "level": "expert", "name": "hopper_medium"}})
    ok = parse_params({"data": d4rl, **_D4RL_METHODS})
    assert ok.data.name == "hopper_medium" and isinstance(ok.data, D4RLData)


_D4RL_METHODS = {
    "compare": {"methods": ["dt", "cmt_tuned"], "backbones": ["dt", "cmt"]},
    "evaluate": {"target_return": "dt_paper"},
}


def test_cross_section_checks_name_their_keys() -> None:
    d4rl = {"data": {"benchmark": "d4rl", "env": "hopper", "level": "medium"}}
    with pytest.raises(ConfigError, match=r"compare\.methods \['mtdt', 'prompt_dt'\] are not"):
        parse_params(d4rl)
    bad_target = {**_D4RL_METHODS, "evaluate": {"target_return": "demo"}}
    with pytest.raises(ConfigError, match="evaluate.target_return 'demo' is not defined"):
        parse_params({**d4rl, **bad_target})
    backbones = {"compare": {"methods": ["dt", "cmt_tuned"], "backbones": ["dt"]}}
    with pytest.raises(ConfigError, match=r"compare\.backbones \['dt'\] must be exactly"):
        parse_params({**d4rl, **_D4RL_METHODS, **backbones})
    with pytest.raises(ConfigError, match="tracking.registered_method 'cmt_tuned' is not one"):
        parse_params({"compare": {"methods": ["mtdt"], "backbones": ["dt"]}})


@pytest.mark.slow
def test_point_robot_metrics_unchanged_by_the_benchmark_layer(tmp_path: Path) -> None:
    """The same seeds give the recorded metrics (tests/golden, tiny budgets): made at commit
    50426b1, before the meta-RL families moved onto the benchmark layer; the context-using
    methods' records remade after issue 20's sampler fixes (bf935fc) changed what CMT and
    Prompt-DT train on, while mtdt's stayed within 1e-6 of the original. Its config names the
    loss weights it was made with (0.5, 0.1), which the point robot's defaults no longer are."""
    from cmt.compare import run_comparison

    golden = json.loads(GOLDEN.read_text())
    torch.set_num_threads(1)
    run_comparison(parse_params(golden["config"]), tmp_path, progress=False)
    refs = _unsealed_sha256(tmp_path / "data" / "references.json")
    assert refs == golden["files"]["references.json"], "the generated data changed"
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    methods = [r["method"] for r in records]
    # Every golden method, once (one seed), and nothing the golden file does not cover.
    assert sorted(methods) == sorted(golden["records"]), methods
    for record in records:
        want = golden["records"][record["method"]]
        # fp32 on the CPU: exact on one machine; other CPUs' kernels may differ in the last
        # bits, which closed-loop control amplifies only slightly over 50 steps.
        assert record["return_mean"] == pytest.approx(want["return_mean"], abs=0.05)
        assert set(record["per_task"]) == set(want["per_task"]), record["method"]
        for task, value in want["per_task"].items():
            assert record["per_task"][task]["return_mean"] == pytest.approx(value, abs=0.1)


def _unsealed_sha256(path: Path) -> str:
    """sha256 of a JSON file as written before files carried their own content hash."""
    import hashlib

    from cmt.integrity import HASH_KEY

    body = {k: v for k, v in json.loads(path.read_text()).items() if k != HASH_KEY}
    return hashlib.sha256((json.dumps(body, indent=2) + "\n").encode()).hexdigest()


# --------------------------------------------------------------------------- D4RL-style


def _write_d4rl_file(path: Path, episodes: int = 30, seed: int = 0) -> np.ndarray:
    """A hopper-shaped file in D4RL's v2 layout (no task_id, no next_observations); episode
    i has constant reward i, so episode returns rank the episodes. Returns the returns."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, size=episodes)
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[ends[::2]] = True
    timeouts[ends[1::2]] = True
    rewards = np.repeat(np.arange(episodes, dtype=np.float32), lengths)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 11)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
        f["rewards"] = rewards
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f["infos/qpos"] = rng.normal(size=(n, 6))
        f["metadata/algorithm"] = "SAC"
    return np.arange(episodes, dtype=np.float64) * lengths


@pytest.fixture
def d4rl_source(tmp_path: Path) -> tuple[D4RLData, Path, np.ndarray]:
    source = tmp_path / "hopper-medium-replay-v2.hdf5"
    returns = _write_d4rl_file(source)
    cfg = D4RLData(benchmark="d4rl", env="hopper", level="medium_replay", source=str(source))
    return cfg, tmp_path / "data", returns


def test_real_d4rl_file_feeds_the_benchmark(d4rl_source) -> None:
    cfg, out, returns = d4rl_source
    assert cfg.name == "hopper-medium-replay-v2"
    bench = make_benchmark(cfg)
    summary = bench.build_datasets(out, progress=False)
    assert summary["train"]["episodes"] == len(returns)
    refs = json.loads((out / "references.json").read_text())
    low, high = -20.272305, 3234.3  # D4RL's hopper references (tests/test_published.py)
    assert refs["0"] == {"random": low, "expert": high}
    data = bench.load(out)
    assert data.demos is None and data.train.num_episodes == len(returns)
    np.testing.assert_allclose(data.train.ep_return, returns)
    np.testing.assert_allclose(
        bench.score(data, 0, Episodes(np.array([low, high, 1000.0]))),
        [0.0, 100.0, 100 * (1000 - low) / (high - low)],
    )
    assert bench.published() == {
        "label": "DT (paper, D4RL v2)",
        "value": 82.7,  # Chen et al. 2021, Table 2
        "metric": "score_mean",
    }


def test_a_mismatched_source_fails_before_any_work(tmp_path: Path) -> None:
    from cmt.data.hdf5 import DatasetError

    source = tmp_path / "walker.hdf5"
    _write_d4rl_file(source)  # hopper widths: 11 observations, 3 actions
    cfg = D4RLData(benchmark="d4rl", env="walker2d", level="medium", source=str(source))
    with pytest.raises(DatasetError, match=r"walker\.hdf5: key 'observations'.*11.*17"):
        make_benchmark(cfg).build_datasets(tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.hdf5").exists()
    missing = cfg.model_copy(update={"source": str(tmp_path / "nope.hdf5")})
    with pytest.raises(DatasetError, match="nope.hdf5: no such file"):
        make_benchmark(missing).build_datasets(tmp_path / "out", progress=False)


def test_prompts_fit_on_top_episodes_and_validate_on_held_out_ones(d4rl_source) -> None:
    cfg, out, returns = d4rl_source
    bench = make_benchmark(cfg)
    bench.build_datasets(out, progress=False)
    data = bench.load(out)
    pdata = bench.prompt_data(data, 0, val_fraction=0.25, seed=3)
    top = set(np.sort(returns)[-3:])  # 10% of 30 episodes
    fit, val = set(pdata.fit.ep_return.tolist()), set(pdata.val.ep_return.tolist())
    assert fit | val == top and not fit & val and val
    # return_weighted samples every episode except the validation ones.
    assert pdata.pool is not None
    assert pdata.pool.num_episodes == len(returns) - len(val)
    assert not val & set(pdata.pool.ep_return.tolist())
    assert bench.prompt_target(data, 0).num_episodes == 3


def test_filtered_bc_trains_on_the_top_tenth(d4rl_source) -> None:
    from cmt.experiment import top_episodes
    from cmt.methods import BACKBONES

    cfg, out, returns = d4rl_source
    bench = make_benchmark(cfg)
    bench.build_datasets(out, progress=False)
    train = bench.load(out).train
    kept = top_episodes(train, BACKBONES["filtered_bc"].data_fraction)
    np.testing.assert_allclose(np.sort(kept.ep_return), np.sort(returns)[-3:])
    assert top_episodes(train, BACKBONES["bc"].data_fraction) is train


def test_d4rl_target_returns() -> None:
    params = load_params(ROOT / "params.yaml", preset="walker2d_medium_replay")
    assert params.evaluate.target_return == "max_train"
    bench = make_benchmark(params.data)
    assert bench.target_return(None, 0, "dt_paper") == 5000.0  # type: ignore[arg-type]


# --------------------------------------------------------------------------- variant studies


def test_variants_table_shows_what_differs_and_refuses_other_tasks(tmp_path: Path) -> None:
    from cmt.evaluation.figures import plot_variants
    from cmt.evaluation.tables import variants_table

    def result(overrides: dict, score: float) -> dict:
        params = parse_params(overrides).model_dump(mode="json")
        summary = {"cmt_tuned": {"seeds": [0, 1, 2], "score_mean": score, "score_std": 1.25}}
        return {"params": params, "summary": summary}

    banded = {"model": {"attention": "banded", "train_len": 20}}
    table = variants_table({"window": result({}, 94.71), "banded": result(banded, 93.5)})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[4:]}
    assert "model.attention=banded, model.train_len=20" in rows["banded"]
    assert "model.attention=window, model.train_len=None" in rows["window"]
    assert rows["window"].endswith("| 94.7 ± 1.2 |") and rows["banded"].endswith("| 93.5 ± 1.2 |")
    assert "3 seeds per variant" in table and "pretrain" not in table.split("\n\n")[1]
    plot_variants({"window": result({}, 94.7), "banded": result(banded, 93.5)}, tmp_path / "v.png")
    assert (tmp_path / "v.png").read_bytes().startswith(b"\x89PNG")
    other_tasks = result({"data": {"test_tasks": [0, 10]}}, 90.0)
    with pytest.raises(ValueError, match="data.test_tasks"):
        variants_table({"window": result({}, 94.7), "validation": other_tasks})


def test_data_quality_of_a_real_d4rl_file(d4rl_source) -> None:
    cfg, out, returns = d4rl_source
    bench = make_benchmark(cfg)
    bench.build_datasets(out, progress=False)
    quality = bench.quality(bench.load(out))
    assert set(quality) == {"all"}  # a real file records no behaviour levels
    q = quality["all"]
    assert q["episodes"] == len(returns)
    assert q["return_max"] == pytest.approx(returns.max())
    assert q["return_p10"] == pytest.approx(np.percentile(returns, 10))
    low, high = -20.272305, 3234.3  # D4RL's hopper references, written out independently
    assert q["score_mean"] == pytest.approx(100 * (returns.mean() - low) / (high - low))


def test_data_quality_keeps_the_rows_of_datasets_not_collected_again(tmp_path: Path) -> None:
    """scripts/data_quality.py --keep: a new store's rows replace a dataset's rows whole; the
    other datasets' rows stay, naming the store they came from."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "data_quality.py"), run_name="dq")

    def row(dataset: str, level: str, run: str) -> dict[str, str]:
        return {"dataset": dataset, "level": level, "run_id": run}

    old = tmp_path / "data_quality.json"
    old_rows = [row("a", "medium", "1"), row("a", "expert", "1"), row("b", "good", "2")]
    old.write_text(json.dumps({"tracking_uri": "sqlite:///old.db", "rows": old_rows}))
    new = [{**row("a", "expert", "9"), "tracking_uri": "sqlite:///new.db"}]
    merged = script["kept_rows"](script["read_table"](old), new)
    assert [(r["dataset"], r["level"], r["run_id"]) for r in merged] == [
        ("a", "expert", "9"),  # a's old medium row is not kept: a was collected again
        ("b", "good", "2"),
    ]
    assert [r["tracking_uri"] for r in merged] == ["sqlite:///new.db", "sqlite:///old.db"]
    # A file that is not such a table is refused by name, before any store is read.
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"dataset": "a"}]}')
    store = f"sqlite:///{tmp_path / 'never.db'}"
    for path in (bad, tmp_path / "missing.json"):
        assert script["main"](["--keep", str(path), "--tracking-uri", store]) == 2
    assert not (tmp_path / "never.db").exists()

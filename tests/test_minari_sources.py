"""Minari datasets as ``data.source``: ids resolved as Minari resolves them, arrow storage read
like HDF5, the dataset's own reference scores and time limit, its metadata for MLflow.

Every dataset is recorded here with Minari's own DataCollector on random Hopper-v5 actions,
under a temporary MINARI_DATASETS_PATH; nothing touches ~/.minari.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pyarrow as pa
import pytest

from cmt.benchmarks import make_benchmark
from cmt.benchmarks.base import Episodes
from cmt.benchmarks.d4rl import D4RLData
from cmt.config import ConfigError, load_params
from cmt.data.hdf5 import DatasetError
from cmt.data.sources import (
    MINARI_ROOT_ENV,
    is_minari_id,
    minari_dataset_dir,
    minari_root,
    read_source,
)
from pipelines.collect import summary_tags

ENV_ID, OBS_DIM, ACT_DIM = "Hopper-v5", 11, 3
REFS = (-10.0, 990.0)  # not D4RL's, so a score shows which were used
FORMATS = ("hdf5", "arrow", "parquet")
ROOT = Path(__file__).resolve().parents[1]


def collect(root: Path, dataset_id: str, data_format: str, episodes: int = 4) -> Path:
    """Random Hopper-v5 episodes recorded with Minari's DataCollector under ``root``."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv(MINARI_ROOT_ENV, str(root))  # the collector caches under the root, too
        warnings.simplefilter("ignore")  # Minari's advice on optional fields
        import minari

        env = minari.DataCollector(gym.make(ENV_ID), data_format=data_format)
        env.action_space.seed(0)
        for episode in range(episodes):
            env.reset(seed=episode)
            while True:
                *_, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    break
        env.create_dataset(
            dataset_id,
            algorithm_name="random",
            author="cmt tests",
            author_email="tests@example.invalid",
            code_permalink="https://example.invalid/cmt",
            description="random Hopper-v5 actions",
            ref_min_score=REFS[0],
            ref_max_score=REFS[1],
        )
        env.close()
    return root / dataset_id


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One Minari root with the same episodes in each storage: cmt/hopper/<format>/random-v0."""
    root = tmp_path_factory.mktemp("minari")
    for fmt in FORMATS:
        collect(root, f"cmt-{fmt}/hopper/random-v0", fmt)
    return root


@pytest.fixture
def root(tmp_path: Path, pristine: Path, monkeypatch) -> Path:
    """A fresh copy of the Minari root that a test may damage, as MINARI_DATASETS_PATH."""
    copy = tmp_path / "minari"
    shutil.copytree(pristine, copy)
    monkeypatch.setenv(MINARI_ROOT_ENV, str(copy))
    return copy


def read(source: str | Path, **kwargs):
    return read_source(
        source, **{"env_id": ENV_ID, "obs_dim": OBS_DIM, "act_dim": ACT_DIM, **kwargs}
    )


def edit_metadata(dataset: Path, edit: Callable[[dict], None]) -> None:
    path = dataset / "data" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- ids


def test_an_id_resolves_where_minari_looks(root: Path, tmp_path: Path, monkeypatch) -> None:
    from minari.storage import get_dataset_path

    dataset_id = "cmt-hdf5/hopper/random-v0"
    assert minari_dataset_dir(dataset_id) == root / dataset_id == get_dataset_path(dataset_id)
    by_id, by_path = read(dataset_id), read(root / dataset_id)
    np.testing.assert_array_equal(by_id.observations, by_path.observations)
    assert by_id.metadata["dataset_id"] == dataset_id

    monkeypatch.delenv(MINARI_ROOT_ENV)  # then Minari's default root under the home directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert minari_root() == tmp_path / "home" / ".minari" / "datasets"
    assert minari_dataset_dir(dataset_id) == get_dataset_path(dataset_id)


def test_a_missing_id_names_the_directory_and_downloads_nothing(root: Path) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(
        DatasetError,
        match=rf"{root}/mujoco/hopper/expert-v0: no local Minari dataset "
        r"'mujoco/hopper/expert-v0' .* nothing is downloaded",
    ):
        read("mujoco/hopper/expert-v0")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_an_id_must_be_the_one_its_metadata_records(root: Path) -> None:
    shutil.copytree(root / "cmt-hdf5/hopper/random-v0", root / "cmt/hopper/other-v0")
    with pytest.raises(
        DatasetError,
        match=r"metadata\.json: key 'dataset_id': says 'cmt-hdf5/hopper/random-v0', but the "
        r"dataset was named by id 'cmt/hopper/other-v0'",
    ):
        read("cmt/hopper/other-v0")


@pytest.mark.parametrize(
    "source",
    [
        "mujoco/../hopper-v0",
        "mujoco/hopper/..",
        "x;touch PWNED;/hopper-v0",
        "mujoco/$(id)/expert-v0",
        "mujoco hopper/expert-v0",
        "mujoco//expert-v0",
        "mujoco/hopper/expert",  # no version: neither a Minari id nor a path
    ],
)
def test_unsafe_or_malformed_ids_are_config_errors(source: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", {"data.source": source}, preset="hopper_medium_replay")
    msg = str(err.value)
    assert "data.source" in msg and "--set data.source" in msg, msg
    assert "not a safe name" in msg or "is neither a path" in msg, msg


def test_ids_and_paths_name_the_dataset() -> None:
    cfg = D4RLData(benchmark="d4rl", env="hopper", level="expert", source="mujoco/hopper/expert-v0")
    assert cfg.name == "mujoco-hopper-expert-v0"
    for path in (
        "./minari/hopper-random-v0",
        "/data/minari/hopper-random-v0",
        "~/hopper-random-v0",
    ):
        assert not is_minari_id(path)
        cfg = D4RLData(benchmark="d4rl", env="hopper", level="random", source=path)
        assert cfg.name == "hopper-random-v0"
    assert not is_minari_id("data/hopper-medium-v2.hdf5")


# --------------------------------------------------------------------------- storages


def test_arrow_and_parquet_read_exactly_like_hdf5(root: Path) -> None:
    data = {fmt: read(f"cmt-{fmt}/hopper/random-v0") for fmt in FORMATS}
    hdf5 = data["hdf5"]
    assert len(hdf5) > 100 and hdf5.terminals.any()  # enough rows for the outlier check
    for fmt in ("arrow", "parquet"):
        assert data[fmt].metadata["data_format"] == fmt
        for key in ("observations", "next_observations", "actions", "rewards"):
            np.testing.assert_array_equal(getattr(data[fmt], key), getattr(hdf5, key))
        for key in ("terminals", "timeouts", "task_ids"):
            np.testing.assert_array_equal(getattr(data[fmt], key), getattr(hdf5, key))


def _set_column(dataset: Path, fmt: str, episode: int, key: str, edit: Callable) -> None:
    """Rewrite one episode's array ``key`` as ``edit(array)`` returns it, in either storage
    (an arrow episode has T + 1 rows: its last row pads all but the observations)."""
    if fmt == "hdf5":
        with h5py.File(dataset / "data" / "main_data.hdf5", "r+") as f:
            name = f"episode_{episode}/{key}"
            new = edit(f[name][()])
            del f[name]
            f[name] = new
        return
    file = dataset / "data" / str(episode) / "part-0.arrow"
    table = pa.ipc.open_file(pa.py_buffer(file.read_bytes())).read_all()  # not mapped
    column = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        new_values = np.asarray(edit(values.copy()))
        array = pa.FixedSizeListArray.from_arrays(pa.array(new_values.reshape(-1)), width)
    else:
        array = pa.array(np.asarray(edit(column.to_numpy(zero_copy_only=False).copy())))
    table = table.set_column(table.schema.get_field_index(key), key, array)
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _put(row: int, col: int | None, value: float) -> Callable:
    def edit(arr: np.ndarray) -> np.ndarray:
        if arr.dtype == bool and not isinstance(value, bool):
            arr = arr.astype(np.int8)  # to store a flag that is neither 0 nor 1
        if col is None:
            arr[row] = value
        else:
            arr[row, col] = value
        return arr

    return edit


VALUE_DAMAGE = {
    "non-finite": ("observations", _put(3, 2, np.nan), r"1 non-finite values .* nan in column 2"),
    "outlier": (
        "observations",
        _put(5, 4, 3e5),
        r"1 values far outside the file's own distribution \(first at step 5, column 4: 300000",
    ),
    "flag not 0/1": ("terminations", _put(3, None, 2), r"1 values not 0/1 \(first at index 3"),
    "early end": ("terminations", _put(1, None, True), r"episode ends at step 1, before its last"),
}
ARROW_MESSAGES = {"flag not 0/1": r"type int8, expected bool \(flags are stored as bits\)"}
"""Arrow keeps flags as bits, which hold only 0 and 1: a column of another type is refused."""


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
@pytest.mark.parametrize("damage", sorted(VALUE_DAMAGE))
def test_every_value_check_applies_to_each_storage(root: Path, fmt: str, damage: str) -> None:
    key, edit, message = VALUE_DAMAGE[damage]
    message = ARROW_MESSAGES.get(damage, message) if fmt == "arrow" else message
    dataset = root / f"cmt-{fmt}/hopper/random-v0"
    _set_column(dataset, fmt, 1, key, edit)
    file, where = ("main_data.hdf5", "episode_1") if fmt == "hdf5" else ("data", "1")
    with pytest.raises(DatasetError, match=rf"{file}: key '{where}/{key}': {message}"):
        read(dataset)


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_actions_outside_the_action_space_in_each_storage(root: Path, fmt: str) -> None:
    dataset = root / f"cmt-{fmt}/hopper/random-v0"
    _set_column(dataset, fmt, 2, "actions", _put(3, 1, 1.5))
    where = "episode_2" if fmt == "hdf5" else "2"
    with pytest.raises(
        DatasetError,
        match=rf"key '{where}/actions': 1 actions outside Hopper-v5's action space \(first at "
        r"step 3, column 1: 1.5",
    ):
        read(dataset)


def test_arrow_layout_is_checked_before_the_data(root: Path) -> None:
    dataset = root / "cmt-arrow/hopper/random-v0"
    part = dataset / "data" / "1" / "part-0.arrow"
    part.write_bytes(part.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"data: key '1': cannot read as arrow"):
        read(dataset)
    shutil.rmtree(dataset / "data" / "1")
    with pytest.raises(DatasetError, match=r"data: key '1': missing: episodes are not 0\.\.n-1"):
        read(dataset)
    with pytest.raises(DatasetError, match=r"key 'observations': width 11 .* obs_dim=17"):
        read(root / "cmt-arrow/hopper/random-v0", obs_dim=17)


# --------------------------------------------------------------------------- the benchmark


def _benchmark(source: str):
    cfg = D4RLData(benchmark="d4rl", env="hopper", level="random", source=source)
    return make_benchmark(cfg)


def test_a_minari_id_feeds_the_benchmark_with_its_own_references(root: Path, tmp_path) -> None:
    bench = _benchmark("cmt-arrow/hopper/random-v0")
    assert bench.name == "cmt-arrow-hopper-random-v0"
    summary = bench.build_datasets(tmp_path / "out", progress=False)
    refs = json.loads((tmp_path / "out" / "references.json").read_text())
    assert refs["0"] == {"random": REFS[0], "expert": REFS[1]}
    assert "ref_min_score / ref_max_score of cmt-arrow/hopper/random-v0" in refs["scored_with"]
    assert refs["minari"] == summary["minari"]

    data = bench.load(tmp_path / "out")
    assert data.references[0] == REFS
    np.testing.assert_allclose(
        bench.score(data, 0, Episodes(np.array([-10.0, 990.0, 490.0]))), [0.0, 100.0, 50.0]
    )
    assert "random -10.00, expert 990.0" in bench.describe(10)
    returns = data.train.ep_return.astype(np.float64)
    expected = 100 * (returns.mean() - REFS[0]) / (REFS[1] - REFS[0])
    assert summary["train"]["score_mean"] == pytest.approx(expected)

    # Scores come from references.json alone: the source may go once collect has run.
    shutil.rmtree(root / "cmt-arrow")
    again = bench.load(tmp_path / "out")
    assert bench.score(again, 0, Episodes(np.array([990.0])))[0] == pytest.approx(100.0)
    assert "the reference returns collect took from cmt-arrow/" in bench.describe(10)

    # What the collect stage records in MLflow as tags minari.<key>.
    tags = summary_tags(summary)
    assert tags["minari.dataset_id"] == "cmt-arrow/hopper/random-v0"
    assert tags["minari.algorithm_name"] == "random"
    assert tags["minari.minari_version"] == "0.5.4"
    assert tags["minari.data_format"] == "arrow"
    assert tags["minari.code_permalink"] == "https://example.invalid/cmt"
    assert tags["minari.author"] == "cmt tests"
    assert tags["minari.max_episode_steps"] == "1000"
    assert "minari.author_email" not in tags
    assert summary_tags({"dataset": "hopper_random"}) == {}  # generated data: no tags


def test_without_its_own_references_d4rl_scores_the_data(root: Path, tmp_path) -> None:
    def drop(meta: dict) -> None:
        del meta["ref_min_score"], meta["ref_max_score"]

    edit_metadata(root / "cmt-hdf5/hopper/random-v0", drop)
    bench = _benchmark("cmt-hdf5/hopper/random-v0")
    summary = bench.build_datasets(tmp_path / "out", progress=False)
    refs = json.loads((tmp_path / "out" / "references.json").read_text())
    low, high = -20.272305, 3234.3  # D4RL's hopper references (tests/test_published.py)
    assert refs["0"] == {"random": low, "expert": high}
    assert refs["scored_with"] == "D4RL's hopper reference returns"
    assert "ref_min_score" not in summary["minari"]
    assert f"random {low:.2f}, expert {high:.1f}" in bench.describe(10)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"ref_max_score": -10.0}, r"key 'ref_max_score': -10\.0 is not above ref_min_score"),
        ({"ref_min_score": None}, r"key 'ref_min_score': expected a finite number .* None"),
        ({"ref_max_score": "high"}, r"key 'ref_max_score': expected a finite number .* 'high'"),
    ],
)
def test_unusable_reference_scores_are_refused(root: Path, edit: dict, message: str) -> None:
    edit_metadata(root / "cmt-hdf5/hopper/random-v0", lambda meta: meta.update(edit))
    with pytest.raises(DatasetError, match=rf"metadata\.json: {message}"):
        read("cmt-hdf5/hopper/random-v0")


def test_another_recorded_time_limit_is_refused(root: Path, tmp_path) -> None:
    def limit(meta: dict) -> None:
        spec = json.loads(meta["env_spec"])
        spec["max_episode_steps"] = 500
        meta["env_spec"] = json.dumps(spec)

    edit_metadata(root / "cmt-hdf5/hopper/random-v0", limit)
    assert read("cmt-hdf5/hopper/random-v0").metadata["max_episode_steps"] == 500
    bench = _benchmark("cmt-hdf5/hopper/random-v0")
    assert bench.horizon == 1000
    with pytest.raises(
        DatasetError,
        match=r"metadata\.json: key 'env_spec': the dataset was recorded with "
        r"max_episode_steps=500, but Hopper-v5 is evaluated over episodes of 1000 steps",
    ):
        bench.build_datasets(tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.hdf5").exists()

"""Tests for loading real on-disk datasets: D4RL HDF5 files and Minari dataset directories.

Every dataset is written here, into tmp_path: D4RL files with h5py in D4RL's exact v2
layout, Minari datasets with Minari's own writer from real Hopper-v5 rollouts.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

from cmt.data.hdf5 import DatasetError, read_hdf5, write_hdf5
from cmt.data.sources import (
    check_source_level,
    read_d4rl_file,
    read_minari_dataset,
    read_source,
)

OBS_DIM, ACT_DIM = 11, 3  # Hopper's
ENV_ID = "Hopper-v5"


# --------------------------------------------------------------------------- D4RL files


def d4rl_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-v2 style transitions: a terminated episode, a timed-out one, then a cut-off tail.

    Within an episode next_observations[i] == observations[i + 1], as in D4RL's files.
    """
    rng = np.random.default_rng(seed)
    lengths, ends = [60, 100, 40], ["terminal", "timeout", None]
    obs, nxt, terminals, timeouts = [], [], [], []
    for length, end in zip(lengths, ends, strict=True):
        states = rng.standard_normal((length + 1, OBS_DIM)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        term, tout = np.zeros(length, dtype=bool), np.zeros(length, dtype=bool)
        if end == "terminal":
            term[-1] = True
        elif end == "timeout":
            tout[-1] = True
        terminals.append(term)
        timeouts.append(tout)
    n = sum(lengths)
    return {
        "observations": np.concatenate(obs),
        "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "next_observations": np.concatenate(nxt),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminals": np.concatenate(terminals),
        "timeouts": np.concatenate(timeouts),
        "infos/action_log_probs": rng.standard_normal(n).astype(np.float32),
        "infos/qpos": rng.standard_normal((n, 6)),
        "infos/qvel": rng.standard_normal((n, 6)),
    }


def write_d4rl(
    path: Path, arrays: dict[str, np.ndarray] | None = None, compression: str | None = "gzip"
) -> dict[str, np.ndarray]:
    """Write a file the way D4RL's generation scripts do (gzip datasets, bytes metadata)."""
    arrays = d4rl_arrays() if arrays is None else arrays
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression=compression)
        f["metadata/algorithm"] = np.bytes_("SAC")
        f["metadata/iteration"] = np.array(["12"], dtype=np.int32)[0]
        f["metadata/policy/nonlinearity"] = np.bytes_("relu")
        f["metadata/policy/fc0/weight"] = rng.standard_normal((8, OBS_DIM)).astype(np.float32)
        f["metadata/policy/fc0/bias"] = rng.standard_normal(8).astype(np.float32)
    return arrays


def read_quietly(path: Path, **kwargs: Any):
    """read_source, ignoring the expected 'last transition ends no episode' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*marking it as a timeout")
        return read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM, **kwargs)


def flip_bytes(path: Path, offset: int, count: int = 16, value: int | None = None) -> None:
    """XOR ``count`` bytes at ``offset`` with 0xFF (or set them to ``value``)."""
    raw = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        raw[i] = raw[i] ^ 0xFF if value is None else value
    path.write_bytes(bytes(raw))


def test_d4rl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "hopper-medium-replay-v2.hdf5"
    arrays = write_d4rl(path)
    with pytest.warns(UserWarning, match="marking it as a timeout"):
        data = read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)

    n = len(arrays["rewards"])
    assert len(data) == n and (data.obs_dim, data.act_dim) == (OBS_DIM, ACT_DIM)
    for field in ("observations", "actions", "next_observations", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(data, field), arrays[field])
    # Real D4RL files stop mid-episode: the cut becomes a timeout, nothing else changes.
    expected_timeouts = arrays["timeouts"].copy()
    expected_timeouts[-1] = True
    np.testing.assert_array_equal(data.timeouts, expected_timeouts)
    assert data.terminals.dtype == np.bool_ and data.timeouts.dtype == np.bool_
    assert data.terminals[59] and not data.timeouts[59]  # kept apart
    assert data.timeouts[159] and not data.terminals[159]
    np.testing.assert_array_equal(data.task_ids, np.zeros(n, dtype=np.int64))
    assert set(data.infos) == {"action_log_probs", "qpos", "qvel"}
    for name in data.infos:
        np.testing.assert_array_equal(data.infos[name], arrays[f"infos/{name}"])

    meta = data.metadata
    assert meta["source"] == str(path) and meta["source_kind"] == "d4rl_hdf5"
    assert meta["algorithm"] == "SAC" and meta["iteration"] == 12
    assert meta["policy/nonlinearity"] == "relu"
    assert len(meta["policy/fc0/bias"]) == 8
    assert "policy/fc0/weight" not in meta  # 2-D metadata is dropped
    # What we loaded can be written and read back by the project's own writer.
    write_hdf5(tmp_path / "copy.hdf5", data)
    again = read_hdf5(tmp_path / "copy.hdf5")
    np.testing.assert_array_equal(again.observations, data.observations)
    assert again.metadata["source_kind"] == "d4rl_hdf5"


def test_d4rl_without_next_observations_derives_them(tmp_path: Path) -> None:
    arrays = d4rl_arrays()
    del arrays["next_observations"]
    path = tmp_path / "hopper-medium-v2.hdf5"
    write_d4rl(path, arrays)
    data = read_quietly(path)
    np.testing.assert_array_equal(data.next_observations[:59], arrays["observations"][1:60])


def test_read_d4rl_file_directly(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    write_d4rl(path)
    with pytest.warns(UserWarning, match="marking it as a timeout"):
        data = read_d4rl_file(path, obs_dim=OBS_DIM, act_dim=ACT_DIM)
    assert data.metadata["source_kind"] == "d4rl_hdf5"


def test_d4rl_file_name_of_another_environment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "walker2d-medium-v2.hdf5"
    write_d4rl(path)
    with pytest.raises(
        DatasetError,
        match=r"walker2d-medium-v2\.hdf5: the file name 'walker2d-medium-v2\.hdf5' says "
        r"environment 'walker2d', but the data is read as environment 'hopper' \(Hopper-v5\)",
    ):
        read_quietly(path)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.hdf5"
    with pytest.raises(DatasetError, match="no such file or directory") as err:
        read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)
    assert str(path) in str(err.value)


def test_unknown_file_kind(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DatasetError, match=r"data\.txt: not a dataset source"):
        read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "fake.hdf5"
    path.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(DatasetError, match=r"fake\.hdf5: cannot read as HDF5"):
        read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"hopper\.hdf5: cannot read as HDF5.*truncated"):
        read_source(path, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)


def test_flipped_bytes_in_compressed_observations_fail(tmp_path: Path) -> None:
    """D4RL's files are gzip-compressed: corrupt bytes break the deflate stream's checksum."""
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, compression="gzip")
    with h5py.File(path, "r") as f:
        chunk = f["observations"].id.get_chunk_info(0)
    flip_bytes(path, chunk.byte_offset + chunk.size // 2)
    with pytest.raises(DatasetError, match=r"hopper\.hdf5: key 'observations': cannot read"):
        read_quietly(path)


def test_flipped_bytes_in_uncompressed_observations_are_refused(tmp_path: Path) -> None:
    """HDF5 keeps no checksum of uncompressed data, so it reads the flipped bytes as values.

    Here they are finite floats within the column's range, so no value check can see them;
    the loader refuses them because the row before no longer leads to this one (its
    next_observations differ in the two flipped columns).
    """
    path = tmp_path / "hopper.hdf5"
    arrays = write_d4rl(path, compression=None)
    with h5py.File(path, "r") as f:
        offset = f["observations"].id.get_offset()
    row = 30  # bytes in the middle of row 30 (mid-episode)
    flip_bytes(path, offset + row * OBS_DIM * 4 + 8, count=8)
    corrupted = np.frombuffer(path.read_bytes()[offset + row * OBS_DIM * 4 + 8 :][:4], "<f4")[0]
    with pytest.raises(
        DatasetError,
        match=rf"hopper\.hdf5: key 'next_observations': 1 rows differ .* \(first at index 29, "
        rf"column 2: next_observations {arrays['next_observations'][29, 2]:.6g} != "
        rf"observations\[30\] {corrupted:.6g}; 2 of 11 columns differ: looks like a corrupted",
    ):
        read_quietly(path)


def test_unmarked_episode_boundary_is_refused(tmp_path: Path) -> None:
    """The terminal of the first episode erased: its last row leads nowhere."""
    arrays = d4rl_arrays()
    arrays["terminals"][59] = False
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, arrays)
    with pytest.raises(
        DatasetError,
        match=r"key 'next_observations': .*first at index 59, column 0.* 11 of 11 columns "
        r"differ: looks like an unmarked episode boundary",
    ):
        read_quietly(path)


def test_flipped_bytes_to_nan_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, compression=None)
    with h5py.File(path, "r") as f:
        offset = f["observations"].id.get_offset()
    flip_bytes(path, offset + 40 * OBS_DIM * 4, count=4, value=0xFF)  # 0xFFFFFFFF is NaN
    with pytest.raises(
        DatasetError, match=r"hopper\.hdf5: key 'observations': 1 non-finite values"
    ):
        read_quietly(path)


@pytest.mark.parametrize(
    ("key", "obs_dim", "act_dim", "message"),
    [
        ("observations", 12, ACT_DIM, "width 11 does not match the expected obs_dim=12"),
        ("actions", OBS_DIM, 6, "width 3 does not match the expected act_dim=6"),
    ],
)
def test_d4rl_width_mismatch(
    tmp_path: Path, key: str, obs_dim: int, act_dim: int, message: str
) -> None:
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path)
    with pytest.raises(DatasetError, match=rf"hopper\.hdf5: key '{key}': {message}"):
        read_source(path, env_id=ENV_ID, obs_dim=obs_dim, act_dim=act_dim)


def test_d4rl_non_finite_values(tmp_path: Path) -> None:
    arrays = d4rl_arrays()
    arrays["rewards"][[5, 7]] = [np.nan, np.inf]
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, arrays)
    with pytest.raises(
        DatasetError, match=r"hopper\.hdf5: key 'rewards': 2 non-finite values \(first at index 5"
    ):
        read_quietly(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("observations", np.zeros((200, OBS_DIM), dtype=np.int32), "dtype int32, expected a float"),
        ("terminals", np.zeros(200, dtype=np.float32), "dtype float32, expected bool"),
        ("rewards", np.zeros((200, 2), dtype=np.float32), "expected 1-D array"),
        ("observations", np.zeros(200, dtype=np.float32), "expected a 2-D"),
    ],
)
def test_d4rl_bad_dtype_or_shape(tmp_path: Path, key: str, value: np.ndarray, message: str) -> None:
    arrays = d4rl_arrays()
    arrays[key] = value
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, arrays)
    with pytest.raises(DatasetError, match=rf"hopper\.hdf5: key '{key}': {message}"):
        read_quietly(path)


def test_d4rl_missing_key(tmp_path: Path) -> None:
    arrays = d4rl_arrays()
    del arrays["timeouts"]
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, arrays)
    with pytest.raises(DatasetError, match=r"hopper\.hdf5: key 'timeouts': missing"):
        read_quietly(path)


def test_d4rl_with_other_task_ids_is_refused(tmp_path: Path) -> None:
    arrays = d4rl_arrays()
    arrays["task_id"] = np.repeat(np.array([0, 1, 1]), [60, 100, 40]).astype(np.int64)
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, arrays)
    with pytest.raises(DatasetError, match=r"key 'task_id': .*task id 0, found 1 at index 60"):
        read_quietly(path)


# --------------------------------------------------------------------------- Minari


def rollouts(env: gym.Env, seed: int) -> list[dict[str, Any]]:
    """Random-action Hopper-v5 episodes until one terminated and one truncated episode are in,
    then a recording cut short after 5 steps (neither flag)."""
    env.action_space.seed(seed)
    episodes: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for e in range(20):
        cut_short = len(kinds) == 2
        obs, info = env.reset(seed=seed + e)
        ep: dict[str, Any] = {"obs": [obs], "actions": [], "rewards": [], "term": [], "trunc": []}
        ep["x_position"] = [info["x_position"]]
        while True:
            action = env.action_space.sample()
            obs, reward, term, trunc, info = env.step(action)
            for key, value in (
                ("obs", obs),
                ("actions", action),
                ("rewards", reward),
                ("term", term),
                ("trunc", trunc),
                ("x_position", info["x_position"]),
            ):
                ep[key].append(value)
            if term or trunc or (cut_short and len(ep["rewards"]) == 5):
                break
        episodes.append({k: np.asarray(v) for k, v in ep.items()})
        if cut_short:
            return episodes
        kinds.add("term" if term else "trunc")
    raise AssertionError("random Hopper never both terminated and truncated")


def make_minari(root: Path, dataset_id: str, env: gym.Env, episodes: list[dict[str, Any]]):
    """Save episodes with Minari's own writer under MINARI_DATASETS_PATH=root."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            observations=list(ep["obs"]),
            actions=list(ep["actions"]),
            rewards=list(ep["rewards"]),
            terminations=list(ep["term"]),
            truncations=list(ep["trunc"]),
            infos={"x_position": list(ep["x_position"])} if "x_position" in ep else None,
        )
        for ep in episodes
    ]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        warnings.simplefilter("ignore")  # Minari's "eval_env is None" style advice
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            algorithm_name="random",
            author="cmt tests",
            author_email="tests@example.invalid",
            code_permalink="https://example.invalid/cmt",
            description="random Hopper-v5 actions",
        )
    return root / dataset_id


@pytest.fixture(scope="module")
def pristine_minari(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("minari")
    env = gym.make(ENV_ID, max_episode_steps=30)
    try:
        episodes = rollouts(env, seed=0)
        path = make_minari(root, "cmt/hopper-random-v0", env, episodes)
    finally:
        env.close()
    return path, episodes


@pytest.fixture
def minari_dir(tmp_path: Path, pristine_minari, monkeypatch) -> Path:
    """A fresh copy of the Minari dataset that a test may damage."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # nothing goes to ~/.minari
    dest = tmp_path / "hopper-random-v0"
    shutil.copytree(pristine_minari[0], dest)
    return dest


def edit_metadata(path: Path, **changes: Any) -> None:
    meta_path = path / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


def read_minari_quietly(path: Path, **kwargs: Any):
    args = {"env_id": ENV_ID, "obs_dim": OBS_DIM, "act_dim": ACT_DIM, **kwargs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*end with neither termination nor truncation")
        return read_source(path, **args)


def test_minari_round_trip(minari_dir: Path, pristine_minari) -> None:
    episodes = pristine_minari[1]
    with pytest.warns(UserWarning, match=r"1 episode\(s\) end with neither .* episode_\d+"):
        data = read_source(minari_dir, env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)

    cat = np.concatenate
    n = sum(len(ep["rewards"]) for ep in episodes)
    assert len(data) == n and (data.obs_dim, data.act_dim) == (OBS_DIM, ACT_DIM)
    f32 = np.float32
    assert data.observations.dtype == f32  # Hopper's float64 observations, cast
    np.testing.assert_array_equal(
        data.observations, cat([ep["obs"][:-1] for ep in episodes]).astype(f32)
    )
    np.testing.assert_array_equal(
        data.next_observations, cat([ep["obs"][1:] for ep in episodes]).astype(f32)
    )
    np.testing.assert_array_equal(data.actions, cat([ep["actions"] for ep in episodes]))
    np.testing.assert_allclose(data.rewards, cat([ep["rewards"] for ep in episodes]), rtol=1e-6)
    np.testing.assert_array_equal(data.terminals, cat([ep["term"] for ep in episodes]))
    expected_timeouts = cat([ep["trunc"] for ep in episodes])
    assert not expected_timeouts[-1] and not data.terminals[-1]  # the recording cut short ...
    expected_timeouts[-1] = True  # ... ends in a timeout
    np.testing.assert_array_equal(data.timeouts, expected_timeouts)
    # Terminations and truncations stay apart: both kinds of ending are present, never merged.
    assert np.any(data.terminals & ~data.timeouts) and np.any(data.timeouts & ~data.terminals)
    np.testing.assert_array_equal(data.task_ids, np.zeros(n, dtype=np.int64))

    # next_observations line up with the following observation inside every episode.
    ends = data.terminals | data.timeouts
    inside = ~ends[:-1]
    np.testing.assert_array_equal(
        data.next_observations[:-1][inside], data.observations[1:][inside]
    )
    # Infos are aligned with observations (entry t came with observation t).
    np.testing.assert_array_equal(
        data.infos["x_position"], cat([ep["x_position"][:-1] for ep in episodes])
    )

    meta = data.metadata
    assert meta["source"] == str(minari_dir) and meta["source_kind"] == "minari"
    assert meta["env_id"] == ENV_ID and meta["dataset_id"] == "cmt/hopper-random-v0"
    assert meta["total_episodes"] == len(episodes) and meta["total_steps"] == n

    # The data/ folder itself is accepted too.
    again = read_minari_quietly(minari_dir / "data")
    np.testing.assert_array_equal(again.observations, data.observations)


def test_minari_load_dataset_agrees(minari_dir: Path, pristine_minari, monkeypatch) -> None:
    """Minari's own loader (by id, under MINARI_DATASETS_PATH) sees the same episodes."""
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pristine_minari[0].parents[1]))
    dataset = minari.load_dataset("cmt/hopper-random-v0")
    data = read_minari_quietly(minari_dir)
    assert dataset.total_steps == len(data)
    first = next(dataset.iterate_episodes())
    np.testing.assert_array_equal(
        data.observations[: len(first)], first.observations[:-1].astype(np.float32)
    )


def test_not_a_minari_directory(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match=r"stuff: not a Minari dataset directory"):
        read_source(tmp_path / "stuff", env_id=ENV_ID, obs_dim=OBS_DIM, act_dim=ACT_DIM)


def test_minari_missing_metadata(minari_dir: Path) -> None:
    (minari_dir / "data" / "metadata.json").unlink()
    with pytest.raises(DatasetError, match=r"metadata\.json: key 'metadata\.json': missing"):
        read_minari_quietly(minari_dir)


def test_minari_metadata_not_json(minari_dir: Path) -> None:
    (minari_dir / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"metadata\.json: key 'metadata\.json': not valid JSON"):
        read_minari_quietly(minari_dir)


def test_minari_missing_main_data(minari_dir: Path) -> None:
    (minari_dir / "data" / "main_data.hdf5").unlink()
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: key 'main_data\.hdf5': missing"):
        read_minari_quietly(minari_dir)


def test_minari_truncated_main_data(minari_dir: Path) -> None:
    main = minari_dir / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: cannot read as HDF5"):
        read_minari_quietly(minari_dir)


def _set_env_id(path: Path, env_id: str) -> None:
    meta = json.loads((path / "data" / "metadata.json").read_text())
    spec = json.loads(meta["env_spec"])
    spec["id"] = env_id
    edit_metadata(path, env_spec=json.dumps(spec))


def test_minari_other_environment(minari_dir: Path) -> None:
    _set_env_id(minari_dir, "Walker2d-v5")
    with pytest.raises(
        DatasetError,
        match=r"metadata\.json: key 'env_spec': recorded on environment 'Walker2d-v5', "
        r"which is not 'Hopper-v5'",
    ):
        read_minari_quietly(minari_dir)


def test_minari_other_version_only_warns(minari_dir: Path) -> None:
    _set_env_id(minari_dir, "Hopper-v4")
    with pytest.warns(
        UserWarning, match=r"key 'env_spec': recorded on 'Hopper-v4'.*different version"
    ):
        data = read_minari_quietly(minari_dir)
    assert data.metadata["env_id"] == "Hopper-v4"


def test_minari_missing_env_spec(minari_dir: Path) -> None:
    meta_path = minari_dir / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["env_spec"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"key 'env_spec': missing"):
        read_minari_quietly(minari_dir)


@pytest.mark.parametrize("key", ["total_steps", "total_episodes"])
def test_minari_counts_disagree(minari_dir: Path, pristine_minari, key: str) -> None:
    episodes = pristine_minari[1]
    true = {
        "total_steps": sum(len(ep["rewards"]) for ep in episodes),
        "total_episodes": len(episodes),
    }
    edit_metadata(minari_dir, **{key: true[key] - 1})
    with pytest.raises(
        DatasetError, match=rf"metadata\.json: key '{key}': says {true[key] - 1} .* {true[key]}"
    ):
        read_minari_quietly(minari_dir)


@pytest.mark.parametrize(
    ("key", "dims", "message"),
    [
        ("observations", {"obs_dim": 17}, "width 11 .* does not match the expected obs_dim=17"),
        ("actions", {"act_dim": 6}, "width 3 .* does not match the expected act_dim=6"),
    ],
)
def test_minari_width_mismatch(minari_dir: Path, key: str, dims: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=rf"metadata\.json: key '{key}': {message}"):
        read_minari_quietly(minari_dir, **dims)


def test_minari_episode_shape_disagrees_with_space(minari_dir: Path) -> None:
    with h5py.File(minari_dir / "data" / "main_data.hdf5", "r+") as f:
        obs = f["episode_1/observations"][()]
        del f["episode_1/observations"]
        f["episode_1/observations"] = np.concatenate([obs, obs[:, :1]], axis=1)
    with pytest.raises(
        DatasetError,
        match=r"main_data\.hdf5: key 'episode_1/observations': width 12 .* obs_dim=11",
    ):
        read_minari_quietly(minari_dir)


def test_minari_non_finite_values(minari_dir: Path) -> None:
    with h5py.File(minari_dir / "data" / "main_data.hdf5", "r+") as f:
        f["episode_1/observations"][3, 2] = np.nan
    with pytest.raises(
        DatasetError,
        match=r"main_data\.hdf5: key 'episode_1/observations': 1 non-finite values "
        r"\(first at index 3\): nan in column 2",
    ):
        read_minari_quietly(minari_dir)


def test_minari_flag_stored_as_byte_0xff(minari_dir: Path) -> None:
    with h5py.File(minari_dir / "data" / "main_data.hdf5", "r+") as f:
        flags = f["episode_1/terminations"][()]
        flags.view(np.uint8)[3] = 0xFF  # reads back as True
        f["episode_1/terminations"][...] = flags
    with pytest.raises(
        DatasetError,
        match=r"main_data\.hdf5: key 'episode_1/terminations': 1 values not 0/1 "
        r"\(first at index 3: stored byte 0xff\)",
    ):
        read_minari_quietly(minari_dir)


def test_minari_value_far_outside_its_column_names_episode_and_step(tmp_path: Path) -> None:
    env = gym.make(ENV_ID, max_episode_steps=30)
    try:
        episodes = rollouts(env, seed=0) + rollouts(env, seed=100)
        path = make_minari(tmp_path, "cmt/hopper-random-v0", env, episodes)
    finally:
        env.close()
    assert sum(len(ep["rewards"]) for ep in episodes) >= 100  # enough rows for quantiles
    with h5py.File(path / "data" / "main_data.hdf5", "r+") as f:
        f["episode_2/observations"][5, 4] = 3e5  # below the absolute bound of 1e6
    with pytest.raises(
        DatasetError,
        match=r"main_data\.hdf5: key 'episode_2/observations': 1 values far outside the file's "
        r"own distribution \(first at step 5, column 4: 300000, ",
    ):
        read_minari_quietly(path)


def test_minari_dataset_id_of_another_environment(minari_dir: Path) -> None:
    edit_metadata(minari_dir, dataset_id="mujoco/walker2d/medium-v0")
    with pytest.raises(
        DatasetError,
        match=r"metadata\.json: key 'dataset_id': the dataset_id 'mujoco/walker2d/medium-v0' says "
        r"environment 'walker2d', but the data is read as environment 'hopper'",
    ):
        read_minari_quietly(minari_dir)


@pytest.mark.parametrize(
    ("dataset_id", "level", "recorded"),
    [
        ("cmt/hopper-random-v0", "medium", "random"),  # D4RL-style id
        ("mujoco/hopper/expert-v0", "medium_replay", "expert"),
        ("mujoco/hopper/medium-replay-v0", "medium", "medium_replay"),
    ],
)
def test_minari_dataset_id_of_another_level(
    minari_dir: Path, dataset_id: str, level: str, recorded: str
) -> None:
    edit_metadata(minari_dir, dataset_id=dataset_id)
    data = read_minari_quietly(minari_dir)
    with pytest.raises(
        DatasetError,
        match=rf"metadata\.json: key 'dataset_id': .* says level '{recorded}', but the data is "
        rf"read as level '{level}' \(data\.env=hopper, data\.level={level}\)",
    ):
        check_source_level(data, env="hopper", level=level)


def test_minari_episode_ending_early(minari_dir: Path) -> None:
    with h5py.File(minari_dir / "data" / "main_data.hdf5", "r+") as f:
        f["episode_0/terminations"][1] = True
    with pytest.raises(
        DatasetError, match=r"key 'episode_0/terminations': episode ends at step 1, before"
    ):
        read_minari_quietly(minari_dir)


def test_minari_main_data_passed_as_d4rl_file(minari_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"looks like a Minari main_data\.hdf5"):
        read_minari_quietly(minari_dir / "data" / "main_data.hdf5")


def test_minari_non_box_action_space(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    ep: dict[str, Any] = {"obs": [obs], "actions": [], "rewards": [], "term": [], "trunc": []}
    for _ in range(5):
        action = env.action_space.sample()
        obs, reward, term, trunc, _ = env.step(action)
        for key, value in zip(ep, (obs, action, reward, term, trunc), strict=True):
            ep[key].append(value)
    ep["trunc"][-1] = True
    path = make_minari(tmp_path, "cmt/cartpole-random-v0", env, [ep])
    with pytest.raises(
        DatasetError,
        match=r"metadata\.json: key 'action_space': only flat float Box spaces .* Discrete\(2\)",
    ):
        read_minari_dataset(path, env_id="CartPole-v1", obs_dim=4, act_dim=1)

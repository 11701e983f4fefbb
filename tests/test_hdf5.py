"""Tests for the D4RL-layout HDF5 reader/writer and the D4RL scoring constants."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from cmt.data.d4rl import REF_RETURNS, d4rl_env_name, normalized_score
from cmt.data.hdf5 import DatasetError, episode_bounds, read_hdf5, validate, write_hdf5
from cmt.data.schema import SCHEMA_VERSION, TransitionData
from cmt.integrity import HASH_KEY, hdf5_digest

OBS_DIM, ACT_DIM = 3, 2


def make_data(n_episodes: int = 3, length: int = 4, seed: int = 0) -> TransitionData:
    """Episodes of equal length; episode e has task id e, odd episodes terminate."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    for e in range(n_episodes):
        end = (e + 1) * length - 1
        (terminals if e % 2 else timeouts)[end] = True
    return TransitionData(
        observations=rng.standard_normal((n, OBS_DIM)).astype(np.float32),
        actions=rng.standard_normal((n, ACT_DIM)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.standard_normal((n, OBS_DIM)).astype(np.float32),
        task_ids=np.repeat(np.arange(n_episodes, dtype=np.int64), length),
        infos={
            "qpos": rng.standard_normal((n, 5)).astype(np.float64),
            "goal": rng.standard_normal((n, 2, 2)).astype(np.float32),
        },
        metadata={
            "algorithm": "SAC",
            "num_tasks": n_episodes,
            "seed": 7,
            "noise": 0.25,
            "deterministic": False,
            "goals": [0.5, 1.5, 2.5],
        },
    )


def write_raw(path: Path, arrays: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Write a file directly with h5py, bypassing the validating writer (with the content
    hash that files claiming a schema version must carry)."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for key, value in (metadata or {}).items():
            f.create_dataset(f"metadata/{key}", data=value)
        f.attrs[HASH_KEY] = hdf5_digest(f)


def raw_arrays(data: TransitionData) -> dict[str, np.ndarray]:
    return {
        "observations": data.observations,
        "actions": data.actions,
        "rewards": data.rewards,
        "terminals": data.terminals,
        "timeouts": data.timeouts,
        "next_observations": data.next_observations,
        "task_id": data.task_ids,
    }


# --------------------------------------------------------------------------- round trip


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    data = make_data()
    path = tmp_path / "sub" / "dir" / "train.hdf5"  # parent dirs are created
    write_hdf5(path, data)

    with h5py.File(path, "r") as f:
        assert int(f["metadata/schema_version"][()]) == SCHEMA_VERSION
        assert f["task_id"].dtype == np.int64
        assert f["terminals"].dtype == np.bool_

    out = read_hdf5(path)
    for field in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(out, field), getattr(data, field))
        assert getattr(out, field).dtype == getattr(data, field).dtype
    np.testing.assert_array_equal(out.next_observations, data.next_observations)
    np.testing.assert_array_equal(out.task_ids, data.task_ids)
    assert out.task_ids.dtype == np.int64
    assert set(out.infos) == set(data.infos)
    for name, arr in data.infos.items():
        np.testing.assert_array_equal(out.infos[name], arr)
        assert out.infos[name].dtype == arr.dtype
    assert out.metadata == data.metadata
    assert type(out.metadata["seed"]) is int
    assert type(out.metadata["noise"]) is float
    assert type(out.metadata["deterministic"]) is bool
    assert type(out.metadata["algorithm"]) is str
    assert out.metadata["goals"] == [0.5, 1.5, 2.5]


def test_write_replaces_existing_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "d.hdf5"
    write_hdf5(path, make_data(seed=0))
    new = make_data(seed=1)
    write_hdf5(path, new)
    np.testing.assert_array_equal(read_hdf5(path).observations, new.observations)
    assert os.listdir(tmp_path) == ["d.hdf5"]


# --------------------------------------------------------------------------- real D4RL files


def write_d4rl_style(path: Path) -> dict[str, np.ndarray]:
    """A file as D4RL ships it: no task_id, no next_observations, no metadata, float64
    rewards, and the data stops in the middle of its last episode."""
    n = 7
    obs = np.arange(n * OBS_DIM, dtype=np.float32).reshape(n, OBS_DIM)
    arrays = {
        "observations": obs,
        "actions": np.ones((n, ACT_DIM), dtype=np.float32),
        "rewards": np.linspace(0.0, 1.0, n),  # float64
        # Episodes: [0, 1, 2] terminal, [3, 4] timeout, [5, 6] unfinished.
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0], dtype=bool),
    }
    write_raw(path, arrays)
    return arrays


def test_real_d4rl_file_reads_with_default_task_id(tmp_path: Path) -> None:
    path = tmp_path / "hopper-medium-v2.hdf5"
    arrays = write_d4rl_style(path)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        data = read_hdf5(path, default_task_id=0)

    obs = arrays["observations"]
    assert data.rewards.dtype == np.float32
    np.testing.assert_allclose(data.rewards, arrays["rewards"].astype(np.float32))
    np.testing.assert_array_equal(data.task_ids, np.zeros(7, dtype=np.int64))
    np.testing.assert_array_equal(data.terminals, arrays["terminals"])
    # The unfinished last episode becomes a truncation.
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 1, 0, 1])
    # next obs is the following obs within an episode, the obs itself at an episode's end.
    expected_next = obs[[1, 2, 2, 4, 4, 6, 6]]
    np.testing.assert_array_equal(data.next_observations, expected_next)
    assert data.next_observations.dtype == np.float32
    assert data.metadata == {}
    assert data.infos == {}
    # The file itself is untouched.
    with h5py.File(path, "r") as f:
        assert not f["timeouts"][-1]


def test_real_d4rl_file_with_other_default_task(tmp_path: Path) -> None:
    path = tmp_path / "d4rl.hdf5"
    write_d4rl_style(path)
    with pytest.warns(UserWarning):
        data = read_hdf5(path, default_task_id=3)
    assert set(data.task_ids.tolist()) == {3}


def test_real_d4rl_file_without_default_task_id_raises(tmp_path: Path) -> None:
    path = tmp_path / "d4rl.hdf5"
    write_d4rl_style(path)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: key 'task_id': missing"):
        read_hdf5(path)


def test_d4rl_integer_flags_accepted(tmp_path: Path) -> None:
    data = make_data()
    arrays = raw_arrays(data)
    arrays["terminals"] = data.terminals.astype(np.uint8)
    arrays["timeouts"] = data.timeouts.astype(np.int32)
    path = tmp_path / "flags.hdf5"
    write_raw(path, arrays)
    out = read_hdf5(path)
    assert out.terminals.dtype == np.bool_
    np.testing.assert_array_equal(out.terminals, data.terminals)
    np.testing.assert_array_equal(out.timeouts, data.timeouts)


# --------------------------------------------------------------------------- bad input


def expect_error(path: Path, key: str | None, what: str, **kwargs: Any) -> None:
    pattern = re.escape(str(path)) + ": "
    if key is not None:
        pattern += re.escape(f"key '{key}': ")
    pattern += ".*" + what
    with pytest.raises(DatasetError, match=pattern):
        read_hdf5(path, **kwargs)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.hdf5"
    path.write_bytes(b"this is not an hdf5 file\x00\x01" * 64)
    expect_error(path, None, "cannot read as HDF5")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.hdf5"
    expect_error(path, None, "no such file")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "trunc.hdf5"
    write_hdf5(path, make_data(n_episodes=10, length=50))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    expect_error(path, None, "cannot read as HDF5")


def test_wrong_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "v.hdf5"
    write_raw(path, raw_arrays(make_data()), {"schema_version": SCHEMA_VERSION + 1})
    expect_error(
        path,
        "metadata/schema_version",
        rf"schema version {SCHEMA_VERSION + 1}, expected {SCHEMA_VERSION}",
    )


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "missing.hdf5"
    arrays = raw_arrays(make_data())
    del arrays[key]
    write_raw(path, arrays)
    expect_error(path, key, "missing required dataset")


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("observations", lambda d: d.observations.astype(np.int32), "dtype int32"),
        ("actions", lambda d: d.actions.astype(np.int64), "dtype int64"),
        ("next_observations", lambda d: d.next_observations.astype(np.uint8), "dtype uint8"),
        ("task_id", lambda d: d.task_ids.astype(np.float32), "dtype float32"),
        ("terminals", lambda d: d.terminals.astype(np.float32), "dtype float32"),
    ],
)
def test_wrong_dtype(tmp_path: Path, key: str, value: Any, what: str) -> None:
    path = tmp_path / "dtype.hdf5"
    data = make_data()
    arrays = raw_arrays(data)
    arrays[key] = value(data)
    write_raw(path, arrays)
    expect_error(path, key, what)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("observations", lambda d: d.observations.reshape(-1)),
        ("actions", lambda d: d.actions[:, :, None]),
        ("rewards", lambda d: d.rewards[:, None]),
        ("task_id", lambda d: d.task_ids[:, None]),
    ],
)
def test_wrong_ndim(tmp_path: Path, key: str, value: Any) -> None:
    path = tmp_path / "ndim.hdf5"
    data = make_data()
    arrays = raw_arrays(data)
    arrays[key] = value(data)
    write_raw(path, arrays)
    expect_error(path, key, r"expected \d-D array")


@pytest.mark.parametrize("key", ["actions", "rewards", "timeouts", "next_observations", "task_id"])
def test_length_mismatch(tmp_path: Path, key: str) -> None:
    path = tmp_path / "len.hdf5"
    arrays = raw_arrays(make_data())
    arrays[key] = arrays[key][:-1]
    write_raw(path, arrays)
    expect_error(path, key, "length 11 does not match observations length 12")


def test_infos_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "infos.hdf5"
    arrays: dict[str, Any] = raw_arrays(make_data())
    arrays["infos/qpos"] = np.zeros((5, 2))
    write_raw(path, arrays)
    expect_error(path, "infos/qpos", "expected first dimension 12")


def test_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "empty.hdf5"
    arrays = {k: v[:0] for k, v in raw_arrays(make_data()).items()}
    write_raw(path, arrays)
    expect_error(path, "observations", "empty")


@pytest.mark.parametrize(
    ("key", "bad"), [("rewards", np.nan), ("observations", np.inf), ("actions", -np.inf)]
)
def test_non_finite(tmp_path: Path, key: str, bad: float) -> None:
    path = tmp_path / "nan.hdf5"
    arrays = raw_arrays(make_data())
    arr = arrays[key].copy()
    arr[5] = bad
    arr[9] = bad
    arrays[key] = arr
    write_raw(path, arrays)
    expect_error(path, key, re.escape("non-finite values (first at index 5)"))


def test_flag_value_two(tmp_path: Path) -> None:
    path = tmp_path / "flags.hdf5"
    arrays = raw_arrays(make_data())
    terminals = arrays["terminals"].astype(np.int64)
    terminals[2] = 2
    arrays["terminals"] = terminals
    write_raw(path, arrays)
    expect_error(path, "terminals", re.escape("1 values not 0/1 (first at index 2: 2)"))


def test_bool_flag_stored_as_byte_0xff(tmp_path: Path) -> None:
    """numpy and h5py read any non-zero byte of a bool as True: the stored byte is checked."""
    path = tmp_path / "flags.hdf5"
    arrays = raw_arrays(make_data())
    timeouts = arrays["timeouts"].copy()
    timeouts.view(np.uint8)[6] = 0xFF
    arrays["timeouts"] = timeouts
    write_raw(path, arrays)
    with h5py.File(path, "r") as f:  # the byte reached the file as it is
        assert f["timeouts"][()].view(np.uint8)[6] == 0xFF
    expect_error(
        path, "timeouts", re.escape("1 values not 0/1 (first at index 6: stored byte 0xff)")
    )


@pytest.mark.parametrize(
    ("key", "cell", "bad", "shown"),
    [
        ("observations", (5, 1), -1.95e37, "-1.95e+37 in column 1"),
        ("rewards", (7,), 3e9, "3e+09"),
        ("next_observations", (2, 2), 2e6, "2e+06 in column 2"),
        ("actions", (4, 0), -1.5e6, "-1.5e+06 in column 0"),
    ],
)
def test_values_beyond_the_absolute_bound(
    tmp_path: Path, key: str, cell: tuple[int, ...], bad: float, shown: str
) -> None:
    path = tmp_path / "huge.hdf5"
    arrays = raw_arrays(make_data())
    arr = arrays[key].copy()
    arr[cell] = bad
    arrays[key] = arr
    write_raw(path, arrays)
    expect_error(
        path, key, re.escape(f"1 values with |value| > 1e+06 (first at index {cell[0]}): {shown}")
    )


def test_task_id_changes_mid_episode(tmp_path: Path) -> None:
    path = tmp_path / "task.hdf5"
    arrays = raw_arrays(make_data())
    task = arrays["task_id"].copy()
    task[6] = 2  # episode 1 spans indices 4..7
    arrays["task_id"] = task
    write_raw(path, arrays, {"num_tasks": 3})
    expect_error(path, "task_id", "changes within an episode at index 6")


def test_negative_task_id(tmp_path: Path) -> None:
    path = tmp_path / "neg.hdf5"
    arrays = raw_arrays(make_data())
    arrays["task_id"] = arrays["task_id"] - 1
    write_raw(path, arrays)
    expect_error(path, "task_id", re.escape("4 negative task ids (first at index 0: -1)"))


def test_negative_default_task_id(tmp_path: Path) -> None:
    path = tmp_path / "d4rl.hdf5"
    write_d4rl_style(path)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="negative task ids"):
        read_hdf5(path, default_task_id=-1)


def test_task_id_beyond_num_tasks(tmp_path: Path) -> None:
    path = tmp_path / "big.hdf5"
    write_raw(path, raw_arrays(make_data()), {"num_tasks": 2})
    expect_error(path, "task_id", re.escape("4 task ids >= metadata num_tasks=2 (first at index 8"))


def test_group_instead_of_dataset(tmp_path: Path) -> None:
    path = tmp_path / "group.hdf5"
    arrays: dict[str, Any] = raw_arrays(make_data())
    rewards = arrays.pop("rewards")
    arrays["rewards/x"] = rewards
    write_raw(path, arrays)
    expect_error(path, "rewards", "is a group")


# --------------------------------------------------------------------------- validate / writer


def test_validate_rejects_in_memory_problems() -> None:
    data = make_data()
    validate(data, "memory")
    with pytest.raises(DatasetError, match=r"memory: key 'observations': dtype float64"):
        validate(
            dataclasses.replace(data, observations=data.observations.astype(np.float64)), "memory"
        )
    open_end = data.timeouts.copy()
    open_end[-1] = False
    with pytest.raises(DatasetError, match=r"memory: key 'timeouts': last transition .* ends no"):
        validate(dataclasses.replace(data, timeouts=open_end), "memory")
    with pytest.raises(DatasetError, match=r"key 'next_observations': width 2"):
        validate(
            dataclasses.replace(data, next_observations=data.next_observations[:, :2]), "memory"
        )


def test_writer_refuses_a_bool_holding_another_byte(tmp_path: Path) -> None:
    """A bool array made from raw bytes (a view) would be copied byte for byte into the file."""
    data = make_data()
    terminals = data.terminals.copy()
    terminals.view(np.uint8)[1] = 0xFF
    path = tmp_path / "out.hdf5"
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{path}: key 'terminals': 1 values not 0/1 (first at index 1"),
    ):
        write_hdf5(path, dataclasses.replace(data, terminals=terminals))
    assert not path.exists()


def test_writer_refuses_invalid_data_atomically(tmp_path: Path) -> None:
    data = make_data()
    rewards = data.rewards.copy()
    rewards[3] = np.nan
    bad = dataclasses.replace(data, rewards=rewards)
    path = tmp_path / "out" / "bad.hdf5"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: key 'rewards': 1 non-finite")):
        write_hdf5(path, bad)
    assert not path.exists()
    assert not path.parent.exists() or os.listdir(path.parent) == []


def test_writer_does_not_clobber_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.hdf5"
    good = make_data()
    write_hdf5(path, good)
    before = path.read_bytes()
    bad = dataclasses.replace(good, task_ids=good.task_ids - 5)
    with pytest.raises(DatasetError, match="negative task ids"):
        write_hdf5(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.hdf5"]
    np.testing.assert_array_equal(read_hdf5(path).task_ids, good.task_ids)


def test_writer_failure_mid_write_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "keep.hdf5"
    good = make_data()
    write_hdf5(path, good)
    before = path.read_bytes()
    # Passes validation but cannot be stored: the failure happens after the temp file exists.
    odd = dataclasses.replace(good, infos={"obj": np.array([object()] * len(good))})
    with pytest.raises(TypeError):
        write_hdf5(path, odd)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.hdf5"]


def test_writer_rejects_unsupported_metadata(tmp_path: Path) -> None:
    path = tmp_path / "meta.hdf5"
    bad = dataclasses.replace(make_data(), metadata={"nested": {"a": 1}})
    with pytest.raises(DatasetError, match=r"key 'metadata/nested': unsupported metadata type"):
        write_hdf5(path, bad)
    assert not path.exists()


def test_reader_writer_warning_vs_error_for_open_end(tmp_path: Path) -> None:
    """A file ending mid-episode only warns on read; the writer refuses such data."""
    data = make_data()
    timeouts = data.timeouts.copy()
    timeouts[-1] = False
    path = tmp_path / "open.hdf5"
    arrays = raw_arrays(data)
    arrays["timeouts"] = timeouts
    write_raw(path, arrays)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_hdf5(path)
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    assert out.timeouts[-1]
    with pytest.raises(DatasetError, match="ends no episode"):
        write_hdf5(tmp_path / "w.hdf5", dataclasses.replace(data, timeouts=timeouts))


# --------------------------------------------------------------------------- episode_bounds


def test_episode_bounds() -> None:
    terminals = np.array([0, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
    timeouts = np.array([0, 0, 0, 1, 0, 0, 1, 1], dtype=bool)
    starts, lengths = episode_bounds(terminals, timeouts)
    np.testing.assert_array_equal(starts, [0, 3, 4, 7])
    np.testing.assert_array_equal(lengths, [3, 1, 3, 1])
    assert starts.dtype == np.int64 and lengths.dtype == np.int64


def test_episode_bounds_unfinished_tail_and_empty() -> None:
    starts, lengths = episode_bounds(np.array([0, 1, 0, 0], bool), np.zeros(4, bool))
    np.testing.assert_array_equal(starts, [0, 2])
    np.testing.assert_array_equal(lengths, [2, 2])
    starts, lengths = episode_bounds(np.zeros(0, bool), np.zeros(0, bool))
    assert starts.size == 0 and lengths.size == 0


# --------------------------------------------------------------------------- D4RL scores


def test_normalized_score_known_values() -> None:
    low, high = -20.272305, 3234.3  # D4RL's hopper references (tests/test_published.py)
    assert normalized_score("hopper", low) == pytest.approx(0.0)
    assert normalized_score("hopper", high) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-v2", (low + high) / 2) == pytest.approx(50.0)
    assert isinstance(normalized_score("hopper", 1000.0), float)
    # halfcheetah: 100 * (R + 280.178953) / (12135.0 + 280.178953)
    scores = normalized_score("halfcheetah", np.array([-280.178953, 12135.0, 5927.4105235]))
    assert isinstance(scores, np.ndarray)
    np.testing.assert_allclose(scores, [0.0, 100.0, 50.0], atol=1e-9)
    assert normalized_score("walker2d", 4592.3) == pytest.approx(100.0)
    assert normalized_score("ant", -325.6) == pytest.approx(0.0)


def test_d4rl_env_name() -> None:
    assert d4rl_env_name("hopper-medium-replay-v2") == "hopper"
    assert d4rl_env_name("halfcheetah-expert-v2") == "halfcheetah"
    assert d4rl_env_name("walker2d") == "walker2d"
    with pytest.raises(KeyError, match="known: ant, halfcheetah, hopper, walker2d"):
        d4rl_env_name("antmaze-umaze-v2")  # prefix parsing, not substring matching
    with pytest.raises(KeyError):
        normalized_score("humanoid-medium-v2", 1.0)


def test_ref_returns_read_only() -> None:
    with pytest.raises(TypeError):
        REF_RETURNS["hopper"] = (0.0, 1.0)  # type: ignore[index]

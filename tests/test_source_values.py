"""Attacks on the values of a real dataset source and of a checkpoint, tried as an attacker (or
a bad disk) would: bytes flipped inside a valid file, not arrays built wrong in memory.

The victim is a valid, uncompressed D4RL file in hopper's layout (``observations`` (N, 11),
``actions`` (N, 3), ``rewards``, ``terminals`` and ``timeouts`` as bool, ``next_observations``)
holding a real Hopper-v5 rollout with uniform random actions (D4RL's *random* level). HDF5
keeps no checksum of uncompressed data, so each flipped byte reads back as a value; every
variant must be refused with a :class:`DatasetError` naming the file, the key, the index and
the value, and the untouched file must be accepted.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import TINY

from cmt.benchmarks.d4rl import D4RLData
from cmt.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_policy,
    load_prompt,
    load_sealed,
    policy_state,
    save_prompt,
)
from cmt.config import parse_params
from cmt.data.dataset import Normalizer
from cmt.data.hdf5 import DatasetError, write_hdf5
from cmt.data.schema import TransitionData
from cmt.integrity import NonFiniteError
from cmt.methods import backbone_config
from cmt.models.policy import SequencePolicy

ROOT = Path(__file__).resolve().parents[1]
ENV, LEVEL = "hopper", "random"
STEPS = 3000  # about 150 episodes of random Hopper


# --------------------------------------------------------------------------- the victim


def hopper_rollout() -> dict[str, np.ndarray]:
    """D4RL-layout arrays of a real Hopper-v5 rollout with uniform random actions; the last
    step is marked as a timeout (D4RL's files stop mid-episode, which only warns)."""
    env = gym.make("Hopper-v5", max_episode_steps=1000)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "next")}
    for _ in range(STEPS):
        action = env.action_space.sample()
        nxt, reward, term, trunc, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, term, trunc, nxt), strict=True):
            rows[key].append(value)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    timeouts = np.asarray(rows["trunc"], dtype=bool)
    timeouts[-1] = True
    return {
        "observations": np.asarray(rows["obs"], dtype=np.float32),
        "actions": np.asarray(rows["act"], dtype=np.float32),
        "rewards": np.asarray(rows["rew"], dtype=np.float32),
        "terminals": np.asarray(rows["term"], dtype=bool),
        "timeouts": timeouts,
        "next_observations": np.asarray(rows["next"], dtype=np.float32),
    }


@pytest.fixture(scope="module")
def rollout() -> dict[str, np.ndarray]:
    return hopper_rollout()


def write_d4rl(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Uncompressed contiguous datasets, as a D4RL file saved without gzip."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f["metadata/algorithm"] = np.bytes_("random")
    return path


def read(path: Path, env: str = ENV, level: str = LEVEL) -> TransitionData:
    """The source as the d4rl benchmark reads it for ``data.env`` / ``data.level``."""
    cfg = D4RLData(benchmark="d4rl", env=env, level=level, source=str(path))
    return cfg.build()._read_source()


def refused(path: Path, key: str | None, *parts: str, env: str = ENV, level: str = LEVEL) -> str:
    """The one-line message of the DatasetError that reading ``path`` raises; it must start
    with the file (and key) and contain every one of ``parts``."""
    with pytest.raises(DatasetError) as err:
        read(path, env, level)
    message = str(err.value)
    prefix = f"{path}: key '{key}': " if key else f"{path}: "
    assert message.startswith(prefix), message
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# --------------------------------------------------------------------------- byte flips


def _offset(path: Path, key: str, cell: tuple[int, ...]) -> tuple[int, np.dtype]:
    """Byte offset in the file of ``key[cell]`` (a row: its first column) and the dtype."""
    with h5py.File(path, "r") as f:
        ds = f[key]
        assert ds.compression is None and ds.chunks is None  # contiguous: bytes = values
        cell = cell + (0,) * (ds.ndim - len(cell))
        flat = int(np.ravel_multi_index(cell, ds.shape))
        return ds.id.get_offset() + flat * ds.dtype.itemsize, ds.dtype


def flip_bit(path: Path, key: str, cell: tuple[int, ...], bit: int) -> float:
    """Flip bit ``bit`` of the little-endian float32 at ``cell``; the value it now holds."""
    offset, dtype = _offset(path, key, cell)
    assert dtype == np.float32
    raw = bytearray(path.read_bytes())
    raw[offset + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))
    return float(np.frombuffer(raw[offset : offset + 4], dtype="<f4")[0])


def write_bytes_at(path: Path, key: str, row: int, data: bytes) -> None:
    offset, _ = _offset(path, key, (row,))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def pick(arr: np.ndarray, ok: Callable[[np.ndarray], np.ndarray], ends: np.ndarray) -> tuple:
    """The first cell, in a row that ends no episode (nor follows an end), where ``ok``."""
    inside = ~ends & ~np.concatenate([[True], ends[:-1]])  # (N,)
    mask = ok(arr) & (inside[:, None] if arr.ndim == 2 else inside)
    cells = np.argwhere(mask)
    assert len(cells), "the rollout has no such value"
    return tuple(int(i) for i in cells[len(cells) // 2])


def shown(value: float) -> str:
    return f"{value:.6g}"


def between(low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: (np.abs(a) >= low) & (np.abs(a) < high)


# (key, which values to corrupt, exponent bit, what the message must say). Each flip sets a bit
# that was 0: bit 30 makes |x| < 1 about 2**128 times larger, bit 28 scales 2 <= |x| < 15 by
# 2**32, bit 27 by 65536 (still below the absolute bound: the outlier check catches it), and
# bit 23 doubles an action of 0.6 .. 1 (caught by the action space).
EXPONENT_FLIPS = {
    "observation x 2**128": ("observations", between(0.02, 1.0), 30, "|value| > 1e+06"),
    "observation x 65536": ("observations", between(2.0, 15.0), 27, "widths beyond"),
    "reward x 2**128": ("rewards", between(0.5, 1.0), 30, "|value| > 1e+06"),
    "reward x 65536": ("rewards", between(2.0, 15.0), 27, "widths beyond"),
    "action x 2**128": ("actions", between(0.1, 1.0), 30, "|value| > 1e+06"),
    "action x 2": ("actions", between(0.6, 1.0), 23, "outside Hopper-v5's action space"),
    "next observation x 65536": ("next_observations", between(2.0, 15.0), 27, "widths beyond"),
    "next observation x 2**32": ("next_observations", between(2.0, 15.0), 28, "|value| > 1e+06"),
}


@pytest.fixture
def victim(tmp_path: Path, rollout) -> Path:
    return write_d4rl(tmp_path / "hopper-random-v2.hdf5", rollout)


def test_the_untouched_file_is_accepted(victim: Path, rollout) -> None:
    data = read(victim)
    for key, value in rollout.items():
        np.testing.assert_array_equal(getattr(data, key), value)


@pytest.mark.parametrize("attack", EXPONENT_FLIPS)
def test_a_flipped_exponent_bit_is_refused(victim: Path, rollout, attack: str) -> None:
    key, which, bit, problem = EXPONENT_FLIPS[attack]
    ends = rollout["terminals"] | rollout["timeouts"]
    cell = pick(rollout[key], which, ends)
    value = flip_bit(victim, key, cell, bit)
    assert math.isfinite(value)  # finite garbage: the old finite check let it through
    assert abs(value) > abs(rollout[key][cell])  # the bit was 0: the value grew
    message = refused(victim, key, f"index {cell[0]}", shown(value), problem)
    if len(cell) == 2:
        assert f"column {cell[1]}" in message


@pytest.mark.parametrize("key", ["terminals", "timeouts"])
def test_byte_0xff_in_a_flag_is_refused(victim: Path, rollout, key: str) -> None:
    ends = rollout["terminals"] | rollout["timeouts"]
    row = pick(rollout["rewards"], lambda a: np.ones(a.shape, bool), ends)[0]
    write_bytes_at(victim, key, row, b"\xff")
    refused(victim, key, f"first at index {row}", "stored byte 0xff", "not 0/1")


def test_a_terminal_set_inside_an_episode_is_refused(victim: Path, rollout) -> None:
    """A byte 0x01 is a valid flag, but the episode visibly goes on after it."""
    ends = rollout["terminals"] | rollout["timeouts"]
    row = pick(rollout["rewards"], lambda a: np.ones(a.shape, bool), ends)[0]
    write_bytes_at(victim, "terminals", row, b"\x01")
    refused(victim, "terminals", f"first at index {row}", "the episode goes on", "no reset")


def test_next_observations_of_another_episode_are_refused(victim: Path, rollout) -> None:
    """A whole row of next_observations replaced: an unmarked episode boundary."""
    ends = rollout["terminals"] | rollout["timeouts"]
    row = pick(rollout["rewards"], lambda a: np.ones(a.shape, bool), ends)[0]
    other = rollout["next_observations"][row + 500]
    write_bytes_at(victim, "next_observations", row, other.astype("<f4").tobytes())
    refused(
        victim,
        "next_observations",
        f"first at index {row}, column 0",
        f"next_observations {shown(other[0])} != observations[{row + 1}] "
        f"{shown(rollout['observations'][row + 1, 0])}",
        "11 of 11 columns differ: looks like an unmarked episode boundary",
    )


def test_a_small_change_in_one_next_observation_is_refused(victim: Path, rollout) -> None:
    """A flipped mantissa bit: inside every range, only the episode's continuity shows it."""
    ends = rollout["terminals"] | rollout["timeouts"]
    cell = pick(rollout["next_observations"], between(0.1, 10.0), ends)
    value = flip_bit(victim, "next_observations", cell, 20)
    refused(
        victim,
        "next_observations",
        f"first at index {cell[0]}, column {cell[1]}: next_observations {shown(value)} != ",
        "1 of 11 columns differ: looks like a corrupted value",
    )


# --------------------------------------------------------------------------- wrong level or env


def test_a_random_file_given_as_medium_replay_is_refused_by_its_name(victim: Path) -> None:
    refused(
        victim,
        None,
        "the file name 'hopper-random-v2.hdf5' says level 'random'",
        "read as level 'medium_replay'",
        level="medium_replay",
    )


def test_random_data_named_medium_replay_is_refused_by_its_returns(tmp_path, rollout) -> None:
    path = write_d4rl(tmp_path / "hopper-medium-replay-v2.hdf5", rollout)
    refused(
        path,
        "rewards",
        "level 'medium_replay' named, but the returns look like a random policy's",
        "random-policy episodes on hopper score up to 10",
        "data.level=medium_replay",
        level="medium_replay",
    )


def test_a_random_file_whose_episodes_score_high_is_refused(tmp_path, rollout) -> None:
    arrays = {**rollout, "rewards": rollout["rewards"] * 50}
    path = write_d4rl(tmp_path / "hopper-random-v2.hdf5", arrays)
    refused(
        path,
        "rewards",
        "level 'random' named, but the returns are not a random policy's",
        "a mean score of at most 5",
    )


def test_a_walker2d_file_given_as_hopper_is_refused(tmp_path, rollout) -> None:
    """Same widths as hopper's, so only the name tells: refused before any array is read."""
    path = write_d4rl(tmp_path / "walker2d-medium-v2.hdf5", rollout)
    refused(
        path,
        None,
        "the file name 'walker2d-medium-v2.hdf5' says environment 'walker2d'",
        "read as environment 'hopper' (Hopper-v5)",
        level="medium",
    )


def test_our_own_file_of_another_level_is_refused(tmp_path, rollout) -> None:
    n = len(rollout["rewards"])
    data = TransitionData(
        **rollout,
        task_ids=np.zeros(n, dtype=np.int64),
        metadata={"env": "hopper", "level": "expert", "num_tasks": 1},
    )
    path = tmp_path / "hopper_expert.hdf5"
    write_hdf5(path, data)
    refused(path, "metadata/level", "says level 'expert'", "level 'medium'", level="medium")


# --------------------------------------------------------------------------- the real CLI


def test_cli_generate_refuses_a_corrupt_source_in_one_line(tmp_path, rollout) -> None:
    source = write_d4rl(tmp_path / "hopper-medium-replay-v2.hdf5", rollout)
    ends = rollout["terminals"] | rollout["timeouts"]
    cell = pick(rollout["observations"], between(0.02, 1.0), ends)
    value = flip_bit(source, "observations", cell, 30)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CMT_", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CMT_LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.run(
        [sys.executable, "-m", "cmt.cli", "generate", "--params", str(ROOT / "params.yaml"),
         "--preset", "hopper_medium_replay", "--set", f"data.source={source}",
         "--set", "data.name=hopper-medium-replay-v2", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: {source}: key 'observations': "), lines[0]
    assert f"index {cell[0]}" in lines[0] and shown(value) in lines[0], lines[0]
    assert not (out / "train.hdf5").exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def policy() -> SequencePolicy:
    return SequencePolicy(backbone_config(parse_params(TINY).model, "cmt"), 3, 2)


@pytest.mark.parametrize(
    ("entry", "value", "problem"),
    [
        ("state_std", [1.0, math.inf, 1.0], "non-finite normaliser 'state_std' (1 values, "
         "first at index 1: inf)"),
        ("state_mean", [0.0, 0.0, math.nan], "non-finite normaliser 'state_mean' (1 values, "
         "first at index 2: nan)"),
        ("state_std", [1.0, 0.0, 1.0], "non-positive normaliser 'state_std' (1 values, "
         "first at index 1: 0.0)"),
        ("return_scale", math.inf, "non-finite normaliser 'return_scale' (1 values, "
         "first at index 0: inf)"),
    ],
)  # fmt: skip
def test_a_sealed_checkpoint_with_a_broken_normaliser_is_refused(
    tmp_path, policy, entry: str, value, problem: str
) -> None:
    """The hash is valid (sealed after the edit): only the check of every tensor refuses it."""
    state = policy_state(policy, Normalizer.identity(3), {})
    state["normalizer"][entry] = torch.tensor(value, dtype=torch.float32)
    path = tmp_path / "model.pt"
    atomic_torch_save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_policy(path)
    assert str(err.value) == f"{path}: {problem}"


def test_a_prompt_with_nan_is_refused(tmp_path) -> None:
    path = tmp_path / "task_0.pt"
    save_prompt(path, torch.tensor([[0.5, math.nan]]), {})
    with pytest.raises(CheckpointError, match=r"non-finite prompt 'prompt' .*index 1: nan"):
        load_prompt(path)


def test_the_normaliser_refuses_statistics_that_overflow(rollout) -> None:
    """-1.95e37 in one observation: its square overflows float32, the std is inf."""
    obs = rollout["observations"].copy()
    obs[100, 3] = -1.95e37
    n = len(obs)
    data = TransitionData(**{**rollout, "observations": obs}, task_ids=np.zeros(n, dtype=np.int64))
    with pytest.raises(NonFiniteError, match=r"normaliser state_std is not finite .*index 3: inf"):
        Normalizer.fit(data, np.array([1.0]))


class Payload:
    """Not a tensor nor a plain value: torch's weights-only loader refuses to unpickle it."""


@pytest.mark.parametrize("damage", ["foreign class", "garbage", "truncated"])
def test_no_load_error_recommends_weights_only_false(tmp_path, policy, damage: str) -> None:
    path = tmp_path / "model.pt"
    if damage == "foreign class":
        torch.save({"format": 1, "payload": Payload()}, path)
    else:
        atomic_torch_save(policy_state(policy, Normalizer.identity(3), {}), path)
        raw = path.read_bytes()
        path.write_bytes(b"\x00garbage" * 64 if damage == "garbage" else raw[: len(raw) // 2])
    for load in (load_sealed, load_policy):
        with pytest.raises(CheckpointError) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"{path}: cannot be loaded ("), message
        assert "weights_only" not in message and "\n" not in message, message
    if damage == "foreign class":
        assert "Payload was not an allowed global" in message, message

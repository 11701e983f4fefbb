"""Multi-agent datasets: the HDF5 agent-axis layout and its validation, the SB3 VecEnv over
SMAX, tier selection, and a tiny end-to-end build of the SMAX tiers."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from test_hdf5 import raw_arrays as single_agent_arrays

from cmt.behaviour.ppo import TIERS, SmaxVecEnv, build_smax_datasets
from cmt.behaviour.rollout import concat_transitions
from cmt.behaviour.tier_choice import select_tiers
from cmt.data.hdf5 import DatasetError, read_hdf5, validate, write_hdf5
from cmt.data.schema import SCHEMA_VERSION, TransitionData
from cmt.integrity import HASH_KEY, hdf5_digest
from cmt.sections import PpoConfig

A, OBS, N_ACT = 3, 5, 6


def make_ma_data(n_episodes: int = 3, length: int = 4, seed: int = 0) -> TransitionData:
    """Episodes of equal length; the last step of odd episodes is a won termination."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    terminals, timeouts, won = (np.zeros(n, dtype=bool) for _ in range(3))
    for e in range(n_episodes):
        end = (e + 1) * length - 1
        (terminals if e % 2 else timeouts)[end] = True
        won[end] = bool(e % 2)
    avail = rng.random((n, A, N_ACT)) < 0.5
    avail[..., 4] = True  # stop, always available
    actions = np.argmax(rng.random((n, A, N_ACT)) * avail, axis=2).astype(np.int64)
    return TransitionData(
        observations=rng.standard_normal((n, A, OBS)).astype(np.float32),
        actions=actions,
        rewards=rng.random(n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.standard_normal((n, A, OBS)).astype(np.float32),
        task_ids=np.zeros(n, dtype=np.int64),
        infos={"won": won, "level": np.full(n, 2, dtype=np.int8)},
        metadata={"map": "test", "num_agents": A},
        avail_actions=avail,
    )


def raw_arrays(data: TransitionData) -> dict[str, Any]:
    return {
        **single_agent_arrays(data),
        "avail_actions": data.avail_actions,
        **{f"infos/{k}": v for k, v in data.infos.items()},
    }


def write_raw(path: Path, arrays: dict[str, Any], version: int = SCHEMA_VERSION) -> None:
    """Write a file directly with h5py, bypassing the validating writer (with the content
    hash that files claiming a schema version must carry, so the layout checks are reached)."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.create_dataset("metadata/schema_version", data=version)
        f.attrs[HASH_KEY] = hdf5_digest(f)


def expect_error(path: Path, key: str, what: str) -> None:
    pattern = re.escape(f"{path}: key '{key}': ") + ".*" + what
    with pytest.raises(DatasetError, match=pattern):
        read_hdf5(path)


# --------------------------------------------------------------------------- HDF5 layout


def test_multi_agent_round_trip(tmp_path: Path) -> None:
    data = make_ma_data()
    path = tmp_path / "ma.hdf5"
    write_hdf5(path, data)
    back = read_hdf5(path)
    for field in dataclasses.fields(TransitionData):
        if field.name in ("infos", "metadata"):
            continue
        a, b = getattr(data, field.name), getattr(back, field.name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert back.infos.keys() == data.infos.keys()
    np.testing.assert_array_equal(back.infos["won"], data.infos["won"])
    assert back.metadata == data.metadata
    assert back.multi_agent and (back.num_agents, back.num_actions, back.obs_dim) == (A, N_ACT, OBS)
    assert back.act_dim == N_ACT
    with h5py.File(path) as f:
        assert int(f["metadata/schema_version"][()]) == SCHEMA_VERSION == 2


def test_concat_keeps_avail_and_refuses_mixing() -> None:
    a, b = make_ma_data(seed=0), make_ma_data(seed=1)
    both = concat_transitions([a, b])
    assert both.avail_actions is not None and both.avail_actions.shape[0] == 2 * len(a)
    single = dataclasses.replace(
        a,
        observations=a.observations[:, 0],
        next_observations=a.next_observations[:, 0],
        actions=a.actions[:, :1].astype(np.float32),
        avail_actions=None,
    )
    with pytest.raises(ValueError, match="single-agent and multi-agent"):
        concat_transitions([a, single])


def test_schema_1_single_agent_file_still_reads(tmp_path: Path) -> None:
    data = make_ma_data()
    arrays = {
        "observations": data.observations[:, 0],
        "actions": data.observations[:, 0, :2],
        "rewards": data.rewards,
        "terminals": data.terminals,
        "timeouts": data.timeouts,
        "task_id": data.task_ids,
    }
    path = tmp_path / "v1.hdf5"
    write_raw(path, arrays, version=1)
    back = read_hdf5(path)
    assert not back.multi_agent and back.num_agents == 1 and back.act_dim == 2


def _set(key: str, value: Any) -> Any:
    return lambda arrays: arrays.__setitem__(key, value(arrays))


def _not_available(arrays: dict[str, Any]) -> None:
    avail = arrays["avail_actions"].copy()
    avail[6, 2, arrays["actions"][6, 2]] = False
    arrays["avail_actions"] = avail


def _nan_obs(arrays: dict[str, Any]) -> None:
    obs = arrays["observations"].copy()
    obs[5, 1, 0] = np.nan
    arrays["observations"] = obs


def _out_of_range(arrays: dict[str, Any]) -> None:
    actions = arrays["actions"].copy()
    actions[7, 1] = N_ACT
    arrays["actions"] = actions


def _early_win(arrays: dict[str, Any]) -> None:
    won = arrays["infos/won"].copy()
    won[1] = True
    arrays["infos/won"] = won


BAD_FILES = {
    "float actions": (
        _set("actions", lambda a: a["actions"].astype(np.float32)),
        "actions",
        "dtype float32, expected an integer dtype",
    ),
    "float avail": (
        _set("avail_actions", lambda a: a["avail_actions"].astype(np.float32)),
        "avail_actions",
        "dtype float32, expected bool or integer 0/1",
    ),
    "flat observations": (
        _set("observations", lambda a: a["observations"].reshape(12, -1)),
        "observations",
        r"expected 3-D array, got shape \(12, 15\)",
    ),
    "avail without agent axis": (
        _set("avail_actions", lambda a: a["avail_actions"][:, 0]),
        "avail_actions",
        "expected 3-D array",
    ),
    "actions of another agent count": (
        _set("actions", lambda a: a["actions"][:, :2]),
        "actions",
        "agent axis of size 2 does not match observations' 3 agents",
    ),
    "next observations of another agent count": (
        _set("next_observations", lambda a: a["next_observations"][:, :2]),
        "next_observations",
        "agent axis of size 2",
    ),
    "avail of another length": (
        _set("avail_actions", lambda a: a["avail_actions"][:-1]),
        "avail_actions",
        "length 11 does not match observations length 12",
    ),
    "non-finite observation": (
        _nan_obs,
        "observations",
        r"1 non-finite values \(first at index 5\)",
    ),
    "action out of range": (
        _out_of_range,
        "actions",
        rf"1 actions outside \[0, {N_ACT}\) \(first at index 7, agent 1: {N_ACT}\)",
    ),
    "action not available": (
        _not_available,
        "actions",
        r"1 actions that were not available \(first at index 6, agent 2: action \d",
    ),
    "win before the episode ends": (
        _early_win,
        "infos/won",
        r"1 wins at steps that end no episode \(first 1\)",
    ),
    "task id changes mid-episode": (
        _set("task_id", lambda a: np.arange(12, dtype=np.int64)),
        "task_id",
        "task id changes within an episode at index 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_multi_agent_file(tmp_path: Path, case: str) -> None:
    corrupt, key, what = BAD_FILES[case]
    arrays = raw_arrays(make_ma_data())
    corrupt(arrays)
    path = tmp_path / "bad.hdf5"
    write_raw(path, arrays)
    expect_error(path, key, what)


def test_schema_1_file_with_agent_axis_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "v1ma.hdf5"
    write_raw(path, raw_arrays(make_ma_data()), version=1)
    expect_error(path, "metadata/schema_version", "schema version 1 has no agent axis")


def test_writer_refuses_unavailable_action_and_leaves_nothing(tmp_path: Path) -> None:
    data = make_ma_data()
    avail = data.avail_actions.copy()
    avail[0, 0, data.actions[0, 0]] = False
    path = tmp_path / "out.hdf5"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: key 'actions': ")):
        write_hdf5(path, dataclasses.replace(data, avail_actions=avail))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="key 'avail_actions': dtype int64, expected bool"):
        validate(dataclasses.replace(data, avail_actions=avail.astype(np.int64)), "memory")


# --------------------------------------------------------------------------- behaviour


def test_select_tiers_by_win_rate_and_by_return() -> None:
    wins = np.array([0.0, 0.1, 0.3, 0.5, 0.8, 0.7])
    rets = np.array([0.2, 0.5, 0.8, 1.0, 1.5, 1.4])
    assert select_tiers(wins, rets, 0.5) == ({"poor": 0, "medium": 3, "good": 4}, "win_rate")
    # Nobody wins: Medium by return, half way from Poor (0.2) to Good (1.0 at the end).
    flat = np.zeros(5)
    assert select_tiers(flat, np.array([0.2, 0.3, 0.55, 0.9, 1.0]), 0.5) == (
        {"poor": 0, "medium": 2, "good": 4},
        "return",
    )
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        select_tiers(wins[:2], rets[:2], 0.5)


def test_rechecked_tier_choice_uses_the_rechecked_numbers() -> None:
    """Snapshot 5's evaluation (0.9) was lucky: rechecked it wins 0.6, so the other
    candidate, 4 (0.8, rechecked 0.75), is Good. Medium's target is then half of 0.75, and
    of the two nearest by evaluation (2 and 3) the one whose recheck is nearer wins."""
    wins = np.array([0.0, 0.1, 0.35, 0.41, 0.8, 0.9, 0.2])
    rets = np.arange(7.0)
    truth = {5: (0.6, 5.0), 4: (0.75, 4.0), 2: (0.38, 2.0), 3: (0.5, 3.0), 1: (0.37, 1.0)}
    asked: list[int] = []

    def recheck(i: int) -> tuple[float, float]:
        asked.append(i)
        return truth[i]

    assert select_tiers(wins, rets, 0.5) == ({"poor": 0, "medium": 3, "good": 5}, "win_rate")
    chosen = select_tiers(wins, rets, 0.5, recheck, candidates=2)
    assert chosen == ({"poor": 0, "medium": 2, "good": 4}, "win_rate")
    assert asked == [5, 4, 2, 3]  # two for Good, then the two nearest 0.375 for Medium
    assert wins[5] == 0.9  # the caller's arrays are left alone


@pytest.mark.slow
def test_vec_env_trains_maskable_ppo() -> None:
    from sb3_contrib import MaskablePPO

    venv = SmaxVecEnv("3m", 8, seed=0)
    assert venv.num_envs == 24 and venv.action_masks().shape == (24, 8)
    model = MaskablePPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0)
    model.learn(2 * 16 * 24)
    assert model.num_timesteps == 2 * 16 * 24
    # Auto-reset: step until some episode ends; its agents get the terminal observation.
    venv.reset()
    for _ in range(100):
        masks = venv.action_masks()
        actions = np.where(masks[:, 4], 4, masks.argmax(axis=1))
        obs, rewards, dones, infos = venv.step(actions)
        assert obs.shape == (24, 75) and rewards.shape == dones.shape == (24,)
        if dones.any():
            break
    ended = np.flatnonzero(dones)
    assert ended.size % 3 == 0 and all("terminal_observation" in infos[i] for i in ended)
    assert len(set(rewards[(np.arange(24) // 3) == ended[0] // 3])) == 1  # one team reward


@pytest.mark.slow
def test_build_tiers_end_to_end_and_resume(tmp_path: Path) -> None:
    cfg = PpoConfig(
        total_steps=2 * 768,
        snapshot_every=768,
        n_envs=8,
        n_steps=32,
        batch_size=256,
        n_epochs=1,
        eval_episodes=8,
    )
    out, behaviour = tmp_path / "3m", tmp_path / "behaviour"
    summary = build_smax_datasets("3m", out, behaviour, cfg, 8, seed=0, progress=False)
    data = read_hdf5(out / "train.hdf5")
    assert data.multi_agent and data.num_agents == 3 and data.metadata["levels"] == list(TIERS)
    levels = data.infos["level"]
    ends = data.terminals | data.timeouts
    for tier in TIERS:
        t = summary["tiers"][tier]
        assert t["level"] == TIERS.index(tier)
        assert int(ends[levels == TIERS.index(tier)].sum()) == t["episodes"] == 8
        won = data.infos["won"][levels == TIERS.index(tier)]
        assert int(won.sum()) == round(t["win_rate"] * 8)
    assert [s["step"] for s in summary["snapshots"]] == [0, 768, 1536]
    assert json.loads((out / "tiers.json").read_text())["tiers"] == summary["tiers"]

    before = (out / "train.hdf5").read_bytes()
    again = build_smax_datasets("3m", out, behaviour, cfg, 8, seed=0, progress=False)
    assert again["ppo"]["resumed_from"] == 1536
    assert again["tiers"] == summary["tiers"]
    assert (out / "train.hdf5").read_bytes() == before

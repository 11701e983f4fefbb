"""Export of our datasets as Minari datasets (``cmt export-minari``): read back identically by
our reader and by ``minari.load_dataset``; ids checked, existing datasets kept unless forced,
data a Minari dataset cannot hold refused.

The source is a train.hdf5 and references.json as the collect stage writes them, from real
Hopper-v5 rollouts; every Minari root is a temporary MINARI_DATASETS_PATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from cmt.atomic import write_json
from cmt.cli import main
from cmt.data.hdf5 import DatasetError, write_hdf5
from cmt.data.minari_export import export_file, export_minari
from cmt.data.schema import TransitionData
from cmt.data.sources import MINARI_ROOT_ENV, read_source
from cmt.integrity import sealed_json

ENV_ID = "Hopper-v5"
REFS = (-20.272305, 3234.3)


def rollouts(episodes: int, seed: int = 0) -> TransitionData:
    """Random Hopper-v5 episodes in our flat layout; the first cut at step 15 by a timeout
    (as D4RL marks a time limit), the others ended by the hopper falling."""
    env = gym.make(ENV_ID)
    env.action_space.seed(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "tout", "next", "x")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for t in range(1000):
            action = env.action_space.sample()
            nxt, reward, term, trunc, info = env.step(action)
            trunc = trunc or (episode == 0 and t == 14)
            for key, value in zip(
                rows, (obs, action, reward, term, trunc, nxt, info["x_position"]), strict=True
            ):
                rows[key].append(value)
            obs = nxt
            if term or trunc:
                break
    env.close()
    n = len(rows["rew"])
    return TransitionData(
        observations=np.asarray(rows["obs"], np.float32),
        actions=np.asarray(rows["act"], np.float32),
        rewards=np.asarray(rows["rew"], np.float32),
        terminals=np.asarray(rows["term"], bool),
        timeouts=np.asarray(rows["tout"], bool),
        next_observations=np.asarray(rows["next"], np.float32),
        task_ids=np.zeros(n, np.int64),
        infos={
            "level": np.repeat(np.int64(3), n),  # (N,) as our generated data records it
            "body/x": np.stack([rows["x"], rows["x"]], axis=1),  # (N, 2), a nested name
        },
        metadata={
            "env": "hopper",
            "env_id": ENV_ID,
            "level": "random",
            "num_tasks": 1,
            "behaviour": "sac",
        },
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, TransitionData]:
    """data/hopper_random/{train.hdf5, references.json}, as the collect stage writes them."""
    out = tmp_path_factory.mktemp("data") / "hopper_random"
    data = rollouts(4)
    write_hdf5(out / "train.hdf5", data)
    refs = {"env": "hopper", "0": {"random": REFS[0], "expert": REFS[1]}}
    write_json(out / "references.json", sealed_json(refs))
    return out / "train.hdf5", data


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(MINARI_ROOT_ENV, str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_export_reads_back_identically(source, root: Path, fmt: str) -> None:
    import minari

    train, data = source
    dataset_id = "cmt/hopper/random-v0"
    path = export_file(train, dataset_id, data_format=fmt)
    assert path == root / dataset_id

    back = read_source(dataset_id, env_id=ENV_ID, obs_dim=11, act_dim=3)
    for key in ("observations", "next_observations", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(back, key), getattr(data, key), err_msg=key)
        assert getattr(back, key).dtype == np.float32
    np.testing.assert_array_equal(back.terminals, data.terminals)
    np.testing.assert_array_equal(back.timeouts, data.timeouts)
    assert back.timeouts[14] and not back.terminals[14]  # the cut episode stays a truncation
    assert sorted(back.infos) == ["body/x", "level"]
    for name, values in data.infos.items():
        np.testing.assert_array_equal(back.infos[name], values, err_msg=name)
    meta = back.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == REFS
    assert meta["algorithm"] == "sac" and meta["data_format"] == fmt
    assert meta["max_episode_steps"] == 1000 and meta["env_id"] == ENV_ID

    # Minari's own loader: the same episodes, each with its final next observation.
    dataset = minari.load_dataset(dataset_id)
    ends = np.flatnonzero(data.terminals | data.timeouts)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert dataset.total_episodes == ends.size and dataset.total_steps == len(data)
    for episode, start, end in zip(dataset.iterate_episodes(), starts, ends, strict=True):
        np.testing.assert_allclose(
            episode.rewards.sum(), data.rewards[start : end + 1].sum(), rtol=1e-6
        )
        np.testing.assert_array_equal(episode.observations[-1], data.next_observations[end])
        np.testing.assert_array_equal(episode.terminations, data.terminals[start : end + 1])
        np.testing.assert_array_equal(episode.truncations, data.timeouts[start : end + 1])
    assert dataset.spec.env_spec.id == ENV_ID
    assert minari.get_normalized_score(dataset, np.array([REFS[1]]))[0] == pytest.approx(1.0)


def test_an_existing_dataset_is_kept_unless_forced(source, root: Path) -> None:
    train, data = source
    export_file(train, "cmt/hopper/random-v0")
    smaller = data.take(np.arange(15))  # the first episode only
    with pytest.raises(DatasetError, match=r"random-v0: Minari dataset .* already exists; pass"):
        export_minari(smaller, "cmt/hopper/random-v0")
    assert json.loads((root / "cmt/hopper/random-v0/data/metadata.json").read_text())[
        "total_episodes"
    ] == int((data.terminals | data.timeouts).sum())

    export_minari(smaller, "cmt/hopper/random-v0", force=True)
    meta = json.loads((root / "cmt/hopper/random-v0/data/metadata.json").read_text())
    assert meta["total_episodes"] == 1 and meta["total_steps"] == 15
    assert "ref_min_score" not in meta  # no references were given this time
    # The staging root is gone; Minari's namespace markers are in place.
    assert [p.name for p in root.iterdir()] == ["cmt"]
    assert (root / "cmt" / "namespace_metadata.json").is_file()
    assert (root / "cmt" / "hopper" / "namespace_metadata.json").is_file()


def test_the_command_line(source, tmp_path: Path, capsys) -> None:
    train, _ = source
    root = tmp_path / "elsewhere"
    args = ["export-minari", str(train), "--dataset-id", "cmt/hopper/cli-v0", "--root", str(root)]
    assert main([*args, "--data-format", "arrow", "--author", "A. Person"]) == 0
    assert str(root / "cmt/hopper/cli-v0") in capsys.readouterr().out
    meta = json.loads((root / "cmt/hopper/cli-v0/data/metadata.json").read_text())
    assert meta["author"] == ["A. Person"] and meta["data_format"] == "arrow"

    assert main(args) == 1  # exists
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already exists; pass --force" in err
    assert len(err.splitlines()) == 1
    assert main([*args, "--force"]) == 0

    bad = ["export-minari", str(train), "--dataset-id", "cmt/../escape-v0", "--root", str(root)]
    assert main(bad) == 2
    assert "component '..' is not a safe name" in capsys.readouterr().err
    assert not (tmp_path / "escape-v0").exists() and not (root / "escape-v0").exists()


def test_data_a_minari_dataset_cannot_hold_is_refused(source, root: Path) -> None:
    _, data = source
    n = len(data)
    two_tasks = TransitionData(
        **{**_fields(data), "task_ids": (np.arange(n) >= 15).astype(np.int64)}
    )
    with pytest.raises(DatasetError, match=r"multi-task data \(2 tasks, meta-RL\) cannot be"):
        export_minari(two_tasks, "cmt/hopper/tasks-v0")

    team = TransitionData(
        observations=np.zeros((4, 3, 5), np.float32),
        actions=np.zeros((4, 3), np.int64),
        rewards=np.zeros(4, np.float32),
        terminals=np.array([0, 0, 0, 1], bool),
        timeouts=np.zeros(4, bool),
        next_observations=np.zeros((4, 3, 5), np.float32),
        task_ids=np.zeros(4, np.int64),
        avail_actions=np.ones((4, 3, 6), bool),
    )
    with pytest.raises(DatasetError, match=r"team data \(3 agents .* SMAX\) cannot be"):
        export_minari(team, "cmt/smax/3m-v0", env_id=ENV_ID)

    with pytest.raises(DatasetError, match=r"key 'observations': shape \(11,\) is not Walker2d"):
        export_minari(data, "cmt/walker/random-v0", env_id="Walker2d-v5")
    assert not root.exists() or not any(root.rglob("*-v0"))  # nothing written


def _fields(data: TransitionData) -> dict:
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    return {k: getattr(data, k) for k in keys} | {"metadata": dict(data.metadata)}

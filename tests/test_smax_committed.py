"""Committed SMAX behaviour (``behaviour/smax_<map>/``, ``data.ppo.policies``): collect rolls
the committed tier policies out, without training, into the very dataset their training run
wrote; other settings are refused with a message that names them."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from test_mappo import TINY

from cmt.behaviour.committed import CommittedPoliciesError, load_committed_smax, publish_smax
from cmt.behaviour.mappo import CHECKPOINT_FILE, read_tier_policy
from cmt.behaviour.ppo import build_smax_datasets, write_smax_datasets
from cmt.benchmarks import make_benchmark
from cmt.benchmarks.smax import SmaxData
from cmt.config import load_params, preset_names
from cmt.integrity import hdf5_digest, read_json

ROOT = Path(__file__).resolve().parents[1]
SMAX_PRESETS = [p for p in preset_names() if p.startswith("smax_")]


def _data(preset: str = "smax_3m", **sets: object) -> SmaxData:
    data = load_params(ROOT / "params.yaml", sets, preset=preset).data
    assert isinstance(data, SmaxData)
    return data


@pytest.mark.parametrize("preset", SMAX_PRESETS)
def test_every_smax_preset_rolls_out_its_committed_policies(preset: str) -> None:
    cfg = _data(preset)
    assert cfg.ppo.policies == "committed"
    behaviour = load_committed_smax(cfg.map, cfg.ppo, cfg.seed)  # not refused
    manifest = read_json(ROOT / "behaviour" / f"smax_{cfg.map}" / "manifest.json")
    assert manifest["dataset"]["episodes_per_tier"] == cfg.episodes_per_tier
    kept = [s["step"] for s in behaviour.snapshots if s["policy"] is not None]
    assert kept == sorted(t["step"] for t in manifest["tiers"].values())
    assert manifest["command"].startswith("python scripts/run_smax_learner.py")


@pytest.mark.slow
def test_committed_collect_writes_the_dataset_of_the_training_run(tmp_path: Path) -> None:
    """3m at the preset's 300 episodes per tier (about 20 s on one core): every array of
    ``train.hdf5`` equals the run's own (its content digest, kept in the manifest)."""
    cfg = _data()
    out, checkpoints = tmp_path / "data", tmp_path / "behaviour"
    summary = make_benchmark(cfg).build_datasets(out, checkpoints, progress=False)
    committed = ROOT / "behaviour" / "smax_3m"
    manifest = read_json(committed / "manifest.json")
    with h5py.File(out / "train.hdf5", "r") as f:
        assert hdf5_digest(f) == manifest["dataset"]["sha256"]
    assert summary["transitions"] == manifest["dataset"]["transitions"]
    for tier, record in manifest["tiers"].items():
        assert summary["tiers"][tier]["win_rate"] == record["win_rate"]
        weights, meta = read_tier_policy(out / "policies" / f"{tier}.pt")
        same_weights, same_meta = read_tier_policy(committed / "policies" / f"{tier}.pt")
        assert meta == same_meta and all((weights[k] == same_weights[k]).all() for k in weights)
    assert not checkpoints.exists()  # nothing trained, no learner checkpoint


def test_other_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ppo = _data().ppo
    shorter = ppo.model_copy(update={"total_steps": 12_000_000})
    with pytest.raises(
        CommittedPoliciesError,
        match=r"budgets\.total_steps: committed 24000000, config 12000000\)\. Restore those "
        r"settings, or set data\.ppo\.policies=train",
    ):
        load_committed_smax("3m", shorter, 0)
    with pytest.raises(CommittedPoliciesError, match="seed: committed 0, config 1"):
        load_committed_smax("3m", ppo, 1)
    with pytest.raises(CommittedPoliciesError, match="budgets.batch_size: committed 10240"):
        load_committed_smax("2s3z", ppo, 0)  # 3m's settings on another map
    with pytest.raises(
        CommittedPoliciesError, match="medium_fraction=0.5, recheck_episodes=0 are committed"
    ):
        load_committed_smax("3m", ppo.model_copy(update={"medium_fraction": 0.95}), 0)
    with pytest.raises(CommittedPoliciesError, match="recheck_episodes=64 rechecks the snapshot"):
        load_committed_smax("3m", ppo.model_copy(update={"recheck_episodes": 64}), 0)
    with pytest.raises(CommittedPoliciesError, match="total_steps"):  # what collect calls
        make_benchmark(_data(**{"data.ppo.total_steps": 12_000_000})).build_datasets(tmp_path)

    monkeypatch.setenv("CMT_BEHAVIOUR_DIR", str(tmp_path / "behaviour"))
    with pytest.raises(CommittedPoliciesError, match="no committed behaviour policies for smax"):
        load_committed_smax("3m", ppo, 0)
    copy = tmp_path / "behaviour" / "smax_3m"
    shutil.copytree(ROOT / "behaviour" / "smax_3m", copy)
    load_committed_smax("3m", ppo, 0)  # the override is read
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text.replace('"seed": 0', '"seed": 1', 1))
    with pytest.raises(CommittedPoliciesError, match="sha256"):
        load_committed_smax("3m", ppo, 0)


RECHECKED = TINY.model_copy(
    update={"total_steps": 6 * 192, "recheck_episodes": 16, "recheck_candidates": 2}
)


@pytest.mark.slow
def test_rechecked_tiers_are_published_and_chosen_again_from_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose tiers were rechecked, published: collect from its committed policies makes
    the same choice from the recorded rechecks (the other snapshots' actors are gone) and
    writes the same dataset; another recheck setting is refused."""
    monkeypatch.setenv("CMT_BEHAVIOUR_DIR", str(tmp_path / "behaviour"))
    (tmp_path / "behaviour").mkdir()
    run = build_smax_datasets("3m", tmp_path / "run", tmp_path / "ckpt", RECHECKED, 4, 0, False)
    rechecked = [s for s in run["snapshots"] if "recheck" in s]
    assert 2 <= len(rechecked) <= 4 and all(s["recheck"]["episodes"] == 16 for s in rechecked)
    tier_steps = {t: run["tiers"][t]["snapshot_step"] for t in ("medium", "good")}
    assert {s["step"] for s in rechecked} >= set(tier_steps.values())
    publish_smax("3m", RECHECKED, 0, tmp_path / "run", tmp_path / "ckpt" / CHECKPOINT_FILE,
                 "test", {"seconds": 1.0}, commit="test")  # fmt: skip

    committed = load_committed_smax("3m", RECHECKED, 0)
    assert sum(s["policy"] is not None for s in committed.snapshots) == 3
    again = write_smax_datasets("3m", tmp_path / "again", committed, RECHECKED, 4, 0, False)
    assert {t: again["tiers"][t]["snapshot_step"] for t in tier_steps} == tier_steps
    with (
        h5py.File(tmp_path / "run" / "train.hdf5") as a,
        h5py.File(tmp_path / "again" / "train.hdf5") as b,
    ):
        assert hdf5_digest(a) == hdf5_digest(b)
    other = RECHECKED.model_copy(update={"recheck_episodes": 32})
    with pytest.raises(CommittedPoliciesError, match="recheck_episodes=32 rechecks the snapshot"):
        load_committed_smax("3m", other, 0)

"""Pretraining at scale: data-parallel over two real CPU processes under torchrun (gloo), and
batches that cost the same memory at any dataset size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmt.checkpoint import load_policy
from cmt.config import parse_params
from cmt.data.dataset import Normalizer, OfflineDataset
from cmt.data.schema import TransitionData
from cmt.experiment import load_data, pretrain_backbone

ROOT = Path(__file__).resolve().parents[1]


def _worker_script(tmp_path: Path, data_dir: Path, cfg: dict) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(
        f"""
import hashlib, json, os, sys
import torch
from cmt.config import parse_params
from cmt.experiment import load_data, pretrain_backbone
import cmt.train.pretrain as P

torch.set_num_threads(1)
params = parse_params(json.loads({json.dumps(cfg)!r}))
models = []
class Keep(P.SequencePolicy):  # remember this rank's model to digest its final weights
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        models.append(self)
P.SequencePolicy = Keep
steps = []
ckpt = pretrain_backbone(params, "cmt", 0, load_data(params, {str(data_dir)!r}),
                         {str(tmp_path / "ddp")!r}, on_metrics=lambda s, m: steps.append(s),
                         progress=False)
h = hashlib.sha256()
for k, v in sorted(models[0].state_dict().items()):
    h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
rank = os.environ["RANK"]
with open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w") as f:
    json.dump({{"digest": h.hexdigest(), "logged_steps": steps, "ckpt": str(ckpt)}}, f)
"""
    )
    return script


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_and_save_a_plain_checkpoint(tiny_data_dir, tmp_path):
    from conftest import TINY

    cfg = {**TINY, "pretrain": {**TINY["pretrain"], "steps": 12, "distributed": True}}
    script = _worker_script(tmp_path, tiny_data_dir, cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks ended with different weights"
    assert ranks[0]["logged_steps"] and not ranks[1]["logged_steps"], "only rank 0 reports"
    # The checkpoint is the plain policy's: it loads in this single process.
    model, _, meta = load_policy(ranks[0]["ckpt"])
    assert not any(k.startswith("module.") for k in model.state_dict())
    assert meta["steps"] == 12
    # And it differs from a single-process run of the same seed: rank 1's half of each batch
    # was really used (same global batch size, different samples).
    params = parse_params({**TINY, "pretrain": {**TINY["pretrain"], "steps": 12}})
    single = pretrain_backbone(
        params, "cmt", 0, load_data(params, tiny_data_dir), tmp_path / "one", progress=False
    )
    a, b = model.state_dict(), load_policy(single)[0].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_multi_process_launch_needs_the_distributed_switch(monkeypatch, tiny_params, tmp_path):
    from cmt.train.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="pretrain.distributed"):
        setup(False, "cpu")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        setup(True, "cpu")


def _dataset(n: int) -> OfflineDataset:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n + 1, 17), dtype=np.float32)
    ends = np.zeros(n, dtype=bool)
    ends[999::1000] = True
    ends[-1] = True
    return OfflineDataset(
        TransitionData(
            observations=obs[:-1],
            actions=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
            rewards=rng.standard_normal(n, dtype=np.float32),
            terminals=np.zeros(n, dtype=bool),
            timeouts=ends,
            next_observations=obs[1:],
            task_ids=(np.arange(n) // 1000 % 10).astype(np.int64),
        )
    )


def test_a_batch_allocates_the_same_at_any_dataset_size():
    """Batches are gathered by index: building one allocates as much for 300k transitions as
    for 10k (NumPy reports its buffers to tracemalloc), i.e. nothing proportional to the data."""
    import tracemalloc

    from cmt.methods import backbone_config
    from cmt.train.pretrain import make_sampler

    params = parse_params({})
    mcfg = backbone_config(params.model, "cmt")
    peaks = []
    for n in (10_000, 300_000):
        ds = _dataset(n)
        sampler = make_sampler(ds, Normalizer.fit(ds.data, ds.ep_return), mcfg, params.pretrain)
        sampler.sample(256, np.random.default_rng(0))
        tracemalloc.start()
        sampler.sample(256, np.random.default_rng(1))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0] + 64 * 1024, peaks
    observations = 300_000 * 17 * 4  # bytes of one copy of the states alone
    assert peaks[1] < observations / 4, "building a batch copies a large part of the dataset"

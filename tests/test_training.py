"""Pretraining, prompt tuning, checkpoints and batched evaluation on tiny budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmt.benchmarks import make_benchmark
from cmt.checkpoint import CheckpointError, load_policy, load_prompt, save_prompt
from cmt.evaluation.rollout import rollout
from cmt.experiment import initial_prompt, load_data, make_prompts, pretrain_backbone, prompt_data
from cmt.train.prompt_tune import tune_prompt


@pytest.fixture(scope="module")
def cmt_checkpoint(tmp_path_factory, tiny_data_dir):
    from conftest import TINY

    from cmt.config import parse_params

    params = parse_params(TINY)
    out = tmp_path_factory.mktemp("ckpt")
    return pretrain_backbone(
        params, "cmt", 0, load_data(params, tiny_data_dir), out, progress=False
    )


def test_prompt_tuning_freezes_the_backbone(tiny_params, tiny_data_dir, cmt_checkpoint):
    data = load_data(tiny_params, tiny_data_dir)
    model, norm, _ = load_policy(cmt_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = tiny_params.data.test_tasks[0]
    pdata = prompt_data(tiny_params, make_benchmark(tiny_params.data), data, task, 0)
    init = initial_prompt(model, norm, pdata.fit, 0)
    grads_seen = []
    hooks = [
        p.register_hook(lambda g: grads_seen.append(g))
        for p in model.parameters()
        if p.requires_grad
    ]
    result = tune_prompt(
        model,
        norm,
        pdata,
        init,
        tiny_params.prompt_tune,
        0,
        progress=False,
    )
    for h in hooks:
        h.remove()
    assert not grads_seen, "a backbone parameter received a gradient"
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed during prompt tuning"
    assert result.prompt.shape == init.shape
    assert not torch.equal(result.prompt, init), "the prompt itself was not optimised"


def test_pretraining_resumes_after_a_kill(tiny_params, tiny_data_dir, tmp_path, monkeypatch):
    from cmt.data.sampler import SegmentSampler

    data = load_data(tiny_params, tiny_data_dir)

    class Killed(Exception):
        pass

    def kill_at_25(step, metrics):
        if step >= 25:
            raise Killed

    p = tiny_params.model_copy(
        update={"pretrain": tiny_params.pretrain.model_copy(update={"log_every": 1})}
    )
    first: list[tuple[int, dict]] = []
    with pytest.raises(Killed):
        pretrain_backbone(
            p,
            "cmt",
            0,
            data,
            tmp_path / "a",
            on_metrics=lambda s, m: (first.append((s, m)), kill_at_25(s, m)),
            progress=False,
        )
    assert (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "a" / "model.pt").exists()
    seen = []
    batches = []
    sample = SegmentSampler.sample
    monkeypatch.setattr(
        SegmentSampler, "sample", lambda self, *a: (batches.append(1), sample(self, *a))[1]
    )
    resumed = pretrain_backbone(
        p,
        "cmt",
        0,
        data,
        tmp_path / "a",
        on_metrics=lambda s, m: seen.append((s, m)),
        progress=False,
    )
    monkeypatch.undo()
    assert len(batches) == 10, "did not continue from the step-20 checkpoint"
    # The learning curve keeps the steps before the resume point, with their logged values.
    assert [s for s, _ in seen] == list(range(30))
    assert seen[:20] == first[:20]
    assert not any((tmp_path / "a" / f).exists() for f in ("last.pt", "prev.pt"))
    straight = pretrain_backbone(p, "cmt", 0, data, tmp_path / "b", progress=False)
    a, b = load_policy(resumed)[0].state_dict(), load_policy(straight)[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs after resume")


def test_bad_checkpoints_are_rejected(tmp_path, cmt_checkpoint):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_policy(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(cmt_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_policy(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(tmp_path / "missing.pt")
    prompt_file = tmp_path / "p.pt"
    save_prompt(prompt_file, torch.ones(5, 32), {"task": 1})
    with pytest.raises(CheckpointError, match="not a policy checkpoint"):
        load_policy(prompt_file)  # a prompt is not a policy
    prompt, meta = load_prompt(prompt_file)
    assert prompt.shape == (5, 32) and meta == {"task": 1}
    assert prompt_file.stat().st_size < 8_000, "a prompt artifact should be kilobytes"


def task_prompts(model, norm, data, tasks: np.ndarray) -> torch.Tensor | None:
    """One prompt per episode of ``tasks``, from each task's demonstrations (None without)."""
    if model.cfg.prompt == "none":
        return None
    per_task = {
        t: initial_prompt(model, norm, data.demos.select_tasks([t]), t) for t in set(tasks.tolist())
    }
    return torch.stack([per_task[int(t)] for t in tasks])


@pytest.mark.parametrize("backbone", ["cmt", "prompt_dt", "dt", "bc"])
def test_batched_rollout_equals_one_episode_at_a_time(
    backbone, tiny_params, tiny_data_dir, tmp_path
):
    data = load_data(tiny_params, tiny_data_dir)
    params = tiny_params.model_copy(
        update={"pretrain": tiny_params.pretrain.model_copy(update={"steps": 3})}
    )
    ckpt = pretrain_backbone(params, backbone, 0, data, tmp_path, progress=False)
    model, norm, _ = load_policy(ckpt)
    family = make_benchmark(params.data)
    tasks = np.array([1, 5, 5, 1])
    prompts = task_prompts(model, norm, data, tasks)
    targets = np.array([-5.0, -6.0, -7.0, -8.0])
    batched, lengths = rollout(
        model, norm, family.make_batched_env(tasks), family.horizon, 0, prompts, targets
    )
    single = [
        rollout(
            model,
            norm,
            family.make_batched_env(tasks[i : i + 1]),
            family.horizon,
            0,
            None if prompts is None else prompts[i : i + 1],
            targets[i : i + 1],
        )[0][0]
        for i in range(len(tasks))
    ]
    # Closed-loop control amplifies last-bit differences between the matmul kernels chosen
    # for batch 4 and batch 1, so returns agree to ~0.5%, not bit for bit ...
    np.testing.assert_allclose(batched, single, rtol=1e-2)
    # ... while the policy itself gives each episode the same action whatever the batch.
    g = torch.Generator().manual_seed(0)
    B, T = len(tasks), 7
    h = (
        torch.randn(B, T, model.obs_dim, generator=g),
        torch.rand(B, T, model.act_dim, generator=g),
        torch.randn(B, T, generator=g) if model.cfg.condition_on_rtg else None,
        torch.arange(T).expand(B, T),
    )
    with torch.no_grad():
        full = model(*h, prompts).actions
        for i in range(B):
            one = model(
                *(None if x is None else x[i : i + 1] for x in h),
                None if prompts is None else prompts[i : i + 1],
            ).actions
            torch.testing.assert_close(one, full[i : i + 1], rtol=1e-5, atol=1e-5)
    assert (lengths == family.horizon).all()


class RecordingEnv:
    """A real batched env that keeps the actions it is stepped with."""

    def __init__(self, env) -> None:
        self.env, self.num_envs, self.actions = env, env.num_envs, []

    def reset(self, seed: int) -> np.ndarray:
        return self.env.reset(seed=seed)

    def step(self, actions: np.ndarray):
        self.actions.append(actions.copy())
        return self.env.step(actions)


@pytest.mark.parametrize("backbone", ["cmt", "prompt_dt", "dt"])
def test_cached_rollout_equals_uncached_banded_rollout(
    backbone, tiny_params, tiny_data_dir, tmp_path
):
    """On the real point-robot env (20 steps, band of 5): the rolling cache picks the actions
    that recomputing the whole episode's banded forward picks, step for step."""
    data = load_data(tiny_params, tiny_data_dir)
    params = tiny_params.model_copy(
        update={
            "model": tiny_params.model.model_copy(update={"attention": "banded", "train_len": 8}),
            "pretrain": tiny_params.pretrain.model_copy(update={"steps": 5}),
        }
    )
    ckpt = pretrain_backbone(params, backbone, 0, data, tmp_path, progress=False)
    model, norm, _ = load_policy(ckpt)
    assert model.cfg.attention == "banded"
    family = make_benchmark(params.data)
    tasks = np.array([1, 5, 5, 1])
    prompts = task_prompts(model, norm, data, tasks)
    targets = np.array([-5.0, -6.0, -7.0, -8.0])
    runs = {}
    for cache in (True, False):
        env = RecordingEnv(family.make_batched_env(tasks))
        returns, lengths = rollout(
            model, norm, env, family.horizon, 0, prompts, targets, cache=cache
        )
        runs[cache] = (np.stack(env.actions), returns)
    assert runs[True][0].shape == (family.horizon, len(tasks), model.act_dim)
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=1e-5)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-5)


def test_tuned_prompt_beats_zero_shot_on_held_out_demos(tiny_params, tiny_data_dir, tmp_path):
    """End to end in well under a minute: generate, pretrain, tune on an unseen task. What it
    shows is that tuning runs and finds a lower validation loss somewhere (it keeps only
    improvements, so it passes on a barely trained backbone too); that pretraining itself
    helps is tests/test_learning.py's, by rollouts."""
    params = tiny_params.model_copy(
        update={
            "pretrain": tiny_params.pretrain.model_copy(update={"steps": 150, "batch_size": 32}),
            "prompt_tune": tiny_params.prompt_tune.model_copy(
                update={"steps": 100, "batch_size": 16, "eval_every": 10, "patience": 5}
            ),
        }
    )
    data = load_data(tiny_params, tiny_data_dir)
    ckpt = pretrain_backbone(params, "cmt", 0, data, tmp_path / "ckpt", progress=False)
    prompts = make_prompts(params, "cmt_tuned", ckpt, data, 0, tmp_path / "prompts", progress=False)
    for task, p in prompts.items():
        assert p["val_loss_tuned"] < p["val_loss_zero_shot"], (task, p)
        assert (tmp_path / "prompts" / f"task_{task}.pt").exists()


@pytest.mark.slow
def test_compiled_pretraining_runs_and_saves_plain_weights(tiny_params, tiny_data_dir, tmp_path):
    """pretrain.compile goes through torch.compile (inductor needs a C++ compiler here)."""
    params = tiny_params.model_copy(
        update={"pretrain": tiny_params.pretrain.model_copy(update={"steps": 3, "compile": True})}
    )
    ckpt = pretrain_backbone(
        params, "cmt", 0, load_data(params, tiny_data_dir), tmp_path, progress=False
    )
    model, _, _ = load_policy(ckpt)  # keys of the plain module: loads without unwrapping
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_the_anchor_keeps_the_tuned_prompt_near_the_initial_one(
    tiny_params, tiny_data_dir, cmt_checkpoint
):
    """The pull toward the initial prompt bounds how far tuning moves it: a strong anchor
    keeps it closer than none, with everything else equal."""
    data = load_data(tiny_params, tiny_data_dir)
    model, norm, _ = load_policy(cmt_checkpoint)
    task = tiny_params.data.test_tasks[0]
    pdata = prompt_data(tiny_params, make_benchmark(tiny_params.data), data, task, 0)
    init = initial_prompt(model, norm, pdata.fit, 0)
    # No early stop, so both run every step and only the anchor differs.
    base = tiny_params.prompt_tune.model_copy(update={"steps": 60, "patience": 100})
    drift = {}
    for anchor in (0.0, 100.0):
        cfg = base.model_copy(update={"anchor": anchor})
        out = tune_prompt(model, norm, pdata, init, cfg, 0, progress=False)
        final = out.history[-1]
        assert final[0] == 60
        drift[anchor] = float((out.prompt - init).norm() / init.norm())
    assert drift[100.0] < 0.5 * drift[0.0], drift


def test_early_stopping_validates_on_more_than_one_demonstration(tiny_params, tiny_data_dir):
    """Prompt data of 5 demonstrations holds 2 out for validation (one alone made the
    stopping point a coin flip); every benchmark splits through the same rule."""
    from cmt.data.dataset import held_out_count

    data = load_data(tiny_params, tiny_data_dir)
    bench = make_benchmark(tiny_params.data)
    task = tiny_params.data.test_tasks[0]
    pdata = prompt_data(tiny_params, bench, data, task, 0)
    demos = bench.prompt_target(data, task).num_episodes
    assert pdata.val.num_episodes >= 2
    assert pdata.val.num_episodes + pdata.fit.num_episodes == demos
    assert [held_out_count(n, 0.25) for n in (2, 3, 5, 8, 40)] == [1, 2, 2, 2, 10]


def test_return_conditioned_cmt_ablation_runs_end_to_end(tiny_params, tiny_data_dir, tmp_path):
    """The ablation backbone: CMT's prompt plus the baselines' return-to-go tokens, pretrained,
    tuned and evaluated with the baselines' return targets."""
    from cmt.evaluation.records import evaluate_method

    data = load_data(tiny_params, tiny_data_dir)
    params = tiny_params.model_copy(
        update={"pretrain": tiny_params.pretrain.model_copy(update={"steps": 20})}
    )
    ckpt = pretrain_backbone(params, "cmt_rtg", 0, data, tmp_path / "ckpt", progress=False)
    model, _, _ = load_policy(ckpt)
    assert model.cfg.condition_on_rtg and model.cfg.prompt == "encoder"
    made = make_prompts(params, "cmt_rtg_tuned", ckpt, data, 0, tmp_path / "p", progress=False)
    prompts = {t: p["prompt"] for t, p in made.items()}
    result = evaluate_method(params, ckpt, prompts, data, 0)
    assert set(result["per_task"]) == set(make_benchmark(params.data).eval_tasks)
    assert np.isfinite(result["score_mean"])

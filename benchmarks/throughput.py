"""Throughput benchmark: pretraining samples/s against this machine's own matmul peak,
the batch builder against a per-sample loop, and batched evaluation against the
one-episode-at-a-time loop of public Decision Transformer code.

    python benchmarks/throughput.py            # writes benchmarks/results/throughput.json
    python benchmarks/throughput.py --quick    # fewer repetitions, for a smoke check

FLOPs are counted by ``torch.utils.flop_counter`` on the real training step (forward and
backward), not estimated.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cmt.benchmarks import make_benchmark
from cmt.config import Params, parse_params
from cmt.data.dataset import Normalizer
from cmt.device import autocast
from cmt.evaluate import rollout
from cmt.experiment import initial_prompt, load_data
from cmt.methods import backbone_config
from cmt.models.policy import SequencePolicy
from cmt.train.pretrain import make_sampler, pretrain_loss

OUT = Path(__file__).parent / "results" / "throughput.json"


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak(repeats: int) -> dict[str, float]:
    """Best GFLOP/s of square matmuls, fp32 and bf16, at sizes where the CPU is compute-bound."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            best = max(best, 2 * n**3 / timeit(lambda: a @ b, repeats) / 1e9)  # noqa: B023
        out[name] = round(best, 1)
    return out


def machine() -> dict[str, str | int]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def pretrain_throughput(
    params: Params, data, backbone: str, batch_size: int, bf16: bool, repeats: int
) -> dict[str, float]:
    """Samples/s of the real training step: sampling, forward, backward, AdamW."""
    ds = data.train
    norm = Normalizer.fit(ds.data, ds.ep_return)
    mcfg = backbone_config(params.model, backbone)
    pcfg = params.pretrain
    model = SequencePolicy(mcfg, ds.data.obs_dim, ds.data.act_dim).train()
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-4)
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    rng = np.random.default_rng(0)
    device = torch.device("cpu")

    def step() -> None:
        batch = sampler.sample(batch_size, rng)
        with autocast(device, bf16):
            loss, _ = pretrain_loss(model, batch, pcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batch = sampler.sample(batch_size, rng)
    with FlopCounterMode(display=False) as counter:
        loss, _ = pretrain_loss(model, batch, pcfg)
        loss.backward()
    flops = counter.get_total_flops() / batch_size
    seconds = timeit(step, repeats)
    return {
        "batch_size": batch_size,
        "bf16": bf16,
        "samples_per_s": round(batch_size / seconds, 1),
        "mflop_per_sample": round(flops / 1e6, 1),
        "achieved_gflops": round(flops * batch_size / seconds / 1e9, 1),
        "tokens_per_sample": (mcfg.prompt_len if mcfg.prompt == "encoder" else 0)
        + mcfg.context_len * (3 if mcfg.condition_on_rtg else 2),
        "params": model.num_params(),
    }


def sampler_speed(params: Params, data, batch_size: int, repeats: int) -> dict[str, float]:
    """The vectorised batch builder against gathering the same segments one sample at a time."""
    ds = data.train
    norm = Normalizer.fit(ds.data, ds.ep_return)
    mcfg = backbone_config(params.model, "cmt")
    sampler = make_sampler(ds, norm, mcfg, params.pretrain)
    rng = np.random.default_rng(0)
    K = mcfg.context_len

    def per_sample() -> None:
        # What public DT code does: a Python loop building each segment and padding it.
        for _ in range(batch_size):
            start = int(rng.integers(len(ds)))
            ep = ds.episode_of[start]
            end = ds.ep_start[ep] + ds.ep_len[ep]
            rows = np.arange(start, min(start + K, end))
            pad = K - len(rows)
            s = norm.states(ds.data.observations[rows])
            np.concatenate([s, np.zeros((pad, s.shape[1]))])
            np.concatenate([ds.data.actions[rows], np.zeros((pad, ds.data.act_dim))])
            np.concatenate([ds.rtg[rows], np.zeros(pad)])
            ctx = rng.integers(ds.ep_start[ep], end, size=mcfg.context_size)
            ds.data.observations[ctx]

    vec = timeit(lambda: sampler.sample(batch_size, rng), repeats)
    loop = timeit(per_sample, max(3, repeats // 3))
    return {
        "batch_size": batch_size,
        "vectorised_us_per_sample": round(vec / batch_size * 1e6, 2),
        "loop_us_per_sample": round(loop / batch_size * 1e6, 2),
        "speedup": round(loop / vec, 1),
    }


def eval_speed(params: Params, data, episodes_per_task: int, repeats: int) -> dict[str, float]:
    """Environment steps/s: all episodes in one batch vs one episode at a time (batch 1)."""
    norm = Normalizer.fit(data.train.data, data.train.ep_return)
    mcfg = backbone_config(params.model, "cmt")
    model = SequencePolicy(mcfg, data.train.data.obs_dim, data.train.data.act_dim).eval()
    family = make_benchmark(params.data)
    tasks = np.repeat(np.array(family.eval_tasks), episodes_per_task)
    prompt = initial_prompt(model, norm, data.demos, 0)
    n = len(tasks)
    batched = timeit(
        lambda: rollout(
            model, norm, family.make_batched_env(tasks), family.horizon, 0, prompt.expand(n, -1, -1)
        ),
        repeats,
        warmup=1,
    )

    def one_at_a_time() -> None:
        for t in tasks:
            rollout(
                model, norm, family.make_batched_env(np.array([t])), family.horizon, 0, prompt[None]
            )

    single = timeit(one_at_a_time, max(1, repeats // 3), warmup=0)
    steps = n * family.horizon
    return {
        "episodes": n,
        "horizon": family.horizon,
        "batched_steps_per_s": round(steps / batched, 1),
        "one_episode_steps_per_s": round(steps / single, 1),
        "speedup": round(single / batched, 1),
        "batched_bf16": params.evaluate.bf16,
        "one_episode_bf16": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke check)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    params = parse_params({})  # the default size: 3 layers x 128 wide, K = 20
    with tempfile.TemporaryDirectory() as tmp:
        make_benchmark(params.data).build_datasets(Path(tmp), progress=False)
        data = load_data(params, tmp)
        peak = matmul_peak(repeats)
        print(f"matmul peak GFLOP/s: {peak}", flush=True)
        pretrain = []
        for backbone in ("cmt", "dt"):
            for bf16 in (False, True):
                for bs in (64, 256):
                    r = {
                        "backbone": backbone,
                        **pretrain_throughput(params, data, backbone, bs, bf16, repeats),
                    }
                    r["fraction_of_peak"] = round(
                        r["achieved_gflops"] / peak["bf16" if bf16 else "fp32"], 3
                    )
                    print(r, flush=True)
                    pretrain.append(r)
        sampling = sampler_speed(params, data, 256, repeats)
        print(sampling, flush=True)
        evaluation = eval_speed(params, data, 10, repeats)
        print(evaluation, flush=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "config": {
            "n_layer": params.model.n_layer,
            "d_model": params.model.d_model,
            "n_head": params.model.n_head,
            "context_len": params.model.context_len,
            "dropout": params.model.dropout,
            "context_size": params.model.context_size,
        },
        "matmul_peak_gflops": peak,
        "pretrain": pretrain,
        "sampler": sampling,
        "evaluation": evaluation,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

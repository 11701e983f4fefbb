"""Throughput benchmark: pretraining samples/s against this machine's own matmul peak,
the batch builder against a per-sample loop, and batched evaluation against the
one-episode-at-a-time loop of public Decision Transformer code.

    python perf/throughput.py            # writes perf/results/throughput.json
    python perf/throughput.py --quick    # fewer repetitions, for a smoke check
    python perf/throughput.py --decoding-only --preset cheetah_vel
        # evaluation modes only (point robot and cheetah-vel): decoding.json

FLOPs are counted by ``torch.utils.flop_counter`` on the real training step (forward and
backward), not estimated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # perf/, the script's own folder
from torch.utils.flop_counter import FlopCounterMode

from cmt.benchmarks import make_benchmark
from cmt.config import Params, apply_preset, parse_params, preset_names
from cmt.data.dataset import Normalizer
from cmt.device import autocast
from cmt.evaluation.rollout import rollout
from cmt.experiment import initial_prompt, load_data
from cmt.methods import backbone_config
from cmt.models.policy import SequencePolicy
from cmt.train.pretrain import make_sampler, pretrain_loss

OUT = Path(__file__).parent / "results" / "throughput.json"
DECODING_OUT = OUT.with_name("decoding.json")


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
    return {
        "cpu": cpu_name(),
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


# ------------------------------------------------------------------ incremental decoding

EVAL_MODES = ("raw_env", "one_episode", "window_batched", "banded_uncached", "banded_cached")
"""raw_env: the batched env stepped with random actions, no model; one_episode: the window
model one episode at a time at batch 1 (public DT code's loop); window_batched: the window
model, every episode in one batch, the K-step window recomputed each step; banded_uncached:
a banded model recomputing the whole history each step (the exact reference); banded_cached:
the banded model with the rolling key/value cache."""

SLOW_MODES = ("one_episode", "banded_uncached")


def eval_mode(
    raw: dict, mode: str, episodes_per_task: int, repeats: int
) -> dict[str, float | int | str]:
    """Env-steps/s and peak-memory growth of one evaluation mode, in this process.

    Weights are random and states are not normalised: steps/s does not depend on them, and
    every episode lasts the full horizon. Memory: the peak resident set size
    (``resource.getrusage`` maxrss) during the rollouts minus the resident size before them."""
    import resource

    torch.manual_seed(0)
    params = parse_params(raw)
    bench = make_benchmark(params.data)
    spaces = bench.spaces
    tasks = np.repeat(np.array(bench.eval_tasks), episodes_per_task)
    n, horizon = len(tasks), bench.horizon
    base = params.model.model_copy(update={"attention": "window"})
    if mode.startswith("banded"):
        base = params.model.model_copy(update={"attention": "banded"})
    model = SequencePolicy(backbone_config(base, "cmt"), spaces.obs_dim, spaces.act_dim).eval()
    norm = Normalizer.identity(spaces.obs_dim)
    prompt = torch.randn(model.cfg.prompt_len, model.cfg.d_model)
    rng = np.random.default_rng(0)

    def raw_env() -> None:
        env = bench.make_batched_env(tasks)
        env.reset(seed=0)
        for _ in range(horizon):
            env.step(rng.uniform(-1, 1, (n, spaces.act_dim)).astype(np.float32))

    def batched(cache: bool) -> None:
        env = bench.make_batched_env(tasks)
        rollout(model, norm, env, horizon, 0, prompt.expand(n, -1, -1), cache=cache)

    def one_episode() -> None:
        for t in tasks:
            rollout(model, norm, bench.make_batched_env(np.array([t])), horizon, 0, prompt[None])

    fn = {
        "raw_env": raw_env,
        "one_episode": one_episode,
        "window_batched": lambda: batched(True),
        "banded_uncached": lambda: batched(False),
        "banded_cached": lambda: batched(True),
    }[mode]
    rss_before = _rss_kib()
    # The slow loops run thousands of forwards per call: they need no warm-up call of their own.
    for _ in range(0 if mode in SLOW_MODES else 1):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "mode": mode,
        "episodes": n,
        "horizon": horizon,
        "steps_per_s": round(n * horizon / float(np.median(wall)), 1),
        # On a shared machine the wall clock counts other processes' time slices too; with
        # one thread, steps per second of this process's CPU time is what an idle core gives.
        "steps_per_cpu_s": round(n * horizon / float(np.median(cpu)), 1),
        "peak_rss_growth_mib": round(max(0, peak - rss_before) / 1024, 1),
    }


def _rss_kib() -> int:
    """Current resident set size of this process in KiB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * (
        os.sysconf("SC_PAGESIZE") // 1024
    )


def decoding_speed(raw: dict, episodes_per_task: int, repeats: int) -> dict:
    """Every evaluation mode of :data:`EVAL_MODES`, each in a fresh process (so that peak
    memory is its own), then the speed-ups the targets name."""
    ctx = multiprocessing.get_context("spawn")
    modes = {}
    for mode in EVAL_MODES:
        # The slow loops get fewer repetitions; a single spawn per mode keeps peaks apart.
        r = 1 if mode in SLOW_MODES else repeats
        with ctx.Pool(1) as pool:
            modes[mode] = pool.apply(eval_mode, (raw, mode, episodes_per_task, r))
        print(modes[mode], flush=True)
    # Speed-ups from CPU time (see eval_mode); wall-clock rates are in "modes".
    rate = {m: v["steps_per_cpu_s"] for m, v in modes.items()}
    first = modes["raw_env"]
    return {
        "benchmark": parse_params(raw).data.name,
        "episodes": first["episodes"],
        "horizon": first["horizon"],
        "context_len": parse_params(raw).model.context_len,
        "bf16": False,
        "modes": modes,
        "cached_over_one_episode": round(rate["banded_cached"] / rate["one_episode"], 1),
        "cached_over_window_batched": round(rate["banded_cached"] / rate["window_batched"], 1),
        "window_batched_over_one_episode": round(rate["window_batched"] / rate["one_episode"], 1),
        "cached_over_raw_env": round(rate["banded_cached"] / rate["raw_env"], 3),
        "memory": "peak RSS growth during the rollouts (resource.getrusage maxrss minus the "
        "RSS before them), one fresh process per mode",
    }


def eval_benchmarks(presets: list[str], repeats: int) -> list[dict]:
    """Incremental decoding on the embedded default and on ``presets``, 10 episodes per test
    task (50 on the meta-RL families)."""
    raws = [{}, *(apply_preset({}, name) for name in presets)]
    return [decoding_speed(raw, 10, repeats) for raw in raws]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke check)")
    parser.add_argument(
        "--decoding-only",
        action="store_true",
        help=f"only the evaluation modes of incremental decoding, into {DECODING_OUT.name}",
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        choices=preset_names(),
        help="also measure decoding on this preset's benchmark (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    if args.decoding_only:
        # The load average says how shared the machine was while it ran.
        result = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
        result["load_average_before"] = os.getloadavg()[0]
        result["decoding"] = eval_benchmarks(args.preset, repeats)
        result["load_average_after"] = os.getloadavg()[0]
        write_result(args.out or DECODING_OUT, result)
        return
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
        "decoding": eval_benchmarks(args.preset, repeats),
    }
    write_result(args.out or OUT, result)


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

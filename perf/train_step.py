"""Training-step speed against CORL's Decision Transformer, where the step's time goes, and the
memory of pretraining on datasets up to D4RL's size (a million transitions).

    python perf/train_step.py          # writes perf/results/train_step.json
    python perf/train_step.py --quick  # fewer repetitions, smaller data (smoke check)

The compared steps, all at batch 256 on the same data (obs 17, act 6: HalfCheetah's sizes):

- ``corl_dt``: CORL's model and step (perf/corl_dt.py) on pre-built batches, so its
  data loading (a per-sample Python loop in DataLoader workers) is not counted against it;
- ``dt``: this project's Decision Transformer mode (``backbone: dt``), the step of
  :func:`cmt.train.pretrain.train_step` *including* drawing the batch with the sampler;
- ``cmt``: CMT, the same, with the context encoder, the second (contrastive) view and the
  dynamics heads: more work per sample, counted as is (FLOPs per sample are reported).

Variants are interleaved (one timed block of each in turn, repeated) and medians reported,
since the machine may be shared. Memory is measured in fresh subprocesses (peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from corl_dt import CorlDT, corl_step_fn  # noqa: E402
from machine import cpu_name  # noqa: E402

from cmt.config import ModelConfig, PretrainConfig, parse_params  # noqa: E402
from cmt.data.dataset import Normalizer, OfflineDataset  # noqa: E402
from cmt.data.schema import TransitionData  # noqa: E402
from cmt.methods import backbone_config  # noqa: E402
from cmt.models.policy import SequencePolicy  # noqa: E402
from cmt.train.pretrain import (  # noqa: E402
    PretrainObjective,
    make_optimizer,
    make_sampler,
    train_step,
)

OUT = Path(__file__).parent / "results" / "train_step.json"
OBS, ACT, EP_LEN = 17, 6, 1000


def synthetic_dataset(n: int, seed: int = 0, tasks: int = 10) -> OfflineDataset:
    """``n`` transitions in 1000-step episodes (D4RL's layout), random but well scaled."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, OBS), dtype=np.float32)
    ends = np.zeros(n, dtype=bool)
    ends[EP_LEN - 1 :: EP_LEN] = True
    ends[-1] = True
    episode = np.arange(n) // EP_LEN
    return OfflineDataset(
        TransitionData(
            observations=obs[:-1],
            actions=np.tanh(rng.standard_normal((n, ACT), dtype=np.float32)),
            rewards=rng.standard_normal(n, dtype=np.float32),
            terminals=np.zeros(n, dtype=bool),
            timeouts=ends,
            next_observations=obs[1:],
            task_ids=(episode % tasks).astype(np.int64),
        ),
        seed=seed,
    )


def configs(backbone: str, batch_size: int, bf16: bool) -> tuple[ModelConfig, PretrainConfig]:
    params = parse_params({})  # the default size: 3 layers x 128 wide, K = 20
    pcfg = params.pretrain.model_copy(
        update={"batch_size": batch_size, "bf16": bf16, "device": "cpu"}
    )
    return backbone_config(params.model, backbone), pcfg


def project_step(
    ds: OfflineDataset, backbone: str, batch_size: int, bf16: bool, device: torch.device
) -> tuple[Callable[[], None], SequencePolicy, Callable]:
    """This project's full step (sample, forward, backward, clip, AdamW, schedule)."""
    mcfg, pcfg = configs(backbone, batch_size, bf16)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    model = SequencePolicy(mcfg, OBS, ACT).to(device).train()
    opt, sched = make_optimizer(model, pcfg, device)
    objective = PretrainObjective(model, pcfg)
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    rng = np.random.default_rng(0)

    def step() -> None:
        train_step(objective, opt, sched, sampler.sample(batch_size, rng).to(device), pcfg, device)

    def sample():
        return sampler.sample(batch_size, rng).to(device)

    return step, model, sample


def corl_step(
    ds: OfflineDataset, batch_size: int, device: torch.device, n_batches: int = 8
) -> tuple[Callable[[], None], CorlDT, list]:
    """CORL's step, cycling over pre-built batches (drawn by our sampler: same segments)."""
    mcfg, pcfg = configs("dt", batch_size, False)
    sampler = make_sampler(ds, Normalizer.fit(ds.data, ds.ep_return), mcfg, pcfg)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n_batches):
        b = sampler.sample(batch_size, rng).to(device)
        batches.append((b.states, b.actions, b.rtg, b.timesteps, b.mask))
    model = CorlDT(OBS, ACT, mcfg.context_len).to(device).train()
    fn = corl_step_fn(model)
    i = iter(range(1 << 62))

    def step() -> None:
        fn(*batches[next(i) % n_batches])

    return step, model, batches


def interleaved(steps: dict[str, Callable[[], None]], reps: int, block: int) -> dict[str, dict]:
    """Seconds per step: median (and spread) over ``reps`` rounds of ``block`` steps each."""
    for fn in steps.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            t = time.perf_counter()
            for _ in range(block):
                fn()
            times[name].append((time.perf_counter() - t) / block)
    return {
        k: {"median_s": float(np.median(v)), "min_s": min(v), "max_s": max(v)}
        for k, v in times.items()
    }


def flops_per_sample(fn: Callable[[], None], batch_size: int) -> float:
    """Forward + backward FLOPs of one step, counted by torch (matmuls and attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch_size


def phases(ds, backbone: str, batch_size: int, repeats: int) -> dict[str, float]:
    """Milliseconds per step spent in each phase of this project's step (medians)."""
    device = torch.device("cpu")
    mcfg, pcfg = configs(backbone, batch_size, False)
    _, model, sample = project_step(ds, backbone, batch_size, False, device)
    opt, sched = make_optimizer(model, pcfg, device)
    objective = PretrainObjective(model, pcfg)
    out: dict[str, list[float]] = {k: [] for k in ("sample", "forward", "backward", "optimizer")}
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        batch = sample()
        t1 = time.perf_counter()
        loss, _ = objective(batch)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), pcfg.grad_clip)
        opt.step()
        sched.step()
        t4 = time.perf_counter()
        if i >= 2:
            for k, a, b in (("sample", t0, t1), ("forward", t1, t2), ("backward", t2, t3)):
                out[k].append(b - a)
            out["optimizer"].append(t4 - t3)
    return {k: round(float(np.median(v)) * 1e3, 2) for k, v in out.items()}


def op_table(fn: Callable[[], None], steps: int, rows: int = 12) -> list[dict]:
    """The ops that take most of the step's own CPU time (torch.profiler)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_ms_per_step": round(e.self_cpu_time_total / steps / 1e3, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls_per_step": e.count // steps,
        }
        for e in events[:rows]
    ]


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n: int, backbone: str, batch_size: int, steps: int) -> dict[str, float]:
    """Peak memory of pretraining on ``n`` synthetic transitions (run in a fresh process)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    base = rss_mb("VmRSS")
    ds = synthetic_dataset(n)
    data_mb = (
        sum(
            a.nbytes
            for a in (
                ds.data.observations,
                ds.data.next_observations,
                ds.data.actions,
                ds.data.rewards,
            )
        )
        / 2**20
    )
    after_data = rss_mb("VmRSS")
    step, _, sample = project_step(ds, backbone, batch_size, False, torch.device("cpu"))
    step()
    # What building one batch allocates (NumPy reports its buffers to tracemalloc): the same
    # at any dataset size if batches are gathered, not copied from the whole dataset.
    tracemalloc.start()
    sample()
    batch_alloc = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    before = rss_mb("VmRSS")
    for _ in range(steps):
        step()
    return {
        "batch_build_peak_alloc_mb": round(batch_alloc, 2),
        "transitions": n,
        "dataset_arrays_mb": round(data_mb, 1),
        "rss_after_dataset_mb": round(after_data - base, 1),
        "rss_before_steps_mb": round(before - base, 1),
        "peak_rss_mb": round(rss_mb("VmHWM") - base, 1),
        "rss_growth_over_steps_mb": round(rss_mb("VmRSS") - before, 1),
    }


def memory(sizes: list[int], batch_size: int, steps: int) -> dict:
    """Per dataset size, in a fresh process each; plus what each extra transition costs."""
    out = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--batch-size", str(batch_size)]
        cmd += ["--steps", str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(out[-1], flush=True)
    a, b = out[0], out[-1]
    per = (
        (b["rss_before_steps_mb"] - a["rss_before_steps_mb"])
        * 2**20
        / (b["transitions"] - a["transitions"])
    )
    return {
        "backbone": "cmt",
        "batch_size": batch_size,
        "what": "RSS in MB above the interpreter's, fresh process per size; peak = VmHWM",
        "sizes": out,
        "bytes_held_per_transition": round(per),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke check)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, "cmt", args.batch_size, args.steps)))
        return
    reps, block = (3, 2) if args.quick else (9, 4)
    B = args.batch_size
    device = torch.device("cpu")
    torch.manual_seed(0)
    ds = synthetic_dataset(50_000 if args.quick else 200_000)
    steps = {
        "corl_dt": corl_step(ds, B, device)[0],
        "dt": project_step(ds, "dt", B, False, device)[0],
        "cmt": project_step(ds, "cmt", B, False, device)[0],
    }
    flops = {k: round(flops_per_sample(fn, B) / 1e6, 1) for k, fn in steps.items()}
    print("MFLOP/sample", flops, flush=True)
    loadavg_before = os.getloadavg()
    timed = interleaved(steps, reps, block)
    loadavg_after = os.getloadavg()
    speed = {
        k: {
            "samples_per_s": round(B / v["median_s"], 1),
            "ms_per_step": round(v["median_s"] * 1e3, 2),
            "ms_range": [round(v["min_s"] * 1e3, 2), round(v["max_s"] * 1e3, 2)],
            "mflop_per_sample": flops[k],
        }
        for k, v in timed.items()
    }
    for k in ("dt", "cmt"):
        speed[k]["vs_corl"] = round(
            speed[k]["samples_per_s"] / speed["corl_dt"]["samples_per_s"], 2
        )
    print(json.dumps(speed, indent=1), flush=True)
    profiles = {k: op_table(steps[k], 2 if args.quick else 5) for k in ("corl_dt", "dt", "cmt")}
    phase = {k: phases(ds, k, B, 3 if args.quick else 10) for k in ("dt", "cmt")}
    print("phases (ms):", phase, flush=True)
    mem = memory(
        [50_000, 200_000] if args.quick else [100_000, 1_000_000], B, 3 if args.quick else 10
    )
    result = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "load": f"load average {loadavg_before[0]:.1f} before and {loadavg_after[0]:.1f} "
            "after the timing (above about 1, other work shared the cores)",
        },
        "date": time.strftime("%Y-%m-%d"),
        "precision": "fp32 (this CPU has no native bf16)"
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else "fp32",
        "batch_size": B,
        "data": {"obs_dim": OBS, "act_dim": ACT, "transitions": len(ds), "episode_len": EP_LEN},
        "timing": {"rounds": reps, "steps_per_round": block, "statistic": "median over rounds"},
        "speed": speed,
        "phases_ms": phase,
        "profile_top_ops": profiles,
        "memory": mem,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""GPU pretraining, measured: samples/s, the fraction of the device's bf16 peak and peak memory,
at the default model size and at a model about 10x larger, with and without fused AdamW and
``torch.compile`` (its ``reduce-overhead`` mode captures CUDA graphs).

    python perf/gpu_pretrain.py --out perf/results/gpu_pretrain.json
    python perf/gpu_pretrain.py --device cpu --quick --out /tmp/x.json  # smoke check

Every configuration is timed twice: the full step as :func:`cmt.train.pretrain.pretrain` runs
it (batch drawn on the CPU, copied, then forward, backward, clip, AdamW) and the step alone on
batches already on the device, which shows how much the CPU-side sampler costs. The JSON is
rewritten after every configuration, so a run cut short keeps what it measured. FLOPs are
counted by ``torch.utils.flop_counter`` on the real step; CORL's Decision Transformer
(perf/corl_dt.py) is timed on the same device for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from corl_dt import CorlDT, corl_step_fn  # noqa: E402
from train_step import ACT, OBS, synthetic_dataset  # noqa: E402

from cmt.config import ModelConfig, parse_params  # noqa: E402
from cmt.data.dataset import Normalizer  # noqa: E402
from cmt.methods import backbone_config  # noqa: E402
from cmt.models.policy import SequencePolicy  # noqa: E402
from cmt.train.pretrain import (  # noqa: E402
    GraphedStep,
    PretrainObjective,
    lr_factor,
    make_optimizer,
    make_sampler,
    train_step,
)

# NVIDIA's dense bf16 tensor-core peak of the H100 SXM (the measured matmul peak is also given).
NOMINAL_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}
SIZES = {
    "default": {},  # 3 layers x 128, 1 head
    "10x": {"n_layer": 6, "d_model": 352, "n_head": 4},  # 10.8x the parameters
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, reps: int, block: int) -> list[float]:
    """Seconds per step of ``reps`` blocks of ``block`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(block):
            fn()
        sync(device)
        out.append((time.perf_counter() - t) / block)
    return out


def matmul_peak_tflops(device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = min(timed(lambda: a @ b, device, 3, 5, 5))
    return 2 * n**3 / best / 1e12


def model_config(size: str, backbone: str = "cmt") -> ModelConfig:
    base = parse_params({}).model
    return backbone_config(
        ModelConfig.model_validate({**base.model_dump(), **SIZES[size]}), backbone
    )


def measure(cfg: dict, ds, norm, device, reps: int, block: int) -> dict:
    """One configuration: samples/s with and without CPU sampling, FLOPs, peak memory."""
    B = cfg["batch_size"]
    mcfg = model_config(cfg["size"], cfg.get("backbone", "cmt"))
    pcfg = parse_params({}).pretrain.model_copy(update={"batch_size": B, "bf16": cfg["bf16"]})
    torch.manual_seed(0)
    model = SequencePolicy(mcfg, OBS, ACT).to(device).train()
    graphed = cfg.get("graph", False)
    if cfg["fused"]:
        opt, sched = make_optimizer(model, pcfg, device, capturable=graphed)
    else:  # the multi-tensor ("foreach") AdamW instead of the fused kernel
        opt = torch.optim.AdamW(
            model.optimizer_groups(pcfg.weight_decay), lr=pcfg.lr, betas=(0.9, 0.95), foreach=True
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, pcfg))
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    rng = np.random.default_rng(0)
    objective = PretrainObjective(model, pcfg)
    flops = 0.0
    with FlopCounterMode(display=False) as counter:
        train_step(objective, opt, sched, sampler.sample(B, rng).to(device), pcfg, device)
    flops = counter.get_total_flops()
    if cfg["compile"]:
        model.compile(mode=cfg["compile"])
    batches = [sampler.sample(B, rng).to(device) for _ in range(8)]
    i = iter(range(1 << 62))
    if device.type == "cuda":  # before the capture: a graph's memory is allocated then
        torch.cuda.reset_peak_memory_stats()
    if graphed:
        graph = GraphedStep(objective, opt, pcfg, sampler.sample(B, rng).to(device))

        def on_device() -> None:
            graph(batches[next(i) % 8])
            sched.step()

        def full() -> None:
            graph(sampler.sample(B, rng))  # copied from host memory into the graph's inputs
            sched.step()

    else:

        def on_device() -> None:
            train_step(objective, opt, sched, batches[next(i) % 8], pcfg, device)

        def full() -> None:
            train_step(objective, opt, sched, sampler.sample(B, rng).to(device), pcfg, device)

    t0 = time.perf_counter()
    on_device()  # compiles, if asked
    sync(device)
    first = time.perf_counter() - t0
    warm = 10 if cfg["compile"] else 3
    dev_t = timed(on_device, device, warm, reps, block)
    full_t = timed(full, device, 2, reps, block)
    sample_t = timed(lambda: sampler.sample(B, rng), torch.device("cpu"), 1, reps, block)
    med = float(np.median(dev_t))
    return {
        "backbone": "cmt",
        **cfg,
        "params": model.num_params(),
        "samples_per_s_on_device_batches": round(B / med, 1),
        "samples_per_s_full_step": round(B / float(np.median(full_t)), 1),
        "ms_per_step": round(med * 1e3, 3),
        "sampler_ms_per_batch": round(float(np.median(sample_t)) * 1e3, 3),
        "first_step_s": round(first, 2),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_tflops": round(flops / med / 1e12, 2),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device.type == "cuda"
        else None,
    }


def measure_corl(bf16: bool, ds, norm, device, reps: int, block: int, B: int) -> dict:
    mcfg = model_config("default")
    sampler = make_sampler(ds, norm, backbone_config(mcfg, "dt"), parse_params({}).pretrain)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(8):
        b = sampler.sample(B, rng).to(device)
        batches.append((b.states, b.actions, b.rtg, b.timesteps, b.mask))
    torch.manual_seed(0)
    model = CorlDT(OBS, ACT, mcfg.context_len).to(device).train()
    fn = corl_step_fn(model)
    i = iter(range(1 << 62))

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            fn(*batches[next(i) % 8])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    med = float(np.median(timed(step, device, 3, reps, block)))
    return {
        "model": "corl_dt",
        "size": "default",
        "batch_size": B,
        "bf16": bf16,
        "samples_per_s_on_device_batches": round(B / med, 1),
        "ms_per_step": round(med * 1e3, 3),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device.type == "cuda"
        else None,
    }


def graph_matches_eager(ds, norm, device, bf16: bool, steps: int = 20) -> dict:
    """The replayed graph computes the eager step: the same weights after ``steps`` steps on
    the same batches (dropout off, since the two draw different random numbers)."""
    mcfg = model_config("default").model_copy(update={"dropout": 0.0})
    pcfg = parse_params({}).pretrain.model_copy(update={"batch_size": 64, "bf16": bf16})
    sampler = make_sampler(ds, norm, mcfg, pcfg)
    rng = np.random.default_rng(1)
    batches = [sampler.sample(64, rng) for _ in range(steps)]
    finals, losses = [], []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = SequencePolicy(mcfg, OBS, ACT).to(device).train()
        opt, sched = make_optimizer(model, pcfg, device, capturable=graphed)
        objective = PretrainObjective(model, pcfg)
        graph = GraphedStep(objective, opt, pcfg, batches[0].to(device)) if graphed else None
        trace = []
        for b in batches:
            if graph is not None:
                terms, _ = graph(b)
                sched.step()
            else:
                terms, _ = train_step(objective, opt, sched, b.to(device), pcfg, device)
            trace.append(float(terms["total"]))
        finals.append(torch.cat([p.detach().float().flatten() for p in model.parameters()]))
        losses.append(trace)
    return {
        "bf16": bf16,
        "steps": steps,
        "max_abs_weight_diff": float((finals[0] - finals[1]).abs().max()),
        "max_abs_loss_diff": float(np.abs(np.array(losses[0]) - np.array(losses[1])).max()),
        "final_loss_eager": losses[0][-1],
        "final_loss_graph": losses[1][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke check)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=330, help="start no config after this")
    parser.add_argument(
        "--plan",
        default="variants",
        choices=["variants", "graphs"],
        help="variants: precision, fused AdamW, compile; graphs: whole-step CUDA graphs",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    reps, block = (2, 2) if args.quick else (5, 10)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result: dict = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model_sizes": SIZES,
        "timing": f"median of {reps} blocks of {block} steps",
        "plan": args.plan,
        "runs": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if device.type == "cuda":
        peak = matmul_peak_tflops(device, 8192)
        nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
        result["bf16_matmul_peak_tflops_measured"] = round(peak, 1)
        result["bf16_peak_tflops_nominal"] = nominal
        save()
    ds = synthetic_dataset(20_000 if args.quick else 200_000)
    norm = Normalizer.fit(ds.data, ds.ep_return)
    B = 32 if args.quick else 256
    plan = [
        {"size": "default", "batch_size": B, "bf16": True, "fused": True, "compile": None},
        {"size": "default", "batch_size": B, "bf16": False, "fused": True, "compile": None},
        {"size": "default", "batch_size": B, "bf16": True, "fused": False, "compile": None},
        "corl",
        {
            "size": "default",
            "batch_size": B,
            "bf16": True,
            "fused": True,
            "compile": None,
            "backbone": "dt",
        },
        {"size": "10x", "batch_size": B, "bf16": True, "fused": True, "compile": None},
        {"size": "10x", "batch_size": B, "bf16": True, "fused": False, "compile": None},
        {"size": "default", "batch_size": B, "bf16": True, "fused": True, "compile": "default"},
        {"size": "10x", "batch_size": B, "bf16": True, "fused": True, "compile": "default"},
        {
            "size": "default",
            "batch_size": B,
            "bf16": True,
            "fused": True,
            "compile": "reduce-overhead",
        },
        {"size": "10x", "batch_size": B, "bf16": True, "fused": True, "compile": "reduce-overhead"},
        {"size": "default", "batch_size": 8 * B, "bf16": True, "fused": True, "compile": None},
        {"size": "10x", "batch_size": 8 * B, "bf16": True, "fused": True, "compile": None},
    ]
    if args.plan == "graphs":
        g = {"bf16": True, "fused": True, "compile": None, "graph": True}
        e = {"bf16": True, "fused": True, "compile": None}
        plan = [
            "check",
            "corl",
            {"size": "default", "batch_size": B, **e},
            {"size": "default", "batch_size": B, **g},
            {"size": "default", "batch_size": B, **e, "bf16": False},
            {"size": "default", "batch_size": B, **g, "bf16": False},
            {"size": "default", "batch_size": B, **e, "backbone": "dt"},
            {"size": "default", "batch_size": B, **g, "backbone": "dt"},
            {"size": "default", "batch_size": B, **g, "backbone": "dt", "bf16": False},
            {"size": "10x", "batch_size": B, **e},
            {"size": "10x", "batch_size": B, **g},
            {"size": "default", "batch_size": 8 * B, **g},
            {"size": "10x", "batch_size": 8 * B, **e},
            {"size": "10x", "batch_size": 8 * B, **g},
        ]
    if args.quick:
        plan = [p for p in plan if isinstance(p, dict) and not p["compile"]][:3] + ["corl"]
    for cfg in plan:
        if time.perf_counter() - start > args.budget_s:
            result["stopped"] = (
                f"time budget of {args.budget_s:.0f} s reached; later configs skipped"
            )
            break
        try:
            if cfg == "check":
                result["graph_check"] = [
                    graph_matches_eager(ds, norm, device, bf) for bf in (False, True)
                ]
                print(json.dumps(result["graph_check"]), flush=True)
                runs = []
            elif cfg == "corl":
                # bf16 only where it is native (emulated on a CPU it is 10x slower).
                precisions = (False, True) if device.type == "cuda" else (False,)
                runs = [measure_corl(bf, ds, norm, device, reps, block, B) for bf in precisions]
            else:
                runs = [measure(cfg, ds, norm, device, reps, block)]
        except Exception as err:  # record and go on: one failing variant must not lose the rest
            runs = [{"config": cfg, "error": f"{type(err).__name__}: {err}"}]
            traceback.print_exc()
        for r in runs:
            peak = result.get("bf16_matmul_peak_tflops_measured")
            if peak and "achieved_tflops" in r:
                r["fraction_of_measured_bf16_peak"] = round(r["achieved_tflops"] / peak, 4)
                if result.get("bf16_peak_tflops_nominal"):
                    nominal = result["bf16_peak_tflops_nominal"]
                    r["fraction_of_nominal_bf16_peak"] = round(r["achieved_tflops"] / nominal, 4)
            print(json.dumps(r), flush=True)
            result["runs"].append(r)
        save()
    result["wall_s"] = round(time.perf_counter() - start, 1)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

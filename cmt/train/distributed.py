"""Data-parallel pretraining across processes started by ``torchrun`` (docs/scale.md).

One process per device: each draws its own share of the batch with its own sampler seed,
``DistributedDataParallel`` averages the gradients, so every rank applies the same update and
the weights stay identical. Rank 0 alone writes checkpoints and logs metrics; checkpoints hold
the plain policy's ``state_dict`` (no ``module.`` prefix), so they load in a single process.
gloo is the backend on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank 0 of 1 when not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether we created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """Processes in the job according to torchrun's environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank according to torchrun's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup(enabled: bool, device_type: str) -> Dist:
    """Join the torchrun job if ``enabled``; refuse a multi-process launch that is not.

    Several processes that each trained alone would race to write the same checkpoint, so
    running under ``torchrun`` with more than one process requires ``pretrain.distributed``.
    """
    world = launched_world_size()
    if not enabled:
        if world > 1:
            raise RuntimeError(
                f"launched by torchrun with WORLD_SIZE={world} but pretrain.distributed is "
                "false: set pretrain.distributed=true (docs/scale.md)"
            )
        return Dist()
    if "RANK" not in os.environ:
        raise RuntimeError(
            "pretrain.distributed=true needs the environment of torchrun (RANK, WORLD_SIZE, "
            "MASTER_ADDR, ...): launch with `torchrun --nproc_per_node N ...` (docs/scale.md)"
        )
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owns_group=owns,
    )


def device_for(d: Dist, device: torch.device) -> torch.device:
    """One CUDA device per local rank; the CPU is shared."""
    if device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def mean_across(d: Dist, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks (each rank's loss is on its own share of the batch).
    ``device`` is the training device: NCCL reduces CUDA tensors only."""
    if d.world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float32, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world).tolist(), strict=True))


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.owns_group:
        dist.destroy_process_group()

"""DistributedDataParallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

Without those variables everything here is a no-op single process. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, outputs and MLflow records."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Is this process one of several that torchrun started?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes, and the device this process computes on:
    on CUDA its own GPU (torchrun's LOCAL_RANK), made current before the group starts and bound
    to it (`device_id`), so NCCL's communicator and any stray allocation land there, not on
    cuda:0; CPU processes share the CPU. A single process (no torchrun) gets `device` back."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

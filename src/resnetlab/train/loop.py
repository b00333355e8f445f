"""One epoch of training over device-resident tensors (`train_epoch`), and the batches it draws.
No file I/O, no MLflow; `train.trainer` drives it epoch by epoch.

The whole split lives on the device as uint8; each step indexes a batch, augments it there
(`data.augment`) and runs the model. On CUDA (`augment_once`) the epoch's batches are augmented
in a few batched passes before its first step instead, and a step is the model's launches alone,
which a compiled model replays from CUDA graphs (`cuda_graphs`). Per-step host synchronisation
is avoided: losses and accuracies accumulate on the device and are read every `sync_every` steps
(progress, non-finite check) and at the end of the epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.core.config import TrainConfig
from resnetlab.core.device import autocast
from resnetlab.core.errors import ResnetlabError
from resnetlab.data.augment import augment_batch, augment_epoch

if TYPE_CHECKING:
    from resnetlab.train.schedule import WeightAverage


class NonFiniteLossError(ResnetlabError):
    def __init__(self, step: int, value: float):
        self.step = step
        self.value = value
        super().__init__(f"loss became {value} at step {step}")


@dataclass
class EpochStats:
    loss: float  # mean cross-entropy over the epoch's training images (with label smoothing)
    accuracy: float  # on the augmented training images
    images: int  # images processed by this process
    seconds: float
    lr: float  # learning rate of the epoch's last step

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class Shard:
    """Which part of every global batch this process computes (DistributedDataParallel)."""

    rank: int = 0
    world: int = 1


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    world: int,
    drop_last: bool = False,
):
    """Shuffled index batches over `n` items. A final batch too small to give every process an
    image is dropped; otherwise the last partial batch is kept, unless `drop_last`."""
    perm = torch.randperm(n, generator=generator, device=device)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) >= world and not (drop_last and len(idx) < batch_size):
            yield idx


def steps_per_epoch(n: int, batch_size: int, world: int, drop_last: bool = False) -> int:
    full, rest = divmod(n, batch_size)
    return full + (not drop_last and rest >= world and rest > 0)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: WeightAverage | None = None,
    shard: Shard | None = None,
    sync_every: int = 50,
    on_progress: Callable[[int, int, float, float], None] | None = None,
    mirror: torch.Tensor | None = None,
    drop_last: bool = False,
    augment_once: bool = False,
    cuda_graphs: bool = False,
) -> EpochStats:
    """One pass over `images` (uint8 NHWC on the device) in shuffled global batches.

    Each process takes every `world`-th image of a global batch; the loss is scaled by
    world / global_batch so that DDP's gradient average equals the gradient of the global batch's
    mean loss, even for a last batch that does not split evenly. `on_progress(step, steps, loss,
    accuracy)` is called every `sync_every` steps. `mirror` (boolean, one per image of
    `images`) says which images `flip: alternate` mirrors this epoch. `drop_last` skips the last
    partial batch (every step the same shape). `augment_once` augments the epoch's batches
    before its first step (`data.augment.augment_epoch`: the same batches, other random views);
    `cuda_graphs` marks each step's start for a model compiled to CUDA graphs. Raises
    NonFiniteLossError.
    """
    shard = shard or Shard()
    device = images.device
    model.train()
    total_steps = steps_per_epoch(len(images), cfg.batch_size, shard.world, drop_last)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # 1-based step, -1 = none
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    # Drawn before any augmentation, as the steps' draws always followed the order's.
    order = list(batches(len(images), cfg.batch_size, generator, device, shard.world, drop_last))
    views = None
    if augment_once and order:
        views = augment_epoch(images, order, cfg.augment, normalize, generator, mirror)
    # A new step for the CUDA graphs: they may reuse the previous step's outputs' memory (this
    # loop has consumed them). torch before 2.1 has no marker and infers steps itself.
    compiler = getattr(torch, "compiler", None) if cuda_graphs else None
    mark_step = getattr(compiler, "cudagraph_mark_step_begin", None)
    offset = 0
    for step, idx in enumerate(order):
        local = idx[shard.rank :: shard.world]
        # Augment the whole global batch, then keep this process's part, so the random draws
        # are identical on every process and to a single-process run.
        if views is None:
            flips = None if mirror is None else mirror[idx]
            x = augment_batch(images[idx], cfg.augment, normalize, generator, flips)
        else:
            x = views[offset : offset + len(idx)]
        offset += len(idx)
        x = x[shard.rank :: shard.world]
        y = labels[local]
        if mark_step is not None:
            mark_step()
        with autocast(device, amp_dtype):
            logits = model(x)
            loss_items = F.cross_entropy(
                logits.float(), y, reduction="sum", label_smoothing=cfg.label_smoothing
            )
        loss = loss_items * (shard.world / len(idx))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used, before the update
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss_items.detach()
        # Recorded on the device, read at the next sync: the error names the exact step.
        bad_now = (first_bad < 0) & ~torch.isfinite(loss_items.detach())
        first_bad = torch.where(bad_now, step + 1, first_bad)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        last = step + 1 == total_steps
        if (step + 1) % sync_every == 0 or last:
            value = loss_sum.item()  # one host sync per window
            if not math.isfinite(value):
                raise NonFiniteLossError(int(first_bad.item()), value)
            if on_progress is not None:
                on_progress(step + 1, total_steps, value / seen, correct.item() / seen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=loss_sum.item() / max(seen, 1),
        accuracy=correct.item() / max(seen, 1),
        images=seen,
        seconds=seconds,
        lr=lr,
    )

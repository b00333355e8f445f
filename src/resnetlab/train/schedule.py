"""The optimiser, the learning-rate schedule as a pure function of the step (`lr_factor`), and the
weights' exponential moving average.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from resnetlab.core.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
    )


def milestone_epochs(cfg: TrainConfig) -> list[int]:
    """`cfg.milestones` as epoch numbers: fractions of `epochs` rounded to the nearest epoch."""
    return sorted(round(m * cfg.epochs) if m < 1 else int(m) for m in cfg.milestones)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate at optimiser step `step` (0-based) as a multiple of `cfg.lr`.

    Warm-up ramps linearly from `warmup_lr` to `lr` over `warmup_epochs`; the schedule then runs
    on whole epochs (multistep, step) or on the remaining steps (cosine, linear, onecycle).
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        start = cfg.warmup_lr / cfg.lr
        return start + (1.0 - start) * step / warmup
    epoch = step // steps_per_epoch
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in milestone_epochs(cfg))
    if cfg.schedule == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    t = (step - warmup) / max(1, total - warmup)  # progress through the post-warm-up steps
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        # Straight to 0 at the end of the run: under a fixed budget of steps, linear decay matched
        # or beat cosine and step decay in Li et al. 2020 ("Budgeted training", CIFAR-10 included).
        return 1.0 - t
    if cfg.schedule == "onecycle":
        # Smith & Topin: linear rise from lr/25 to lr over 30% of training, cosine decay to ~0.
        if t < 0.3:
            return 0.04 + 0.96 * t / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7))
    return 1.0  # constant


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state (the step count) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch)
    )


class WeightAverage(nn.Module):
    """Exponential moving average of a model's floating-point weights and buffers, updated every
    step with one fused `lerp` on their device (torch's AveragedModel with its EMA function
    computes the same floats, but copies its CPU step counter to the GPU for each group of
    tensors, a host synchronisation each, twice a step). Integer buffers (BatchNorm's
    `num_batches_tracked`) follow the model's. The first update copies the model. Its state
    dict has AveragedModel's keys (`module.*`, `n_averaged`), so checkpoints move between the
    two."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        import copy

        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        # On the CPU and read only there: the first update copies instead of averaging.
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if int(self.n_averaged) == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            pairs = list(zip(mine, theirs, strict=True))
            floats = [pair for pair in pairs if pair[0].is_floating_point()]
            others = [pair for pair in pairs if not pair[0].is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - self.decay)
            if others:
                torch._foreach_copy_([a for a, _ in others], [b for _, b in others])
        self.n_averaged += 1


def build_ema(model: nn.Module, decay: float) -> WeightAverage | None:
    """Exponential moving average of weights and BatchNorm buffers, updated every step."""
    if not decay:
        return None
    return WeightAverage(model, decay)

"""The learning rate at chosen steps of each schedule, computed by hand."""

from __future__ import annotations

import math

import pytest

from resnetlab.core.config import TrainConfig
from resnetlab.train.schedule import lr_factor

STEPS = 10  # optimiser steps per epoch


def at(step: int, **cfg) -> float:
    return lr_factor(step, TrainConfig(**{"epochs": 10, **cfg}), STEPS)


def test_warm_up_ramps_linearly_from_warmup_lr_to_lr():
    # 2 epochs of warm-up = 20 steps from 0.01/0.1 = 0.1 of lr to 1.0.
    cfg = {"schedule": "linear", "lr": 0.1, "warmup_lr": 0.01, "warmup_epochs": 2}
    assert at(0, **cfg) == pytest.approx(0.1)
    assert at(10, **cfg) == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert at(20, **cfg) == pytest.approx(1.0)  # the first step after it: the full lr


def test_linear_decays_to_zero_over_the_steps_after_the_warm_up():
    cfg = {"schedule": "linear", "warmup_epochs": 2}
    # 80 steps follow the warm-up; step 20 + k is k/80 of the way down.
    assert at(60, **cfg) == pytest.approx(0.5)
    assert at(99, **cfg) == pytest.approx(1 / 80)  # the last step: one step above 0
    assert at(50, schedule="linear") == pytest.approx(0.5)  # no warm-up: from step 0


def test_cosine_and_onecycle():
    assert at(50, schedule="cosine") == pytest.approx(0.5)
    assert at(25, schedule="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # onecycle: from 1/25 of lr up to lr over 30% of the steps, then a half cosine to 0.
    assert at(0, schedule="onecycle") == pytest.approx(0.04)
    assert at(15, schedule="onecycle") == pytest.approx(0.04 + 0.96 * 0.5)
    assert at(30, schedule="onecycle") == pytest.approx(1.0)
    assert at(65, schedule="onecycle") == pytest.approx(0.5)


def test_multistep_lowers_the_lr_at_whole_epochs():
    cfg = {"schedule": "multistep", "milestones": (0.5, 0.75), "gamma": 0.1}
    assert at(49, **cfg) == 1.0  # epoch 4
    assert at(50, **cfg) == pytest.approx(0.1)  # epoch 5 = 0.5 of 10
    assert at(80, **cfg) == pytest.approx(0.01)  # epoch 8 >= round(7.5)


def test_weight_average_computes_torchs_ema_without_moving_its_counter():
    """The same floats as torch's AveragedModel with its EMA function (bit for bit, on the CPU),
    its checkpoints interchangeable with AveragedModel's, and its step counter never leaving the
    host: AveragedModel copies it to the GPU for each group of tensors, every step."""
    import torch
    from torch import nn

    from resnetlab.train.schedule import WeightAverage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    ours = WeightAverage(model, 0.9)
    theirs = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        model(torch.randn(8, 3, 6, 6)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ours.update_parameters(model)
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and a["n_averaged"].item() == 5
    for key in a:
        if a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["module.0.weight"], model[0].weight)  # an average, not a copy
    # An AveragedModel checkpoint loads, and the counter stays on the CPU.
    restored = WeightAverage(model, 0.9)
    restored.load_state_dict(b)
    assert restored.n_averaged.device.type == "cpu" and restored.n_averaged.item() == 5

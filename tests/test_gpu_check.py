"""The device check (`bench/gpu_check.py`) in its CPU smoke mode, run as a user runs it: every
step runs and reports, and a run stopped after epoch 1 resumes to the uninterrupted run's weights
bit for bit. The GPU run is the same code at full size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_COMPILED = {"compile": False, "cuda_graphs": False}


def test_the_device_check_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    res = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    check = json.loads(out.read_text())
    steps = ("env", "matmul", "syncs", "graph", "resume", "trainer", "speed")
    assert not [s for s in steps if "error" in json.dumps(check[s])], json.dumps(check)
    assert check["env"]["device"] == "cpu" and check["env"]["auto.precision"] in ("bf16", "fp32")
    assert check["matmul"]["bf16 TFLOP/s"] > 0
    assert check["graph"] == {"graph breaks": 0, "compiled graphs": 1}  # no recompile
    assert check["resume"] == {"resumed after epoch": 1, "max |weight difference|": 0.0}
    (eager,) = check["trainer"].values()  # the CPU has no CUDA graphs row
    assert eager["resolved"] == {"precision": check["env"]["auto.precision"], **NOT_COMPILED}
    assert eager["images/s"] > 0 and eager["last train loss"] > 0
    rows = {row["mode"]: row for row in check["speed"]}
    assert set(rows) == {"eager", "compiled"} and all(r["images/s"] > 0 for r in rows.values())
    assert rows["eager"]["TFLOP/s"] > 0


def test_the_training_flop_count_behind_the_gpu_estimate() -> None:
    """`bench/estimate_study.py --flops` (the basis of docs/performance.md's GPU estimate):
    ResNet-20's count equals 3 x 2 x its convolutions' and linear layer's multiply-adds,
    counted here from the layers' shapes (forward, and backward's two products per layer)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO / "bench"))
    from estimate_study import train_flops_per_image

    from resnetlab.core.params import load_params
    from resnetlab.models import build_model

    variant = load_params(REPO / "params.yaml").variant("resnet20")
    macs = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        weight = module.weight
        macs += output[0].numel() * weight[0].numel()  # per image: outputs x inputs per output

    model = build_model(variant.model.name, num_classes=10, **variant.model.args)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(count)
    model(torch.randn(1, 3, 32, 32))
    assert macs == 40_551_040
    # Forward, then backward's gradients of the weights and of the inputs: 3 x 2 x macs, less
    # the first convolution's input gradient, which nothing needs (16 x 32 x 32 outputs of 27).
    assert train_flops_per_image(variant) == 3 * 2 * macs - 2 * 16 * 32 * 32 * 27

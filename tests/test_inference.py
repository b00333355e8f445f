"""Test-time views and the choices `precision: auto` / `compile: auto` make."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.core import device as dev
from resnetlab.data.normalize import Normalizer
from resnetlab.evaluate.scoring import predict_logits
from resnetlab.evaluate.tta import IDENTITY, TTA_VIEWS, View, predict_views, view_of


def grid() -> torch.Tensor:
    """One 4x4 single-channel uint8 image (NHWC) holding 0..15 row by row."""
    return torch.arange(16, dtype=torch.uint8).view(1, 4, 4, 1)


def test_views_shift_and_mirror_as_hand_computed():
    assert torch.equal(view_of(grid(), IDENTITY), grid())
    mirrored = view_of(grid(), View(flip=True))[0, :, :, 0]
    assert mirrored[0].tolist() == [3, 2, 1, 0] and mirrored[3].tolist() == [15, 14, 13, 12]
    # Content moves down and right by one pixel; the uncovered border is black (0).
    down_right = view_of(grid(), View(dy=1, dx=1))[0, :, :, 0]
    assert down_right.tolist() == [[0, 0, 0, 0], [0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]]
    up_left = view_of(grid(), View(dy=-2, dx=-2))[0, :, :, 0]
    assert up_left.tolist() == [[10, 11, 0, 0], [14, 15, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_tta_view_sets():
    sizes = [len(TTA_VIEWS[k]) for k in ("none", "flip", "flip_translate", "flip_grid")]
    assert sizes == [1, 2, 6, 18]
    for views in TTA_VIEWS.values():
        assert views[0] == IDENTITY  # its logits are the single-view prediction
        assert len(set(views)) == len(views)
    for views in list(TTA_VIEWS.values())[1:]:  # every shift also mirrored
        assert {(v.dy, v.dx) for v in views if v.flip} == {(v.dy, v.dx) for v in views}
    assert {(v.dy, v.dx) for v in TTA_VIEWS["flip_translate"]} == {(0, 0), (-2, -2), (2, 2)}
    one_px = {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert {(v.dy, v.dx) for v in TTA_VIEWS["flip_grid"]} == one_px


class Pixels(nn.Module):
    """Logits = the first 10 normalised pixel values of channel 0: a view is visible in them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].reshape(len(x), -1)[:, :10]


def test_predict_views_runs_the_model_on_each_view():
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    normalize = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    views = TTA_VIEWS["flip_translate"]
    out = predict_views(Pixels(), images, normalize, 2, None, views)  # 3 batches per view
    assert out.shape == (6, 5, 10) and out.dtype == torch.float32
    for i, view in enumerate(views):
        expected = Pixels()(normalize(view_of(images, view)))
        assert torch.allclose(out[i], expected)
    assert torch.equal(out[0], predict_logits(Pixels(), images, normalize, 2))


def test_compile_auto_compiles_long_runs_on_cuda_and_in_bf16_on_cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (8, 0))  # an A100
    cpu, mps, bf16 = torch.device("cpu"), torch.device("mps"), torch.bfloat16
    assert dev.use_compile("auto", cpu, dev.COMPILE_MIN_STEPS, bf16)
    assert not dev.use_compile("auto", cpu, dev.COMPILE_MIN_STEPS - 1, bf16)
    assert not dev.use_compile("auto", cpu, 10**6, None)  # fp32 on a CPU: it never paid
    # On CUDA its own threshold (an estimate until bench/gpu_check.py measures it).
    assert dev.use_compile("auto", torch.device("cuda"), dev.CUDA_COMPILE_MIN_STEPS, None)
    assert not dev.use_compile("auto", torch.device("cuda"), dev.CUDA_COMPILE_MIN_STEPS - 1, bf16)
    assert not dev.use_compile("auto", mps, 10**6, None)
    assert dev.use_compile(True, cpu, 1, None) and not dev.use_compile(False, cpu, 10**6, bf16)
    # DDP on CUDA converts BatchNorm to SyncBatchNorm, where the compiled graph breaks at every
    # such layer: `auto` leaves that model eager.
    cuda = torch.device("cuda", 0)
    assert not dev.use_compile("auto", cuda, 10**6, bf16, sync_batchnorm=True)
    assert dev.use_compile(True, cuda, 10**6, bf16, sync_batchnorm=True)  # asked for: done


def test_precision_auto_is_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(dev, "native_bf16", lambda d, native=native: native)
        assert dev.autocast_dtype("auto", cpu) is expected
    assert dev.autocast_dtype("fp32", cpu) is None
    assert dev.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert not dev.native_bf16(torch.device("meta"))


@pytest.mark.skipif(not dev.native_bf16(torch.device("cpu")), reason="no native bf16 here")
def test_bf16_autocast_on_this_cpu_matches_fp32_closely():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        with dev.autocast(torch.device("cpu"), torch.bfloat16):
            low = net(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_gpus_without_bf16_train_in_fp16_and_triton_less_ones_stay_eager(monkeypatch):
    """`precision: auto` on a T4 (7.5) or V100 (7.0): fp16, which their tensor cores run (was
    fp32); bf16 from Ampere (8.0) on. `compile: auto` leaves a GPU Triton cannot target (a
    P100, 6.0) eager. The capability is the training GPU's own, simulated here."""
    cuda = torch.device("cuda", 1)
    seen: list[torch.device] = []
    for capability, dtype in (
        ((9, 0), torch.bfloat16),
        ((8, 0), torch.bfloat16),
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((6, 0), torch.float16),
    ):
        monkeypatch.setattr(
            torch.cuda, "get_device_capability", lambda d, c=capability: seen.append(d) or c
        )
        assert dev.autocast_dtype("auto", cuda) is dtype
        assert dev.use_compile("auto", cuda, 10**6, dtype) is (capability >= (7, 0))
    assert set(seen) == {cuda}  # asked of the training GPU, never of GPU 0


def test_fast_cuda_math_holds_for_cuda_runs_only_and_is_restored():
    """cuDNN's autotuner and TF32 for the fixed shapes of a CUDA run, then put back."""

    def flags() -> tuple[bool, bool, bool]:
        backends = torch.backends
        return backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32

    before = flags()
    with dev.fast_cuda_math(torch.device("cpu")):
        assert flags() == before
    with dev.fast_cuda_math(torch.device("cuda", 0)):
        assert flags() == (True, True, True)
    assert flags() == before

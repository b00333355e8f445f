"""uint8 NHWC batches on the device -> normalised float NCHW: the step in front of every forward
pass of training and evaluation (the train split's per-channel statistics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch


class Normalizer:
    """uint8 NHWC -> normalised float NCHW, on the device, with the train split's statistics."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        channels_last: bool = True,
    ):
        # Folded into one multiply-add: (x / 255 - mean) / std = x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32, device=device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
        self.scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1)
        self.shift = (-mean_t / std_t).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nhwc.permute(0, 3, 1, 2).float()  # NCHW shape, NHWC memory
        x = torch.addcmul(self.shift, x, self.scale)  # keeps x's memory format
        return x if self.channels_last else x.contiguous()


def normalization_problem(
    data_dir: Path,
    mean: Sequence[float],
    std: Sequence[float],
    normalize: Normalizer,
    images: torch.Tensor,
) -> str | None:
    """What in the prepared data at `data_dir` makes every training loss non-finite whatever the
    learning rate (a channel's mean or std not finite, a std of 0 or too small to divide by,
    non-finite images), or None. The trainer asks once the loss has become non-finite, never
    before: `mean`, `std` are meta.json's, `normalize` built from them, `images` the training
    split as it trains."""
    meta = Path(data_dir) / "meta.json"
    for channel, (m, s) in enumerate(zip(mean, std, strict=False)):
        try:
            m, s = float(m), float(s)
        except (TypeError, ValueError):
            return f"{meta} gives channel {channel} mean {m!r} and std {s!r}"
        if not (math.isfinite(m) and math.isfinite(s)):
            return f"{meta} gives channel {channel} mean {m} and std {s}"
        if s <= 0:
            return f"{meta} gives channel {channel} a std of {s}, which it divides by"
    if not (torch.isfinite(normalize.scale).all() and torch.isfinite(normalize.shift).all()):
        return f"{meta} gives a std of {min(std)}, too small to divide by"
    if images.is_floating_point() and not torch.isfinite(images).all():
        return f"{Path(data_dir) / 'train_images.npy'} holds non-finite pixels"
    return None

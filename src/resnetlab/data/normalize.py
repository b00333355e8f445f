"""uint8 NHWC batches on the device -> normalised float NCHW: the step in front of every forward
pass of training and evaluation (the train split's per-channel statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

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

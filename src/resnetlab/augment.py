"""Batched augmentation on the training device: no per-sample Python, no PIL, no workers.

Images stay uint8 NHWC on the device (one byte per channel: 45k training images are 138 MB). A
batch is cropped and flipped as uint8, converted to float once, normalised with the train split's
mean/std, and Cutout is applied after normalisation (a hole is 0 = the mean colour, as in DeVries &
Taylor). The result is an NCHW tensor; when `channels_last` it keeps the NHWC memory layout, which
is exactly torch's channels_last format, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from resnetlab.config import AugmentConfig


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random HxW crops of a zero-padded NHWC batch, one offset per image."""
    if padding == 0:
        return x
    n, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))  # pads W and H, not C
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # n x h x 1
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # n x 1 x w
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols]  # advanced indexing gathers n x h x w x c


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each NHWC image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(2), x)


def cutout(x: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Zero `count` size x size squares per NCHW image; centres are uniform over the image, so a
    square may be clipped at the border (DeVries & Taylor 2017)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    keep = torch.ones(n, 1, h, w, dtype=torch.bool, device=x.device)
    for _ in range(count):
        cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
        cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
        # The hole spans [c - size//2, c - size//2 + size) on each axis.
        in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)  # n x h
        in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)  # n x w
        keep &= ~(in_y[:, None, :, None] & in_x[:, None, None, :])
    return x.mul_(keep)  # in place: keeps the channels_last layout


def augment_batch(
    x_uint8_nhwc: torch.Tensor,
    cfg: AugmentConfig,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """Crop, flip, normalise (`normalize`: uint8 NHWC -> float NCHW, e.g.
    `resnetlab.inference.Normalizer`) and Cutout one uint8 NHWC batch; returns float NCHW."""
    x = random_crop(x_uint8_nhwc, cfg.crop_padding, generator)
    if cfg.flip:
        x = random_flip(x, generator)
    x = normalize(x)
    if cfg.cutout_size:
        x = cutout(x, cfg.cutout_size, cfg.cutout_count, generator)
    return x

"""Batched augmentation on the training device: no per-sample Python, no PIL, no workers.

Images stay uint8 NHWC on the device (one byte per channel: 45k training images are 138 MB). A
batch is cropped, flipped and brightness-shifted per channel as uint8, converted to float once,
normalised with the train split's mean/std, then rotated and Cutout is applied after
normalisation (a rotated-in corner and a hole are 0 = the mean colour, as in DeVries & Taylor).
The result is an NCHW tensor; when `channels_last` it keeps the NHWC memory layout, which is
exactly torch's channels_last format, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from resnetlab.core.config import AugmentConfig


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
    return flip_where(x, torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5)


def flip_where(x: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the NHWC images whose entry of the boolean `mirror` is true."""
    return torch.where(mirror[:, None, None, None], x.flip(2), x)


def alternating_flips(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Which of `n` training images `flip: alternate` mirrors in `epoch` (1-based): a random half
    in epoch 1, drawn from `seed` alone, then the other half in epoch 2, and so on. Recomputed
    from (seed, epoch), so a resumed run mirrors as an uninterrupted one."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return (first ^ (epoch % 2 == 0)).to(device)


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


def channel_shift(x: torch.Tensor, max_shift: float, generator: torch.Generator) -> torch.Tensor:
    """Add to each channel of each uint8 NHWC image one offset uniform in [-max_shift, max_shift]
    (a fraction of the 0..255 range), clipped to 0..255: Keras's `channel_shift_range`, batched."""
    n, _, _, c = x.shape
    offsets = torch.rand(n, 1, 1, c, device=x.device, generator=generator) * 2.0 - 1.0
    offsets = torch.round(offsets * (255.0 * max_shift)).to(torch.int16)
    return (x.to(torch.int16) + offsets).clamp_(0, 255).to(torch.uint8)


def random_rotation(
    x: torch.Tensor, max_degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """Rotate each float NCHW image about its centre by an angle uniform in
    [-max_degrees, max_degrees]: one affine grid and one bilinear `grid_sample` for the whole
    batch. Corners rotated in from outside are 0 (after normalisation: the mean colour)."""
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device, generator=generator) * 2.0 - 1.0) * max_degrees
    rad = torch.deg2rad(angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # Square images: normalised coordinates rotate without an aspect correction.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augment_batch(
    x_uint8_nhwc: torch.Tensor,
    cfg: AugmentConfig,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    mirror: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop, flip, channel shift, normalise (`normalize`: uint8 NHWC -> float NCHW, e.g.
    `data.normalize.Normalizer`), rotate and Cutout one uint8 NHWC batch; returns float
    NCHW. Steps that are off (the defaults for rotation and channel shift) draw no random
    numbers, so turning them off leaves the batches of the others unchanged. With `flip:
    alternate`, `mirror` (boolean, one per image; see `alternating_flips`) says which to flip."""
    x = random_crop(x_uint8_nhwc, cfg.crop_padding, generator)
    if cfg.flip == "alternate":
        if mirror is None:
            raise ValueError("flip: alternate needs the batch's `mirror` flags")
        x = flip_where(x, mirror)
    elif cfg.flip:
        x = random_flip(x, generator)
    if cfg.channel_shift:
        x = channel_shift(x, cfg.channel_shift, generator)
    x = normalize(x)
    if cfg.rotation:
        x = random_rotation(x, cfg.rotation, generator)
    if cfg.cutout_size:
        x = cutout(x, cfg.cutout_size, cfg.cutout_count, generator)
    return x


def augment_epoch(
    images: torch.Tensor,
    batches: list[torch.Tensor],
    cfg: AugmentConfig,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    mirror: torch.Tensor | None = None,
    *,
    chunk: int = 8192,
) -> torch.Tensor:
    """The augmented images of a whole epoch's `batches` (index tensors into `images`, in the
    order they train), concatenated: step k's batch is the k-th slice. Done in a few passes of
    `chunk` images instead of one per step, so each step launches no augmentation kernels; the
    chunks bound the temporaries (a padded crop is 1.6x its batch). It draws its random numbers
    in another order than per-step `augment_batch` calls, so it gives other (equally random)
    views. `mirror`: as `augment_batch`'s, one flag per image of `images`."""
    order = torch.cat(batches)
    out: torch.Tensor | None = None
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        flips = None if mirror is None else mirror[part]
        views = augment_batch(images[part], cfg, normalize, generator, flips)
        if out is None:
            layout = (
                torch.channels_last
                if views.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            shape = (len(order), *views.shape[1:])
            out = torch.empty(shape, dtype=views.dtype, device=views.device, memory_format=layout)
        out[start : start + len(part)] = views
    assert out is not None, "an epoch without batches"
    return out

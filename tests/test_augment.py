"""Batched augmentations: rotation, per-channel brightness shift and alternating flips (what they
do to pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from resnetlab.core.config import AugmentConfig
from resnetlab.data.augment import (
    alternating_flips,
    augment_batch,
    augment_epoch,
    channel_shift,
    random_rotation,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_channel_shift_adds_one_offset_per_image_and_channel() -> None:
    x = torch.full((64, 8, 8, 3), 128, dtype=torch.uint8)
    y = channel_shift(x, 0.1, gen())
    assert y.dtype == torch.uint8 and y.shape == x.shape
    delta = y.to(torch.int16) - x.to(torch.int16)
    # Constant over each image's pixels, per channel; within +-0.1 * 255.
    assert (delta == delta[:, :1, :1, :]).all()
    assert delta.abs().max() <= round(0.1 * 255)
    # Channels and images draw their own offsets (not one brightness for all).
    per_image = delta[:, 0, 0, :]
    assert len(set(per_image.flatten().tolist())) > 10
    assert (per_image[:, 0] != per_image[:, 1]).any()
    # Clipped, never wrapped around.
    bright = channel_shift(torch.full((16, 2, 2, 3), 250, dtype=torch.uint8), 0.5, gen())
    assert bright.min() >= 250 - round(0.5 * 255) and bright.max() == 255


def test_rotation_turns_images_about_their_centre() -> None:
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 14:18, 24:30] = 1.0  # a bar right of the centre
    y = random_rotation(x, 0.0, gen())
    assert torch.allclose(y, x, atol=1e-5)  # no angle, no change
    turned = random_rotation(x, 180.0, gen(1))
    assert turned.shape == x.shape
    assert not torch.allclose(turned, x, atol=1e-3)
    # Mass is kept (a bar well inside the image stays inside).
    assert torch.allclose(turned.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.15)
    # The corners of a constant image come from outside: 0, the mean colour after normalising.
    ones = random_rotation(torch.ones(8, 3, 32, 32), 45.0, gen(2))
    assert ones[:, :, 16, 16].allclose(torch.ones(8, 3))
    assert (ones[:, :, 0, 0] < 1).any()
    # Channels-last in, channels-last out (the training loop's memory format).
    cl = random_rotation(x.contiguous(memory_format=torch.channels_last), 10.0, gen())
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_rotation_angles_stay_within_the_bound() -> None:
    # A single bright pixel off-centre: its angle about the centre tells the rotation.
    n = 256
    x = torch.zeros(n, 1, 33, 33)
    x[:, :, 16, 28] = 1.0
    y = random_rotation(x, 10.0, gen(3))
    rows, cols = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    w = y[:, 0]
    cy = (w * rows).sum((1, 2)) / w.sum((1, 2)) - 16
    cx = (w * cols).sum((1, 2)) / w.sum((1, 2)) - 16
    angles = torch.rad2deg(torch.atan2(cy, cx)).abs()
    assert angles.max() <= 10.0 + 1.0  # bilinear blur moves the centroid a little
    assert angles.max() > 7.0  # and the draw covers the range
    assert math.isclose(float(angles.mean()), 5.0, abs_tol=1.5)


def test_defaults_leave_the_batch_as_crop_and_flip_make_it() -> None:
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)

    def normalize(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 1, 2).float() / 255

    base = augment_batch(x, AugmentConfig(), normalize, gen(5))
    same = augment_batch(x, AugmentConfig(rotation=0.0, channel_shift=0.0), normalize, gen(5))
    assert torch.equal(base, same)
    on = augment_batch(x, AugmentConfig(rotation=10.0, channel_shift=0.05), normalize, gen(5))
    assert on.shape == base.shape and on.dtype == base.dtype and not torch.equal(on, base)


def test_alternating_flips_mirror_each_image_in_every_other_epoch() -> None:
    cpu = torch.device("cpu")
    e1, e2, e3 = (alternating_flips(1000, 7, e, cpu) for e in (1, 2, 3))
    assert e1.dtype == torch.bool and e1.shape == (1000,)
    assert 450 < int(e1.sum()) < 550  # a random half first
    assert torch.equal(e2, ~e1) and torch.equal(e3, e1)  # then the other half, then again
    assert torch.equal(alternating_flips(1000, 7, 1, cpu), e1)  # from (seed, epoch) alone
    assert not torch.equal(alternating_flips(1000, 8, 1, cpu), e1)


def test_alternate_flip_mirrors_exactly_the_flagged_images() -> None:
    x = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    mirror = torch.tensor([True, False, False, True, True, False])
    cfg = AugmentConfig(crop_padding=0, flip="alternate")

    def normalize(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 1, 2).float()

    out = augment_batch(x, cfg, normalize, gen(), mirror)
    expected = torch.where(mirror[:, None, None, None], x.flip(2), x)
    assert torch.equal(out, normalize(expected))
    with pytest.raises(ValueError, match="flip: alternate needs"):
        augment_batch(x, cfg, normalize, gen())


def test_an_epoch_augmented_at_once_is_each_batch_cropped_and_flipped_in_order() -> None:
    """`augment_epoch` (CUDA's form): slice k of its result is batch k's images, each one a
    crop or mirrored crop of itself, in the channels_last layout the model takes; and with
    nothing random on, exactly the per-batch result."""
    # Image i is a horizontal ramp plus 2*i: which image, where it was cropped, whether mirrored
    # can all be read back.
    n = 40
    ramp = torch.arange(8).repeat(8, 1)  # 8 x 8, value = column
    x = (ramp[None, :, :, None] + 2 * torch.arange(n)[:, None, None, None]).expand(n, 8, 8, 3)
    x = x.to(torch.uint8).contiguous()

    def normalize(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 1, 2).float()  # NHWC memory: channels_last, as the trainer's

    batches = list(torch.randperm(n, generator=gen(1)).split(16))  # 16, 16, 8
    order = torch.cat(batches)
    off = AugmentConfig(crop_padding=0, flip=False)
    plain = augment_epoch(x, batches, off, normalize, gen(), chunk=12)
    per_step = [augment_batch(x[b], off, normalize, gen()) for b in batches]
    assert torch.equal(plain, torch.cat(per_step))

    on = AugmentConfig(crop_padding=2, flip=True)
    views = augment_epoch(x, batches, on, normalize, gen(), chunk=12)
    assert views.shape == (n, 3, 8, 8) and views.is_contiguous(memory_format=torch.channels_last)
    mirrored = 0
    for k, i in enumerate(order.tolist()):
        row = views[k, 0, 4]  # a middle row: the ramp, shifted by the crop, maybe mirrored
        inside = row[row > 0] - 2 * i  # the padding is 0
        steps = inside.diff()
        assert inside.min() >= 0 and inside.max() <= 7, (k, i)  # image i's own pixels
        assert bool((steps == 1).all()) or bool((steps == -1).all()), (k, i)
        mirrored += bool((steps == -1).all()) and len(steps) > 0
    assert 5 < mirrored < 35  # flips drawn per image

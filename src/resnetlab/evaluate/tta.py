"""Test-time augmentation: the views of an image whose logits are averaged, and the forward
passes over them (device-resident uint8 splits, eval mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.core.device import autocast
from resnetlab.data.normalize import Normalizer


@dataclass(frozen=True)
class View:
    """One test-time view of an image: mirrored or not, shifted by (dy, dx) pixels (positive =
    content moves down / right; the uncovered border is black, as the training crop's padding)."""

    flip: bool = False
    dy: int = 0
    dx: int = 0


IDENTITY = View()


def mirrored(shifts: Iterable[tuple[int, int]]) -> tuple[View, ...]:
    """Each (dy, dx) shift, unmirrored then mirrored, in the order given: shifts starting with
    (0, 0) put the identity first."""
    return tuple(View(flip, dy, dx) for dy, dx in shifts for flip in (False, True))


# Test-time augmentation (`evaluate.tta`): the views whose logits are averaged. The identity
# comes first, so its logits are also the single-view prediction. Shifts stay within the
# training crops' +-4 pixels. bench/bench_tta_views.py compares these and denser sets on the
# validation split.
TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": (IDENTITY,),
    "flip": mirrored([(0, 0)]),
    "flip_translate": mirrored([(0, 0), (-2, -2), (2, 2)]),
    # Every 1-pixel shift of a 3 x 3 grid: 18 views.
    "flip_grid": mirrored((dy, dx) for dy in (0, -1, 1) for dx in (0, -1, 1)),
}


def view_of(x_uint8_nhwc: torch.Tensor, view: View) -> torch.Tensor:
    """`view` of a uint8 NHWC batch (no copy for the identity)."""
    x = x_uint8_nhwc.flip(2) if view.flip else x_uint8_nhwc
    if view.dy or view.dx:
        _, h, w, _ = x.shape
        p = max(abs(view.dy), abs(view.dx))
        padded = F.pad(x, (0, 0, p, p, p, p))  # pads W and H, not C
        x = padded[:, p - view.dy : p - view.dy + h, p - view.dx : p - view.dx + w].contiguous()
    return x


@torch.inference_mode()
def predict_views(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Normalizer,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    views: Sequence[View] = (IDENTITY,),
) -> torch.Tensor:
    """Logits (float32, on the device) for uint8 NHWC `images`, in eval mode, one set per view:
    len(views) x N x classes."""
    was_training = model.training
    model.eval()
    per_view = []
    for view in views:
        out = []
        for start in range(0, len(images), batch_size):
            x = normalize(view_of(images[start : start + batch_size], view))
            with autocast(images.device, amp_dtype):
                out.append(model(x).float())
        per_view.append(torch.cat(out) if out else torch.empty(0, 0, device=images.device))
    model.train(was_training)
    return torch.stack(per_view)

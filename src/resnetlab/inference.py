"""Running a trained network: normalisation, forward passes over device-resident splits, and
the self-contained `Classifier` rebuilt from a model file. No training code, no file writing.

`Classifier` puts the normalisation inside the module, so it takes float images in [0, 1]
(N x 3 x 32 x 32): what MLflow serves and `predict` feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.device import autocast, autocast_dtype, resolve_device
from resnetlab.errors import ResnetlabError
from resnetlab.models import build_model
from resnetlab.records import ModelRecord


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


class Classifier(nn.Module):
    """Normalise [0, 1] images with the train split's mean/std, then run the network."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def build_network(record: ModelRecord, path: Path | str = "model file") -> nn.Module:
    """The network `record` describes, with its saved weights, in eval mode on the CPU."""
    spec = record.variant.model.to_dict()
    name = spec.pop("name")
    spec.pop("pretrained", None)  # the saved weights replace any pretrained ones
    net = build_model(name, **spec)
    missing, unexpected = net.load_state_dict(record.state_dict, strict=False)
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"missing {len(missing)} tensor(s) (e.g. {missing[0]})")
        if unexpected:
            what.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
        raise ResnetlabError(
            f"{path}: weights do not fit model {name!r}: {'; '.join(what)}; "
            f"re-run `dvc repro train@{record.variant.name}-{record.variant.train.seed}`"
        )
    return net.eval()


def load_classifier(path: Path) -> tuple[Classifier, ModelRecord]:
    """The model file at `path` as a [0, 1]-images-in, logits-out `Classifier`, and its record."""
    record = ModelRecord.read(path)
    return classifier_of(record, path), record


def classifier_of(record: ModelRecord, path: Path | str = "model file") -> Classifier:
    """`record`'s network with its normalisation inside: [0, 1] images in, logits out."""
    return Classifier(build_network(record, path), record.mean, record.std).eval()


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


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Normalizer,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (float32, on the device) for uint8 NHWC `images`, in eval mode."""
    return predict_views(model, images, normalize, batch_size, amp_dtype)[0]


@dataclass(frozen=True)
class Scorer:
    """A trained network set up to score uint8 NHWC images as its training scored its validation
    split: on the device its config names, in its memory format and autocast precision, in its
    eval batches, normalised with the statistics of the train split it learnt from."""

    net: nn.Module
    normalize: Normalizer
    device: torch.device
    amp_dtype: torch.dtype | None
    batch_size: int

    @classmethod
    def of(cls, record: ModelRecord, path: Path | str = "model file") -> Scorer:
        cfg = record.variant.train
        device = resolve_device(cfg.device)
        net = build_network(record, path).to(device)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        normalize = Normalizer(record.mean, record.std, device, cfg.channels_last)
        return cls(
            net, normalize, device, autocast_dtype(cfg.precision, device), cfg.eval_batch_size
        )

    def views(self, images: torch.Tensor, views: Sequence[View] = (IDENTITY,)) -> torch.Tensor:
        """`predict_views` of `images` (on `device`): len(views) x N x classes logits."""
        return predict_views(
            self.net, images, self.normalize, self.batch_size, self.amp_dtype, views
        )


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `logits` against integer `labels`."""
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).sum().item() / max(len(labels), 1)
    return loss, accuracy

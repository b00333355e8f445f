"""Scoring a trained network on device-resident splits as its training scored validation: same
device, memory format, precision, batches and normalisation; loss and accuracy of logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.core.device import autocast_dtype, resolve_device
from resnetlab.core.records import ModelRecord
from resnetlab.data.normalize import Normalizer
from resnetlab.evaluate.classifier import build_network
from resnetlab.evaluate.tta import IDENTITY, View, predict_views


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

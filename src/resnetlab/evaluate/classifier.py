"""A model file rebuilt as a self-contained `Classifier`: the network with the train split's
normalisation inside, so it takes float images in [0, 1] (N x 3 x H x W), which is what MLflow
serves and `predict` feeds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.records import ModelRecord
from resnetlab.models import build_model_for


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
    net = build_model_for(name, spec, record.classes)  # one output per class it was trained on
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

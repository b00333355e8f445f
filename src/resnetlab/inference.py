"""The trained model file (`models/<variant>/model.pt`) and a self-contained classifier.

`model.pt` holds the best weights (a state dict), the resolved config and the data statistics; it
loads with `torch.load(..., weights_only=True)`. `Classifier` puts the normalisation inside the
module, so it takes float images in [0, 1] (N x 3 x 32 x 32): what MLflow serves and `predict`
feeds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models import build_model

MODEL_FILE_FORMAT = 1


class Classifier(nn.Module):
    """Normalise [0, 1] images with the train split's mean/std, then run the network."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def model_record(
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "format": MODEL_FILE_FORMAT,
        "state_dict": state_dict,
        "config": config,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        **extra,
    }


def load_model_file(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved in `path`; returns it (eval mode, CPU) and the whole record."""
    path = Path(path)
    if not path.exists():
        raise ResnetlabError(f"{path}: no trained model (run `dvc repro train@<variant>` first)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResnetlabError(f"{path}: not a readable model file ({exc})") from None
    spec = dict(record["config"]["model"])
    name = spec.pop("name")
    spec.pop("pretrained", None)  # the saved weights replace any pretrained ones
    net = build_model(name, **spec)
    net.load_state_dict(record["state_dict"])
    return net.eval(), record


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    net, record = load_model_file(path)
    return Classifier(net, record["mean"], record["std"]).eval(), record

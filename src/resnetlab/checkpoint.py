"""Atomic saving and safe loading of checkpoints and the final model file.

Everything written here is plain tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: no pickled code runs when a checkpoint is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnetlab.atomic import write_atomic
from resnetlab.errors import ResnetlabError

FORMAT = 1  # bump when the checkpoint layout changes; older checkpoints are then not resumed


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """`torch.save(obj)` to `path`, atomically (see `resnetlab.atomic`)."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResnetlabError(f"{path}: not a readable checkpoint ({exc})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, EMA
            model = model.module
        else:
            return model


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the unwrapped model's state (keys without wrapper prefixes)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}

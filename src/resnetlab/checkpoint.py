"""The resumable training state (`checkpoint.pt`): its layout, atomic saving and safe loading.

Everything written here is plain tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: no pickled code runs when a checkpoint is read.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnetlab.atomic import write_atomic
from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes; older checkpoints are then not resumed


@dataclass
class Progress:
    """Where training stands, besides the torch states."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)  # HistoryRow fields per epoch
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # weights of the best epoch, on the CPU
    train_time_s: float = 0.0
    run_id: str | None = None  # the MLflow run this execution records into


@dataclass
class TrainingState:
    """Everything needed to continue training exactly where it stopped.

    `fingerprint` ties the state to one resolved config and one prepared data set: a state
    written for anything else is never resumed.
    """

    fingerprint: str
    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] = field(default_factory=dict)  # empty without fp16 loss scaling
    ema: dict[str, Any] = field(default_factory=dict)  # empty without EMA
    rng: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # written once the stage's outputs are on disk

    def to_blob(self) -> dict[str, Any]:
        blob = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        blob["progress"] = vars(self.progress)
        blob["format"] = FORMAT
        return blob

    @classmethod
    def from_blob(cls, blob: dict[str, Any]) -> TrainingState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: v for k, v in blob.items() if k in names and k != "progress"},
            progress=Progress(**blob["progress"]),
        )

    def save(self, path: Path) -> None:
        save_atomic(self.to_blob(), path)


def resumable(path: Path, fingerprint: str) -> TrainingState | None:
    """The state at `path` if it is an unfinished run of the same config and data, else None
    (the log says why it is not resumed)."""
    if not Path(path).exists():
        return None
    saved = load(path)
    if saved.get("format") != FORMAT or saved.get("fingerprint") != fingerprint:
        log.info("%s belongs to another config or data; training from scratch", path)
        return None
    if saved.get("finished"):
        log.info("%s is from a finished run; training from scratch", path)
        return None
    return TrainingState.from_blob(saved)


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

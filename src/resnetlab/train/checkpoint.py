"""The resumable training state (`checkpoint.pt`): its layout, atomic saving and safe loading.

Everything written here is plain tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: no pickled code runs when a checkpoint is read. A checkpoint
that cannot be read that way (empty, truncated, garbage, or holding other objects) is set aside,
renamed `checkpoint.pt.unreadable-<time>` so nothing is lost, and training starts over.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnetlab.core.atomic import write_atomic
from resnetlab.core.errors import ResnetlabError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes; older checkpoints are then not resumed


@dataclass
class Progress:
    """Where training stands, besides the torch states."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)  # HistoryRow fields per epoch
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    # Weights of the best epoch: on the training device while training (no copy to the host at
    # each new best), on the CPU in a saved checkpoint.
    best_state: dict[str, torch.Tensor] | None = None
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
        blob["progress"] = vars(self.progress) | {"best_state": to_cpu(self.progress.best_state)}
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
    (the log says why it is not resumed). An unreadable file is set aside, not resumed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = load(path)
        if saved.get("format") != FORMAT or saved.get("fingerprint") != fingerprint:
            log.info("%s belongs to another config or data; training from scratch", path)
            return None
        if saved.get("finished"):
            log.info("%s is from a finished run; training from scratch", path)
            return None
        try:
            return TrainingState.from_blob(saved)
        except (TypeError, KeyError):
            # Our format and fingerprint, not our layout: damaged or forged.
            raise UnreadableCheckpoint(path, "fields of a training state are missing") from None
    except UnreadableCheckpoint as exc:
        set_aside(path, exc.reason)
        return None


class UnreadableCheckpoint(ResnetlabError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a readable checkpoint ({reason})")
        self.reason = reason


def set_aside(path: Path, reason: str) -> None:
    """Rename the unreadable checkpoint at `path` out of the way, keeping its bytes."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        # Another process of the same run (DDP) set it aside first.
        log.warning("%s: not a readable checkpoint (%s); training from scratch", path, reason)
        return
    log.warning(
        "%s: not a readable checkpoint (%s); kept as %s, training from scratch",
        path,
        reason,
        aside.name,
    )


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """`torch.save(obj)` to `path`, atomically (see `core.atomic`)."""
    write_atomic(
        path,
        lambda fh: torch.save(obj, fh),
        then="run again to resume after the last epoch saved",
    )


def load(path: Path) -> dict[str, Any]:
    """The checkpoint dict at `path`. Raises UnreadableCheckpoint for content that cannot be a
    checkpoint, ResnetlabError when the file cannot be opened at all."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:  # no permission, a directory, ...: not the content's fault
        raise ResnetlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with fh, warnings.catch_warnings():
            # torch warns about pickle protocols of foreign files, in words that suggest
            # weights_only=False; a file of ours never triggers it.
            warnings.simplefilter("ignore")
            saved = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip can even raise OSError(EINVAL)
        raise UnreadableCheckpoint(path, _reason(path, exc)) from None
    if not isinstance(saved, dict):
        raise UnreadableCheckpoint(path, f"it holds a {type(saved).__name__}, not a dict")
    return saved


def _reason(path: Path, exc: Exception) -> str:
    # torch's own messages run to paragraphs and advise weights_only=False, i.e. running
    # whatever code the file holds: never relayed, only classified.
    if path.stat().st_size == 0:
        return "empty file"
    if isinstance(exc, pickle.UnpicklingError):
        return "not plain tensors and numbers: garbage, or objects a safe load refuses"
    return f"truncated or corrupt: {type(exc).__name__}"


@dataclass
class Cadence:
    """When the trainer writes the checkpoint: after an epoch once `every_s` seconds have passed
    since the last write (or since training started), and always after the last epoch; every
    epoch with `every_s` 0."""

    every_s: float
    clock: Callable[[], float] = time.monotonic
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.clock()

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch >= epochs or self.clock() - self.last >= self.every_s

    def written(self) -> None:
        self.last = self.clock()


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global random state a resumed run restores: the CPU generator's and, on CUDA, the
    training GPU's alone. Augmentation and shuffling draw from their own per-epoch generators;
    this covers anything else that draws (none of the shipped networks does). Not every visible
    GPU's: a run resumed where fewer GPUs are visible would not find them all."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s state on `device`. A checkpoint of an older version holds one
    CUDA state per GPU visible then: the entry of the training GPU is taken if there is one,
    and none is needed (nothing else draws from it) when there is not."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if device.type != "cuda" or saved is None:
        return
    if isinstance(saved, list | tuple):
        index = device.index or 0
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)


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


def device_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the unwrapped model's state where it lives: on a GPU, a device-side
    copy that does not wait for the host."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def to_cpu(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """`state` with every tensor on the CPU (the tensors themselves if they are already)."""
    if state is None:
        return None
    return {k: v.to("cpu") for k, v in state.items()}

"""What a training run tells its listeners, and the listener protocol. After each epoch,
`Trainer.fit` writes the checkpoint if one is due (`train.checkpoint_every_s`), then notifies
`on_epoch_end`, and, if it wrote one, `on_checkpoint` with the epochs it made safe. A display
(`train.console`) shows epochs as they end; a record (MLflow, `tracking.training_run`) takes them
at `on_checkpoint`, so it never holds an epoch that a resumed run trains again. Neither is
written into the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from resnetlab.core.config import Variant
from resnetlab.core.records import HistoryRow


@dataclass(frozen=True)
class RunStart:
    variant: Variant
    device: torch.device
    processes: int
    parameters: int
    steps_per_epoch: int
    resumed_epoch: int  # epochs already done by an interrupted execution; 0 = fresh start
    history: tuple[HistoryRow, ...]  # those epochs' rows


@dataclass(frozen=True)
class StepProgress:
    epoch: int
    epochs: int
    step: int  # steps done in this epoch
    steps: int
    loss: float  # mean over the epoch so far
    accuracy: float
    lr: float


@dataclass(frozen=True)
class EpochEnd:
    row: HistoryRow
    epochs: int
    is_best: bool  # this epoch's weights are now the kept model


@dataclass(frozen=True)
class Checkpointed:
    rows: tuple[HistoryRow, ...]  # the epochs written since the previous checkpoint, in order


class TrainingListener:
    """Receives training events on the main process; override what you need."""

    def on_start(self, event: RunStart) -> None: ...

    def on_epoch_start(self, epoch: int, epochs: int) -> None: ...

    def on_step(self, event: StepProgress) -> None: ...

    def on_epoch_end(self, event: EpochEnd) -> None:
        """An epoch ended; it is on disk only once `on_checkpoint` names it."""

    def on_checkpoint(self, event: Checkpointed) -> None:
        """These epochs are on disk: an interruption from now on resumes after them."""

    def on_stop(self) -> None:
        """Training ended, normally or not (close displays here)."""


def notify(listeners: Sequence[TrainingListener], event: str, *args: object) -> None:
    for listener in listeners:
        getattr(listener, event)(*args)

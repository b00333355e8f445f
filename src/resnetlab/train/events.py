"""What a training run tells its listeners, and the listener protocol: `Trainer.fit` notifies
them after each epoch is safe on disk. The console display (`train.console`) and MLflow
(`tracking.training_run`) are listeners; neither is written into the loop.
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


class TrainingListener:
    """Receives training events on the main process; override what you need."""

    def on_start(self, event: RunStart) -> None: ...

    def on_epoch_start(self, epoch: int, epochs: int) -> None: ...

    def on_step(self, event: StepProgress) -> None: ...

    def on_epoch_end(self, event: EpochEnd) -> None: ...

    def on_stop(self) -> None:
        """Training ended, normally or not (close displays here)."""


def notify(listeners: Sequence[TrainingListener], event: str, *args: object) -> None:
    for listener in listeners:
        getattr(listener, event)(*args)

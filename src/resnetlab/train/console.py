"""The console view of training: a tqdm bar per epoch on a terminal (loss, accuracy, lr,
images/s), and one log line per epoch. A `TrainingListener`; nothing here reaches a file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from resnetlab.train.events import EpochEnd, StepProgress, TrainingListener

log = logging.getLogger("resnetlab.train")


class ConsoleProgress(TrainingListener):
    def __init__(self, name: str, batch_size: int, interactive: bool | None = None):
        self.name = name
        self.batch_size = batch_size
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        # Steps between host syncs: frequent enough for a live bar, rare enough not to stall a GPU.
        self.sync_every = 10 if self.interactive else 50
        self.bar: Any = None
        self.start = time.perf_counter()

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.start = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"{self.name} {epoch}/{epochs}", unit="step", leave=False)

    def on_step(self, event: StepProgress) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.total = event.steps
        self.bar.n = event.step
        self.bar.set_postfix(
            loss=f"{event.loss:.3f}",
            acc=f"{100 * event.accuracy:.1f}%",
            lr=f"{event.lr:.3g}",
            img_s=f"{event.step * self.batch_size / elapsed:.0f}",
        )

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.on_stop()
        r = event.row
        log.info(
            "%s epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  lr %.4g  "
            "%.1f s  %.0f img/s",
            self.name,
            r.epoch,
            event.epochs,
            r.train_loss,
            100 * r.train_accuracy,
            r.val_loss,
            100 * r.val_accuracy,
            r.lr,
            r.epoch_time_s,
            r.images_per_s,
        )

    def on_stop(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

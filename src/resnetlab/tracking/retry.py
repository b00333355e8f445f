"""What a training run has not recorded yet, kept in order and handed to the store when it answers.

During training a call that fails is kept and retried at the next epoch and at the end: the
epochs are on disk already, and training never waits minutes for tracking. The first time the
store falls behind, one warning says so; one line says when it has caught up.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resnetlab.core.errors import first_line
from resnetlab.tracking.store import CALL_S, Caller, Unreachable

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """Something to record into the run, kept until the store has taken it."""

    what: str  # for messages: "epoch 3", "the model", ...
    call: Callable[[MlflowClient], object]
    deadline_s: float = CALL_S
    epoch: int | None = None
    prepare: Callable[[], object] | None = None  # local work before the call (an export)


class RetryQueue:
    """Records waiting for the store, handed over in order by `flush`, one bounded call each."""

    def __init__(self, name: str, calls: Caller, client: Callable[[], MlflowClient]):
        self.name = name  # the variant, for messages
        self._calls = calls
        self._client = client
        self._pending: list[Record] = []
        self._behind = False
        self.reason = ""  # why the last hand-over failed

    def add(self, record: Record) -> None:
        self._pending.append(record)

    def flush(self, more: Iterable[Record] = ()) -> bool:
        """Hand the store what is pending, in order; False (keeping the rest) if it fails."""
        self._pending.extend(more)
        try:
            if self._pending:
                self._calls.probe()
        except Unreachable as exc:
            return self._fell_behind(exc)
        while self._pending:
            record = self._pending[0]
            if record.prepare is not None:  # on this thread, and only once the store answers
                record.prepare()
                record = self._pending[0] = dataclasses.replace(record, prepare=None)
            try:
                self._calls(functools.partial(record.call, self._client()), record.deadline_s)
            except Exception as exc:
                return self._fell_behind(exc)
            self._pending.pop(0)
        if self._behind:
            self._behind = False
            log.info("%s: MLflow tracking caught up", self.name)
        return True

    def _fell_behind(self, exc: Exception) -> bool:
        self.reason = first_line(exc)
        if not self._behind:
            self._behind = True
            log.warning(
                "%s: MLflow tracking is behind: %s did not take %s (%s); nothing is lost (it "
                "is on disk), and it is retried at each epoch and at the end",
                self.name,
                self._calls.uri,
                self.describe(),
                self.reason,
            )
        return False

    def describe(self) -> str:
        """What the store has not taken yet, in words: `epochs 2-5, the model, its end`."""
        epochs = [r.epoch for r in self._pending if r.epoch is not None]
        others = list(dict.fromkeys(r.what for r in self._pending if r.epoch is None))
        parts = [epoch_range(epochs)] if epochs else []
        return ", ".join(parts + others) or "nothing"


def epoch_range(epochs: Sequence[int]) -> str:
    """`epoch 3`, `epochs 2-5` or `epochs 1, 3, 7`."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return "epochs " + ", ".join(map(str, epochs))

"""`TrainingRun`: a variant's MLflow run for one execution of the train stage, and a training
listener (`train.events.TrainingListener`).

During training a call that fails is kept and retried at the next checkpoint and at the end: the
epochs are on disk already, and training never waits minutes for tracking.

About 400 lines on purpose: the run's life (create or resume, record, end KILLED/FAILED/FINISHED,
end the runs a dead process left) is one invariant, easier to check read in one piece; what
could stand alone already does (`retry`, `run_context`, `model_io.ModelUpload`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.core.layout import HISTORY_CSV, METRICS, MODEL_FILE, MODEL_JSON, MODELS, TRAIN_JSON
from resnetlab.tracking import registry
from resnetlab.tracking.lineage import PARENT_KEY_TAG, mlflow_run_label, parent_run
from resnetlab.tracking.model_io import (
    ModelUpload,
    save_model_artifact,
)
from resnetlab.tracking.retry import Record, RetryQueue, epoch_range
from resnetlab.tracking.run_context import RunContext, dataset_input
from resnetlab.tracking.store import (
    CALL_S,
    UPLOAD_S,
    Caller,
    client,
    experiment_id,
    is_missing,
    not_usable,
    now_ms,
    tracking_uri,
)
from resnetlab.train.events import TrainingListener

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from resnetlab.core.records import History, HistoryRow, ModelRecord, TrainSummary
    from resnetlab.train.events import Checkpointed, RunStart


log = logging.getLogger(__name__)

# MLflow's param values are limited in length; longer ones (none expected) are cut.
_PARAM_MAX = 6000
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
_METRICS_BATCH = 1000  # ... and at most 1000 metrics
_MONITOR_STOP_S = 3.0  # the system metrics monitor's last sample and flush
# Tags that let a later execution tell whether the process recording a RUNNING run still lives.
HOST_TAG, PID_TAG = "host", "pid"


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    return text[:_PARAM_MAX]


class TrackingBehind(ResnetlabError):
    """The run could not be completed: the store did not take everything by the end."""

    def __init__(self, uri: str, run_id: str, pending: str, reason: str):
        self.uri, self.run_id, self.pending, self.reason = uri, run_id, pending, reason
        super().__init__(
            f"MLflow tracking store {uri} did not take the records ({reason}): run {run_id} "
            f"lacks {pending}"
        )

    def stage_message(self, name: str, out_dir: Path, metrics_dir: Path, seed: int = 0) -> str:
        """What the train stage says when it ends with the run incomplete (`out_dir` and
        `metrics_dir`: the run's `<root>/<name>/seed<seed>` folders)."""
        relog = f"resnetlab relog --variant {name} --seed {seed}"
        run = Path(name) / f"seed{seed}"
        if out_dir != MODELS / run or metrics_dir != METRICS / run:
            relog += (
                f" --models-dir {out_dir.parent.parent} --metrics-dir {metrics_dir.parent.parent}"
            )
        return (
            f"{name}: training is complete but not recorded: {self}. The model and metrics are "
            f"on disk ({out_dir / MODEL_FILE}, {metrics_dir / HISTORY_CSV}, "
            f"{metrics_dir / TRAIN_JSON}); when the store answers, record them with "
            f"`{relog}`, or re-run this stage (it resumes after the last epoch, trains nothing "
            "and records)"
        )


class TrainingRun(TrainingListener):
    """A variant's MLflow run for one execution of the train stage, and a training listener.

    As a context manager it starts the run (or, with `run_id`, re-opens the run an interrupted
    execution left), and on the way out ends it KILLED on Ctrl-C or FAILED on an error;
    `finish()` records what is still pending and ends it FINISHED. Starting fails the stage if
    the store does not answer. As a listener (`train.events.TrainingListener`) it logs
    each epoch's metrics with step = epoch once a checkpoint holds the epoch; what the store
    does not take in time is kept and retried at the next checkpoint and by `finish()`, which
    raises `TrackingBehind` if the store still does not take it. The first time the store
    falls behind, one warning says so.

    Starting also ends, KILLED, the runs of this variant that a process on this machine left
    RUNNING and no longer lives to end (kill -9, power loss): each run carries its process's
    host and pid.
    """

    def __init__(
        self,
        experiment: str,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
        context: RunContext | None = None,
        seed: int | None = None,
    ):
        self.experiment = experiment
        self.name = name  # the variant: names its logged and registered model
        self.context = context
        label = mlflow_run_label(name, seed) if seed is not None else name
        self.display_name = context.lineage.display_name(label) if context else label
        self._monitor: Any = None
        self.params = dict(params)
        self.tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        self.run_id = run_id or ""
        self._resume_id = run_id
        self.created = False  # whether entering created the run (rather than re-opening it)
        self._client: MlflowClient | None = None
        self._calls = Caller(tracking_uri())
        self._queue = RetryQueue(name, self._calls, lambda: self.mlflow)
        self._finished = self._finish_tried = False
        self._upload = ModelUpload()
        self._staging: tempfile.TemporaryDirectory[str] | None = None

    @property
    def mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = client()
        return self._client

    def __enter__(self) -> TrainingRun:
        try:
            self._calls.probe()
            self._calls(self._open, CALL_S)
        except Exception as exc:
            raise not_usable(self._calls.uri, exc) from None
        self._start_monitor()
        return self

    def _start_monitor(self) -> None:
        """System metrics (CPU, memory, disk, network, GPU: `system/*`) every 10 s
        (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL), sampled with psutil on a daemon thread."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=not self.created, tracking_uri=self._calls.uri
            )
            self._monitor.start()
        except Exception as exc:  # a missing psutil or GPU library must not stop training
            log.warning("%s: system metrics are not recorded (%s)", self.name, first_line(exc))
            self._monitor = None

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        # Its thread may be stuck in MLflow's retries of a dead server, and `finish` joins it
        # unbounded: waited for a few seconds on a thread of its own (not `_calls`, whose next
        # call would wait for it too). Past that, the last sample is lost, nothing else.
        stopper = threading.Thread(
            target=_finish_monitor, args=(monitor, self.name), name="resnetlab-sysmetrics",
            daemon=True,
        )  # fmt: skip
        stopper.start()
        stopper.join(_MONITOR_STOP_S)
        if stopper.is_alive():
            log.debug("%s: system metrics monitor did not stop in time", self.name)

    def _open(self) -> None:
        """Create the run, or re-open the one to resume (on the worker thread)."""
        from mlflow.entities import Param, RunTag

        c = self.mlflow
        exp_id = experiment_id(c, self.experiment)
        self._end_orphans(c, exp_id)
        if self._resume_id is not None:
            try:
                c.get_run(self._resume_id)
            except Exception as exc:
                if not is_missing(exc):
                    raise
                log.warning(
                    "MLflow run %s from the checkpoint is gone; starting a new one", self._resume_id
                )
                self._resume_id = None
        self.created = self._resume_id is None
        if self._resume_id is None:
            tags = dict(self.tags)
            if self.context is not None:
                tags.update(self._context_tags(c, exp_id, self.context))
            run = c.create_run(exp_id, run_name=self.display_name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, _param(v)) for k, v in self.params.items()]
            for start in range(0, len(params), _BATCH):
                c.log_batch(self.run_id, params=params[start : start + _BATCH])
            if self.context is not None and self.context.dataset is not None:
                c.log_inputs(self.run_id, datasets=[dataset_input(self.context.dataset)])
        else:
            self.run_id = self._resume_id
            c.update_run(self.run_id, status="RUNNING")
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])

    @staticmethod
    def _context_tags(c: MlflowClient, exp_id: str, context: RunContext) -> dict[str, str]:
        group = context.lineage
        # The group's key goes in a tag of its own: PARENT_KEY_TAG marks the parent alone.
        tags = {k: v for k, v in group.tags().items() if k != PARENT_KEY_TAG}
        tags["resnetlab.group"] = group.key
        tags["mlflow.parentRunId"] = parent_run(c, exp_id, group)
        if context.description:
            tags["mlflow.note.content"] = context.description
        return tags

    def _end_orphans(self, c: MlflowClient, exp_id: str) -> None:
        host = self.tags[HOST_TAG]
        for run in c.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            pid = tags.get(PID_TAG, "")
            if (
                run.info.run_name != self.display_name
                or tags.get(HOST_TAG) != host
                or run.info.run_id == self._resume_id
                or not pid.isdigit()
                or _process_alive(int(pid))
            ):
                continue
            c.set_terminated(run.info.run_id, status="KILLED")
            log.info(
                "%s: MLflow run %s was left RUNNING by process %s, which is gone; marked KILLED",
                self.name,
                run.info.run_id,
                pid,
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and not self._finish_tried:
                self.finish()
            elif exc_type is not None and not isinstance(exc, TrackingBehind):
                self._stop_monitor()
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
                end = Record(f"the end ({status})", self._terminator(status))
                # Best effort: the stage is failing already, with its own message.
                if not self._queue.flush([end]):
                    log.warning(
                        "%s: MLflow run %s is not marked %s", self.name, self.run_id, status
                    )
        finally:
            if self._staging is not None:
                self._staging.cleanup()

    def finish(self) -> None:
        """Record everything pending and end the run FINISHED, or raise `TrackingBehind`."""
        self._finish_tried = True
        self._stop_monitor()
        if not self._queue.flush([Record("its end", self._terminator("FINISHED"))]):
            raise TrackingBehind(self._calls.uri, self.run_id, self.pending(), self._queue.reason)
        self._finished = True

    def _terminator(self, status: str) -> Callable[[MlflowClient], object]:
        return lambda c: c.set_terminated(self.run_id, status=status)

    def pending(self) -> str:
        """What the store has not taken yet, in words: `epochs 2-5, the model, its end`."""
        return self._queue.describe()

    # --- listener -----------------------------------------------------------------------------

    def on_start(self, event: RunStart) -> None:
        if event.resumed_epoch == 0:
            self._add("the parameter count", {"parameters": float(event.parameters)}, step=0)
        else:
            # The checkpoint is written before listeners hear of its epochs, so an interruption
            # can leave epochs on disk that never reached the run: log those now.
            self.log_history(event.history)
        self._queue.flush()

    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        """Log the epochs of `rows` that the run does not hold yet."""
        rows = tuple(rows)
        if rows:
            what = epoch_range([r.epoch for r in rows]) + " (those the run lacks)"
            self._queue.add(Record(what, lambda c: self._log_missing(c, rows), UPLOAD_S))

    def _log_missing(self, c: MlflowClient, rows: Sequence[HistoryRow]) -> None:
        logged = {m.step for m in c.get_metric_history(self.run_id, "val_accuracy")}
        missing = [
            m for r in rows if r.epoch not in logged for m in _metrics(_row_metrics(r), r.epoch)
        ]
        for start in range(0, len(missing), _METRICS_BATCH):
            c.log_batch(self.run_id, metrics=missing[start : start + _METRICS_BATCH])

    def on_checkpoint(self, event: Checkpointed) -> None:
        # Epochs are recorded once the checkpoint holds them, not as they end: a run
        # interrupted between checkpoints trains those epochs again, and the run would hold
        # each of them twice.
        for row in event.rows:
            self._add(f"epoch {row.epoch}", _row_metrics(row), step=row.epoch, epoch=row.epoch)
        self._queue.flush()

    # --- records (kept until `finish()` or the next epoch hands them over) --------------------

    def _add(self, what: str, metrics: Mapping[str, float], step: int, epoch: int | None = None):
        # Timestamped now: a record sent twice (an abandoned call that got through after all)
        # is the same metric, not a second point.
        call = functools.partial(_log_batch, self.run_id, _metrics(metrics, step))
        self._queue.add(Record(what, call, epoch=epoch))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._add(", ".join(metrics), metrics, step)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        run_id = self.run_id
        self._queue.add(
            Record(artifact_file, lambda c: c.log_table(run_id, frame, artifact_file), UPLOAD_S)
        )

    def log_files(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self._queue.add(Record(Path(path).name, self._uploader(path, artifact_path)))

    def _uploader(self, path: Path, artifact_path: str | None) -> Callable[[MlflowClient], object]:
        run_id = self.run_id
        return lambda c: c.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_outputs(
        self,
        classifier: torch.nn.Module,
        record: ModelRecord,
        history: History,
        summary: TrainSummary,
        metrics_dir: Path,
        example: np.ndarray,
    ) -> None:
        """What a finished training adds to its run (also what `resnetlab relog` records): the
        model, the history table, train.json, model.json and history.csv, and the best epoch's
        numbers."""
        about = registry.facts(
            self.name,
            self.tags,
            self.context.description if self.context else "",
            record.best_val_accuracy,
            record.best_epoch,
        )
        self.log_model(classifier, example, record.classes, about)
        self.log_table(history.frame(), "history.json")
        self.log_files([metrics_dir / n for n in (TRAIN_JSON, MODEL_JSON, HISTORY_CSV)])
        best = {"best_val_accuracy": record.best_val_accuracy, "best_epoch": record.best_epoch}
        self.log_metrics(best, step=summary.epochs)

    def log_model(
        self,
        model: torch.nn.Module,
        input_example: np.ndarray,
        classes: Sequence[str],
        about: registry.VersionFacts | None = None,
    ) -> None:
        """Log `model` as an MLflow logged model named after the variant (`runs:/<run>/<variant>`,
        `models:/<model id>`), a run output, registered as version n+1 of `resnetlab-<variant>`.
        Two flavors over one pt2 program (see `save_model_artifact`): `mlflow.pytorch.load_model`
        gives the network (logits), pyfunc/serving gives class names and probabilities.
        Exported (seconds) only when the store answers, then uploaded with the other records."""
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="resnetlab-model-")
        local = Path(self._staging.name) / "model"
        export = functools.partial(save_model_artifact, model, local, input_example, classes)
        upload = functools.partial(
            self._upload,
            local,
            self.run_id,
            self.name,
            {k: _param(v) for k, v in self.params.items()},
            facts=about,
        )
        self._queue.add(Record("the model", upload, UPLOAD_S, prepare=export))


def _log_batch(run_id: str, metrics: Sequence[Any], c: MlflowClient) -> None:
    c.log_batch(run_id, metrics=metrics)


def _row_metrics(row: HistoryRow) -> dict[str, float]:
    return {k: v for k, v in vars(row).items() if k != "epoch"}


def _metrics(metrics: Mapping[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = now_ms()
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _finish_monitor(monitor: Any, name: str) -> None:
    """Stop MLflow's system metrics monitor, then record one last sample. The monitor publishes
    a sample only once a sampling interval (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, 10 s by
    default) has passed and drops the window `finish` cuts short, so a run shorter than one
    interval would otherwise have no system metrics at all."""
    monitor.finish()
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as exc:  # a store that stopped answering: the last sample is lost
        log.debug("%s: last system metrics sample not recorded (%s)", name, first_line(exc))

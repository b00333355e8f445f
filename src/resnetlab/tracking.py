"""Everything that talks to MLflow. Other modules call these and never import mlflow.

MLflow is reached through an explicit `MlflowClient` on `tracking_uri()`: `MLFLOW_TRACKING_URI`
when set, else the SQLite store `mlflow.db` in the current directory (the project root when DVC
runs a stage), which `mlflow ui` opens by default. Nothing here sets MLflow's global tracking
URI or active experiment, and nothing writes to `os.environ`.

Every call is bounded in time. MLflow's REST client retries an unreachable server for minutes
(`MLFLOW_HTTP_REQUEST_TIMEOUT` x `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, read from the environment,
which is the user's to set; neither `MlflowClient` nor its REST store takes a timeout or retry
count of its own), so a stage first probes the server's `/health` with a short timeout and runs
each call on a worker thread that it waits for only so long (`_Caller`).
During training a call that fails is kept and retried at the next epoch and at the end: the
epochs are on disk already, and training never waits minutes for tracking.

Output-neutral by design: what is recorded here mirrors what the stages write to disk; no DVC
output depends on this module's code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from resnetlab.errors import ResnetlabError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from resnetlab.records import History, HistoryRow, ModelRecord, TrainSummary
    from resnetlab.training import EpochEnd, RunStart, StepProgress

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's param values are limited in length; longer ones (none expected) are cut.
_PARAM_MAX = 6000
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
_METRICS_BATCH = 1000  # ... and at most 1000 metrics
_PROBE_TIMEOUT_S = 3.0  # a live server answers /health in milliseconds
_CALL_S = 20.0  # one metadata call (params, metrics, tags, status, lookups)
_UPLOAD_S = 120.0  # one artifact upload; the largest model is a few MB
# Tags that let a later execution tell whether the process recording a RUNNING run still lives.
HOST_TAG, PID_TAG = "host", "pid"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# --- bounded calls ----------------------------------------------------------------------------


class Unreachable(Exception):
    """The tracking server did not answer: its /health probe failed, or a call overran."""


class _Caller:
    """Runs MLflow calls one at a time on a daemon thread, waiting at most a deadline for each.

    A call that overruns is abandoned, not stopped: its thread runs on until MLflow gives up (a
    daemon thread never holds up the process's exit). The next call first waits for it, within
    its own deadline, so that two calls never overlap.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._thread: threading.Thread | None = None

    def probe(self) -> None:
        """Raise `Unreachable` unless an HTTP(S) server answers /health; other stores (SQLite,
        files) have nothing to probe."""
        if urlparse(self.uri).scheme not in ("http", "https"):
            return
        try:
            url = self.uri.rstrip("/") + "/health"
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
                response.read(64)
        except (OSError, ValueError) as exc:  # URLError, timeouts, HTTP errors, bad URLs
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"unreachable ({_first_line(reason)})") from None

    def __call__(self, fn: Callable[[], T], deadline_s: float) -> T:
        end = time.monotonic() + deadline_s
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(max(0.0, end - time.monotonic()))
            if self._thread.is_alive():
                raise Unreachable("unreachable (an earlier call is still waiting for an answer)")
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc

        self._thread = threading.Thread(target=target, name="resnetlab-mlflow", daemon=True)
        self._thread.start()
        self._thread.join(max(0.0, end - time.monotonic()))
        if self._thread.is_alive():
            raise Unreachable(f"unreachable (no answer within {deadline_s:.0f} s)")
        if "error" in box:
            raise box["error"]
        return box["value"]


def _is_missing(exc: BaseException) -> bool:
    """MLflow's 'no such run/experiment/model' (as opposed to an unreachable store)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _not_usable(uri: str, exc: BaseException) -> ResnetlabError:
    return ResnetlabError(
        f"MLflow tracking store {uri} is not usable: {_first_line(exc)}. "
        "Start the server, fix MLFLOW_TRACKING_URI, or unset it to record into ./mlflow.db"
    )


def ensure_reachable(experiment: str) -> str:
    """Fail fast (before any work, in seconds) if the tracking store cannot be used; returns
    the id of `experiment`, created if missing."""
    uri = tracking_uri()
    calls = _Caller(uri)
    try:
        calls.probe()
        return calls(lambda: experiment_id(client(), experiment), _CALL_S)
    except Exception as exc:  # any failure: the message says which store and why
        raise _not_usable(uri, exc) from None


def check_run(run_id: str, what: str) -> None:
    """Fail fast if run `run_id` cannot be recorded into: the store is unreachable, or it does
    not hold that run (`what` says where the id came from)."""
    uri = tracking_uri()
    calls = _Caller(uri)
    try:
        calls.probe()
        calls(lambda: client().get_run(run_id), _CALL_S)
    except Exception as exc:
        if _is_missing(exc):
            raise ResnetlabError(
                f"MLflow run {run_id} ({what}) not found in {uri}. Re-run its train stage "
                "(dvc repro -f train@<variant>) to record a new one."
            ) from None
        raise _not_usable(uri, exc) from None


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:  # created meanwhile by a concurrent stage
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def run_name(variant: str, seed: int) -> str:
    """The MLflow run name of one training seed of a variant."""
    return f"{variant} · seed {seed}"


def training_tags(variant: str, device: object, processes: int, seed: int) -> dict[str, str]:
    """Tags of a variant's training run: `common_tags` plus what ran it. The `variant` tag groups
    a variant's seeds (the runs of one variant share it; group or filter by it in the UI), the
    `seed` tag tells them apart."""
    import torch

    return {
        **common_tags("train"),
        "variant": variant,
        "seed": str(seed),
        "device": str(device),
        "torch_version": torch.__version__,
        "num_processes": str(processes),
    }


def common_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: the stage, the git commit, and DVC's experiment name and baseline
    revision while `dvc exp run` executes the stage."""
    tags = {"stage": stage}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    return text[:_PARAM_MAX]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Record:
    """Something to record into the run, kept until the store has taken it."""

    what: str  # for messages: "epoch 3", "the model", ...
    call: Callable[[MlflowClient], object]
    deadline_s: float = _CALL_S
    epoch: int | None = None
    prepare: Callable[[], object] | None = None  # local work before the call (an export)


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
        if out_dir != Path("models") / run or metrics_dir != Path("metrics") / run:
            relog += (
                f" --models-dir {out_dir.parent.parent} --metrics-dir {metrics_dir.parent.parent}"
            )
        return (
            f"{name}: training is complete but not recorded: {self}. The model and metrics are "
            f"on disk ({out_dir / 'model.pt'}, {metrics_dir / 'history.csv'}, "
            f"{metrics_dir / 'train.json'}); when the store answers, record them with "
            f"`{relog}`, or re-run this stage (it resumes after the last epoch, trains nothing "
            "and records)"
        )


class TrainingRun:
    """A variant's MLflow run for one execution of the train stage, and a training listener.

    As a context manager it starts the run (or, with `run_id`, re-opens the run an interrupted
    execution left), and on the way out ends it KILLED on Ctrl-C or FAILED on an error;
    `finish()` records what is still pending and ends it FINISHED. Starting fails the stage if
    the store does not answer. As a listener (`resnetlab.training.TrainingListener`) it logs
    each epoch's metrics with step = epoch; what the store does not take in time is kept and
    retried at the next epoch and by `finish()`, which raises `TrackingBehind` if the store
    still does not take it. The first time the store falls behind, one warning says so.

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
    ):
        self.experiment = experiment
        self.name = name
        self.params = dict(params)
        self.tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        self.run_id = run_id or ""
        self._resume_id = run_id
        self.created = False  # whether entering created the run (rather than re-opening it)
        self._client: MlflowClient | None = None
        self._calls = _Caller(tracking_uri())
        self._pending: list[_Record] = []
        self._behind = False
        self._finished = self._finish_tried = False
        self._reason = ""
        self._staging: tempfile.TemporaryDirectory[str] | None = None

    @property
    def mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = client()
        return self._client

    def __enter__(self) -> TrainingRun:
        try:
            self._calls.probe()
            self._calls(self._open, _CALL_S)
        except Exception as exc:
            raise _not_usable(self._calls.uri, exc) from None
        return self

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
                if not _is_missing(exc):
                    raise
                log.warning(
                    "MLflow run %s from the checkpoint is gone; starting a new one", self._resume_id
                )
                self._resume_id = None
        self.created = self._resume_id is None
        if self._resume_id is None:
            run = c.create_run(exp_id, run_name=self.name, tags=self.tags)
            self.run_id = run.info.run_id
            params = [Param(k, _param(v)) for k, v in self.params.items()]
            for start in range(0, len(params), _BATCH):
                c.log_batch(self.run_id, params=params[start : start + _BATCH])
        else:
            self.run_id = self._resume_id
            c.update_run(self.run_id, status="RUNNING")
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])

    def _end_orphans(self, c: MlflowClient, exp_id: str) -> None:
        host = self.tags[HOST_TAG]
        for run in c.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            pid = tags.get(PID_TAG, "")
            if (
                run.info.run_name != self.name
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
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
                end = _Record(f"the end ({status})", self._terminator(status))
                # Best effort: the stage is failing already, with its own message.
                if not self._flush([end]):
                    log.warning(
                        "%s: MLflow run %s is not marked %s", self.name, self.run_id, status
                    )
        finally:
            if self._staging is not None:
                self._staging.cleanup()

    def finish(self) -> None:
        """Record everything pending and end the run FINISHED, or raise `TrackingBehind`."""
        self._finish_tried = True
        if not self._flush([_Record("its end", self._terminator("FINISHED"))]):
            raise TrackingBehind(self._calls.uri, self.run_id, self.pending(), self._reason)
        self._finished = True

    def _terminator(self, status: str) -> Callable[[MlflowClient], object]:
        return lambda c: c.set_terminated(self.run_id, status=status)

    # --- what is not recorded yet -------------------------------------------------------------

    def _flush(self, more: Sequence[_Record] = ()) -> bool:
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
                self._calls(functools.partial(record.call, self.mlflow), record.deadline_s)
            except Exception as exc:
                return self._fell_behind(exc)
            self._pending.pop(0)
        if self._behind:
            self._behind = False
            log.info("%s: MLflow tracking caught up", self.name)
        return True

    def _fell_behind(self, exc: Exception) -> bool:
        self._reason = _first_line(exc)
        if not self._behind:
            self._behind = True
            log.warning(
                "%s: MLflow tracking is behind: %s did not take %s (%s); nothing is lost (it "
                "is on disk), and it is retried at each epoch and at the end",
                self.name,
                self._calls.uri,
                self.pending(),
                self._reason,
            )
        return False

    def pending(self) -> str:
        """What the store has not taken yet, in words: `epochs 2-5, the model, its end`."""
        epochs = [r.epoch for r in self._pending if r.epoch is not None]
        others = list(dict.fromkeys(r.what for r in self._pending if r.epoch is None))
        parts = [_epoch_range(epochs)] if epochs else []
        return ", ".join(parts + others) or "nothing"

    # --- listener -----------------------------------------------------------------------------

    def on_start(self, event: RunStart) -> None:
        if event.resumed_epoch == 0:
            self._add("the parameter count", {"parameters": float(event.parameters)}, step=0)
        else:
            # The checkpoint is written before listeners hear of an epoch, so an interruption
            # can leave epochs on disk that never reached the run: log those now.
            self.log_history(event.history)
        self._flush()

    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        """Log the epochs of `rows` that the run does not hold yet."""
        rows = tuple(rows)
        if rows:
            what = _epoch_range([r.epoch for r in rows]) + " (those the run lacks)"
            self._pending.append(_Record(what, lambda c: self._log_missing(c, rows), _UPLOAD_S))

    def _log_missing(self, c: MlflowClient, rows: Sequence[HistoryRow]) -> None:
        logged = {m.step for m in c.get_metric_history(self.run_id, "val_accuracy")}
        missing = [
            m for r in rows if r.epoch not in logged for m in _metrics(_row_metrics(r), r.epoch)
        ]
        for start in range(0, len(missing), _METRICS_BATCH):
            c.log_batch(self.run_id, metrics=missing[start : start + _METRICS_BATCH])

    def on_epoch_start(self, epoch: int, epochs: int) -> None: ...

    def on_step(self, event: StepProgress) -> None: ...

    def on_epoch_end(self, event: EpochEnd) -> None:
        row = event.row
        self._add(f"epoch {row.epoch}", _row_metrics(row), step=row.epoch, epoch=row.epoch)
        self._flush()

    def on_stop(self) -> None: ...

    # --- records (kept until `finish()` or the next epoch hands them over) --------------------

    def _add(self, what: str, metrics: Mapping[str, float], step: int, epoch: int | None = None):
        # Timestamped now: a record sent twice (an abandoned call that got through after all)
        # is the same metric, not a second point.
        call = functools.partial(_log_batch, self.run_id, _metrics(metrics, step))
        self._pending.append(_Record(what, call, epoch=epoch))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._add(", ".join(metrics), metrics, step)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        run_id = self.run_id
        self._pending.append(
            _Record(artifact_file, lambda c: c.log_table(run_id, frame, artifact_file), _UPLOAD_S)
        )

    def log_files(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self._pending.append(_Record(Path(path).name, self._uploader(path, artifact_path)))

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
        model, the history table, train.json and history.csv, and the best epoch's numbers."""
        self.log_model(classifier, example, record.classes)
        self.log_table(history.frame(), "history.json")
        self.log_files([metrics_dir / "train.json", metrics_dir / "history.csv"])
        best = {"best_val_accuracy": record.best_val_accuracy, "best_epoch": record.best_epoch}
        self.log_metrics(best, step=summary.epochs)

    def log_model(
        self, model: torch.nn.Module, input_example: np.ndarray, classes: Sequence[str]
    ) -> None:
        """Log `model` as the run's `model` artifact: pyfunc-servable on N x 3 x 32 x 32 float
        arrays in [0, 1]; output: logits in the order of `classes` (kept in its metadata).
        Exported (seconds) only when the store answers, then uploaded with the other records."""
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="resnetlab-model-")
        local = Path(self._staging.name) / "model"
        export = functools.partial(save_model_artifact, model, local, input_example, classes)
        upload = functools.partial(_log_artifacts, self.run_id, str(local), "model")
        self._pending.append(_Record("the model", upload, _UPLOAD_S, prepare=export))


def _log_batch(run_id: str, metrics: Sequence[Any], c: MlflowClient) -> None:
    c.log_batch(run_id, metrics=metrics)


def _log_artifacts(run_id: str, local: str, artifact_path: str, c: MlflowClient) -> None:
    c.log_artifacts(run_id, local, artifact_path=artifact_path)


def _row_metrics(row: HistoryRow) -> dict[str, float]:
    return {k: v for k, v in vars(row).items() if k != "epoch"}


def _metrics(metrics: Mapping[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = _now_ms()
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def _epoch_range(epochs: Sequence[int]) -> str:
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return "epochs " + ", ".join(map(str, epochs))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def save_model_artifact(
    model: torch.nn.Module, local: Path, input_example: np.ndarray, classes: Sequence[str]
) -> None:
    """Save `model` as an MLflow model folder at `local`, in the one format
    `resnetlab.logged_model` loads back: pt2 (torch.export's program), no code paths."""
    import mlflow.pytorch
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    mlflow.pytorch.save_model(
        model,
        str(local),
        signature=infer_signature(input_example, output),
        input_example=input_example,
        metadata={"classes": list(classes)},
        # torch.export's program: loading it runs no pickled code and needs no resnetlab.
        serialization_format="pt2",
        # Explicit requirements skip MLflow's slow inference of them.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )


def model_folder(model_uri: str) -> Path:
    """A local folder holding the MLflow model at `model_uri` (`runs:/<id>/model`,
    `models:/<name>/<version>`, a local path, ...); downloads only from remote stores. Nothing
    in it is loaded here: see `resnetlab.logged_model`."""
    uri = tracking_uri()
    calls = _Caller(uri)
    try:
        if urlparse(model_uri).scheme in ("runs", "models"):
            calls.probe()
        return calls(lambda: _local_model_dir(model_uri), _UPLOAD_S)
    except ResnetlabError:
        raise
    except Exception as exc:
        raise ResnetlabError(
            f"cannot load the MLflow model {model_uri} (tracking store {uri}): {_first_line(exc)}"
        ) from None


def _local_model_dir(model_uri: str) -> Path:
    parsed = urlparse(model_uri)
    source = model_uri
    if parsed.scheme == "runs":
        run_id, _, path = model_uri[len("runs:/") :].partition("/")
        source = client().get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    elif parsed.scheme == "models":
        name, _, version = model_uri[len("models:/") :].partition("/")
        source = client().get_model_version_download_uri(name, version)
    local = urlparse(source)
    if local.scheme in ("", "file"):
        folder = Path(local.path if local.scheme else source)
        if not (folder / "MLmodel").is_file():
            raise ResnetlabError(f"{folder}: no MLmodel file there")
        return folder
    import mlflow.artifacts

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri())
    )


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Sequence[Path]) -> None:
    """Add test-set metrics (already `test_`-prefixed) and files to a finished training run."""
    uri = tracking_uri()
    calls = _Caller(uri)
    now = _now_ms()

    def record() -> None:
        from mlflow.entities import Metric

        c = client()
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for path in files:
            c.log_artifact(run_id, str(path), artifact_path="evaluation")

    try:
        calls.probe()
        calls(record, _UPLOAD_S)
    except Exception as exc:
        where = Path(files[0]).parent if files else "disk"
        raise ResnetlabError(
            f"MLflow tracking store {uri} did not take the evaluation ({_first_line(exc)}): it "
            f"is written to {where} but not recorded in run {run_id}; re-run this stage when "
            "the store answers"
        ) from None


def log_comparison(
    experiment: str,
    leaderboard: pd.DataFrame,
    files: Iterable[Path],
    variant_files: Mapping[str, Sequence[Path]] | None = None,
) -> str:
    """Record the leaderboard and comparison figures as a run of their own, and each variant's
    figures into that variant's training run (`variant_files`: run id -> files); returns the
    comparison run's id."""
    uri = tracking_uri()
    calls = _Caller(uri)
    files = list(files)
    made: list[str] = []

    def record() -> str:
        from mlflow.entities import RunTag

        c = client()
        run = c.create_run(experiment_id(c, experiment), run_name="compare")
        made.append(run.info.run_id)
        c.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in common_tags("compare").items()])
        c.log_table(run.info.run_id, leaderboard, "leaderboard.json")
        for path in files:
            c.log_artifact(run.info.run_id, str(path))
        for variant_run, paths in (variant_files or {}).items():
            try:
                c.get_run(variant_run)
            except Exception as exc:
                if not _is_missing(exc):
                    raise
                log.warning("MLflow run %s is gone; its figures are not logged", variant_run)
                continue
            for path in paths:
                c.log_artifact(variant_run, str(path), artifact_path="figures")
        c.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

    try:
        calls.probe()
        return calls(record, _UPLOAD_S)
    except Exception as exc:
        if made:  # best effort: the stage fails with the message below either way
            try:
                calls(lambda: client().set_terminated(made[0], status="FAILED"), _CALL_S)
            except Exception:
                log.debug("comparison run %s not marked FAILED", made[0])
        raise ResnetlabError(
            f"MLflow tracking store {uri} did not take the comparison ({_first_line(exc)}): the "
            "reports are written but not recorded; re-run this stage when the store answers"
        ) from None


def registered_model_uris(limit: int = 200) -> list[str]:
    """`models:/<name>/<version>` for the registered model versions in the store (by name, the
    newest version first); none if the store has no registry or cannot be read."""
    try:
        versions = client().search_model_versions(max_results=limit)
    except Exception as exc:  # an unreachable store must not break the caller's page
        log.warning("cannot list registered models in %s: %s", tracking_uri(), _first_line(exc))
        return []
    ordered = sorted(versions, key=lambda v: (v.name, -int(v.version)))
    return [f"models:/{v.name}/{v.version}" for v in ordered]

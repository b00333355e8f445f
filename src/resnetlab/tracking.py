"""Everything that talks to MLflow. Other modules call these and never import mlflow.

MLflow is reached through an explicit `MlflowClient` on `tracking_uri()`: `MLFLOW_TRACKING_URI`
when set, else the SQLite store `mlflow.db` (artifacts in `mlruns/`) at the project root (DVC's
DVC_ROOT, also for queued experiments in temporary copies; else the current directory), which
`mlflow ui` opens by default. Nothing here sets MLflow's global tracking
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
import hashlib
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
_MONITOR_STOP_S = 3.0  # the system metrics monitor's last sample and flush
# Tags that let a later execution tell whether the process recording a RUNNING run still lives.
HOST_TAG, PID_TAG = "host", "pid"
# The parent run of a DVC experiment (or of a plain `dvc repro`) carries its key in this tag; see
# `Lineage`.
PARENT_KEY_TAG = "resnetlab.parent_key"
# Set by the MLproject entry points to the run `mlflow run` made (which they unset as
# MLFLOW_RUN_ID so that nothing logs into it by accident); see `Lineage`.
LAUNCH_RUN_ENV = "RESNETLAB_LAUNCH_RUN_ID"
# The module MLflow's pyfunc flavor imports to load the logged models (serving.py).
PYFUNC_LOADER = "resnetlab.serving"
# How long a stage that created a parent run waits before looking for a concurrent creator's.
_SETTLE_S = 0.3


def project_root() -> Path:
    """The project's root: DVC sets DVC_ROOT for every stage command, to the workspace's root even
    when the stage runs in a temporary copy (`dvc exp run --queue` / `--temp`), whose own
    mlflow.db and mlruns/ would vanish with it; else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def _artifact_location() -> str | None:
    """Where a new experiment keeps its artifacts: the project's mlruns/ for the default store
    (MLflow would pick the creating process's current directory, a temporary copy under a
    queued experiment); the server's or store's choice otherwise."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (project_root() / "mlruns").as_uri()


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
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location())
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


def run_label(variant: str, seed: int) -> str:
    """How the MLflow run name of one training seed of a variant starts (`Lineage.run_name`
    appends the DVC experiment). Not `records.run_name`, the `<variant>-<seed>` of stage names
    and metrics keys."""
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


# --- where a run belongs: one parent run per DVC experiment -----------------------------------


@dataclass(frozen=True)
class Lineage:
    """The group a stage's run belongs to, and the key of that group's parent run.

    - Under `dvc exp run`: the DVC experiment, `dvc-exp:<name>@<baseline commit>`. DVC names an
      experiment uniquely per baseline commit (its ref is refs/exps/<baseline>/<name>), so the
      name alone could join a re-used name on another commit; the pair is the experiment. Every
      stage of one `dvc exp run` (and a queued experiment's worker) sees the same DVC_EXP_NAME and
      DVC_EXP_BASELINE_REV, so all find the same parent.
    - Under an MLproject entry point (`mlflow run`): the run `mlflow run` made,
      `mlflow-run:<run id>`; that run is the parent when it is in the stages' experiment, and is
      linked to it (tags both ways) when it is not.
    - Under a plain `dvc repro`: `repro:<git commit>:<params digest>`, the digest being the first
      12 hex digits of SHA-256 over params.yaml's parsed content (canonical JSON, so comments and
      layout do not count). Two `dvc repro`s from the same commit with the same params share a
      parent: they are the same experiment, re-run. Uncommitted code edits are not part of the
      key (dvc.lock records them); `no-git` stands for the commit outside a git repository.
    """

    key: str
    exp_name: str = ""  # DVC's experiment name; "" outside `dvc exp run`
    baseline: str = ""  # DVC's baseline revision (a commit), under `dvc exp run`
    commit: str = ""
    launch_run: str = ""  # the `mlflow run` run, under an MLproject entry point

    @property
    def parent_name(self) -> str:
        if self.exp_name:
            return self.exp_name
        if self.launch_run:
            return f"mlflow run {self.launch_run[:8]}"
        return f"repro {self.commit[:7] or 'no-git'} {self.key.rsplit(':', 1)[-1][:6]}"

    def tags(self) -> dict[str, str]:
        tags = {PARENT_KEY_TAG: self.key}
        if self.exp_name:
            tags["dvc_exp_name"] = self.exp_name
        if self.baseline:
            tags["dvc_baseline"] = self.baseline
        if self.launch_run:
            tags["resnetlab.launch_run"] = self.launch_run
        return tags

    def run_name(self, label: str) -> str:
        """`resnet20 · seed 0 · tiny1` under a DVC experiment, else the label alone."""
        return f"{label} · {self.exp_name}" if self.exp_name else label


def params_digest(params_file: Path | None) -> str:
    """SHA-256 (12 hex digits) of the params file's parsed content; `none` without a file."""
    import yaml

    if params_file is None or not Path(params_file).is_file():
        return "none"
    raw = yaml.safe_load(Path(params_file).read_text())
    blob = json.dumps(raw, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def lineage(params_file: Path | None) -> Lineage:
    """The `Lineage` of the stage running now (from DVC's and `mlflow run`'s environment)."""
    commit = git_commit() or ""
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "")
    launch = os.environ.get(LAUNCH_RUN_ENV, "")
    if exp_name:
        key = f"dvc-exp:{exp_name}@{baseline or commit or 'no-git'}"
    elif launch:
        key = f"mlflow-run:{launch}"
    else:
        key = f"repro:{commit or 'no-git'}:{params_digest(params_file)}"
    return Lineage(key, exp_name, baseline, commit, launch)


def parent_run(c: MlflowClient, exp_id: str, group: Lineage) -> str:
    """The id of `group`'s parent run in experiment `exp_id`, found by its key tag or created.

    Safe when stages race (DVC queue workers, parallel `dvc exp run`s of one experiment): a
    stage that finds none creates one, waits `_SETTLE_S`, and searches again; of the parents it
    then sees, the first created (start time, then run id) is the parent, and a later one it made
    itself is deleted. Every racer picks the same one: a creator that did not see another's
    parent created it at least `_SETTLE_S` before the other's run existed, hence earlier.
    """
    from mlflow.entities import RunTag

    if group.launch_run:
        launch = _launch_run(c, group.launch_run)
        if launch is not None and launch.info.experiment_id == exp_id:
            # The `mlflow run` run is the parent; tagging it again is harmless.
            c.log_batch(launch.info.run_id, tags=[RunTag(k, v) for k, v in group.tags().items()])
            return launch.info.run_id
    found = _parents(c, exp_id, group.key)
    if found:
        return found[0]
    tags = {**common_tags("experiment"), **group.tags(), "mlflow.note.content": _parent_note(group)}
    mine = c.create_run(exp_id, run_name=group.parent_name, tags=tags).info.run_id
    # A container, not a process: FINISHED at once, so that no run stays RUNNING if compare, which
    # logs into it, does not run.
    c.set_terminated(mine, status="FINISHED")
    time.sleep(_SETTLE_S)
    winner = (_parents(c, exp_id, group.key) or [mine])[0]
    if winner != mine:
        c.delete_run(mine)
        log.info("parent run %s: a concurrent stage created %s first; using it", mine, winner)
    elif group.launch_run and (launch := _launch_run(c, group.launch_run)) is not None:
        # `mlflow run` ran in another experiment: link the two runs both ways.
        c.set_tag(launch.info.run_id, "resnetlab.parent_run", mine)
        c.set_tag(mine, "resnetlab.launch_experiment", launch.info.experiment_id)
        log.warning(
            "`mlflow run` recorded run %s in experiment %s, not in the stages' one; the two are "
            "linked by tags. Pass `--experiment-name <mlflow.experiment>` to nest the stages' "
            "runs under it",
            launch.info.run_id,
            launch.info.experiment_id,
        )
    return winner


def _parents(c: MlflowClient, exp_id: str, key: str) -> list[str]:
    runs = c.search_runs([exp_id], f"tags.`{PARENT_KEY_TAG}` = '{_quote(key)}'", max_results=100)
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]


def _launch_run(c: MlflowClient, run_id: str) -> Any:
    try:
        return c.get_run(run_id)
    except Exception as exc:
        if not _is_missing(exc):
            raise
        log.warning("%s names run %s, which the store does not hold", LAUNCH_RUN_ENV, run_id)
        return None


def _parent_note(group: Lineage) -> str:
    if group.exp_name:
        return f"DVC experiment {group.exp_name} (baseline {group.baseline[:7]})"
    if group.launch_run:
        return f"`mlflow run` {group.launch_run}"
    return f"`dvc repro` at commit {group.commit[:7] or '(no git)'}, params {group.key[-12:]}"


@dataclass(frozen=True)
class DatasetInfo:
    """The prepared data a run trained on, as MLflow's dataset input: a digest of the arrays,
    a name, where it came from, and the split sizes (its profile)."""

    name: str
    digest: str
    source: str  # the archive's URL or path
    splits: Mapping[str, int]


@dataclass(frozen=True)
class RunContext:
    """What places and describes a training run: its group (parent run), a one-line
    description, and the data it trained on (None when unknown, as for `resnetlab relog`)."""

    lineage: Lineage
    description: str = ""
    dataset: DatasetInfo | None = None


def describe_run(
    model: Mapping[str, Any], overrides: Sequence[str], variant: str, data: str
) -> str:
    """The run description: one line naming the model, the recipe's source and the data."""
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    recipe = "params.yaml `train`"
    if overrides:
        recipe += f" + variants.{variant} ({', '.join(overrides)})"
    return f"model {model.get('name')}({args}) · recipe: {recipe} · data: {data}"


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
        context: RunContext | None = None,
        seed: int | None = None,
    ):
        self.experiment = experiment
        self.name = name  # the variant: names its logged and registered model
        self.context = context
        label = run_label(name, seed) if seed is not None else name
        self.run_name = context.lineage.run_name(label) if context else label
        self.model_id = ""  # the logged model, once created
        self.model_version = ""  # its registered version, once registered
        self._monitor: Any = None
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
            log.warning("%s: system metrics are not recorded (%s)", self.name, _first_line(exc))
            self._monitor = None

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        # Its thread may be stuck in MLflow's retries of a dead server, and `finish` joins it
        # unbounded: waited for a few seconds on a thread of its own (not `_calls`, whose next
        # call would wait for it too). Past that, the last sample is lost, nothing else.
        stopper = threading.Thread(target=monitor.finish, name="resnetlab-sysmetrics", daemon=True)
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
                if not _is_missing(exc):
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
            run = c.create_run(exp_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, _param(v)) for k, v in self.params.items()]
            for start in range(0, len(params), _BATCH):
                c.log_batch(self.run_id, params=params[start : start + _BATCH])
            if self.context is not None and self.context.dataset is not None:
                c.log_inputs(self.run_id, datasets=[_dataset_input(self.context.dataset)])
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
                run.info.run_name != self.run_name
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
        self._stop_monitor()
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
        model, the history table, train.json, model.json and history.csv, and the best epoch's
        numbers."""
        self.log_model(classifier, example, record.classes)
        self.log_table(history.frame(), "history.json")
        self.log_files([metrics_dir / n for n in ("train.json", "model.json", "history.csv")])
        best = {"best_val_accuracy": record.best_val_accuracy, "best_epoch": record.best_epoch}
        self.log_metrics(best, step=summary.epochs)

    def log_model(
        self, model: torch.nn.Module, input_example: np.ndarray, classes: Sequence[str]
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
        upload = functools.partial(self._upload_model, local)
        self._pending.append(_Record("the model", upload, _UPLOAD_S, prepare=export))

    def _upload_model(self, local: Path, c: MlflowClient) -> None:
        """Each step once, even when a retry follows a call abandoned half way."""
        from mlflow.entities import LoggedModelOutput

        if not self.model_id:
            exp_id = c.get_run(self.run_id).info.experiment_id
            params = {k: _param(v)[:_PARAM_MAX] for k, v in self.params.items()}
            logged = c.create_logged_model(
                exp_id, name=self.name, source_run_id=self.run_id, params=params,
                model_type="resnetlab-classifier",
            )  # fmt: skip
            self.model_id = logged.model_id
            c.log_model_artifacts(self.model_id, str(local))
            c.finalize_logged_model(self.model_id, "READY")
            c.log_outputs(self.run_id, [LoggedModelOutput(self.model_id, 0)])
        if not self.model_version:
            name = registered_name(self.name)
            _ensure_registered_model(c, name)
            version = c.create_model_version(
                name, f"models:/{self.model_id}", run_id=self.run_id, model_id=self.model_id,
                await_creation_for=0, tags={"variant": self.name},
            )  # fmt: skip
            self.model_version = str(version.version)


def _log_batch(run_id: str, metrics: Sequence[Any], c: MlflowClient) -> None:
    c.log_batch(run_id, metrics=metrics)


def registered_name(variant: str) -> str:
    return f"resnetlab-{variant}"


def _ensure_registered_model(c: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description=f"resnetlab variant {name[10:]}")
    except MlflowException as exc:  # it exists (made by an earlier or a concurrent training)
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise


def _dataset_input(dataset: DatasetInfo) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    kind = urlparse(dataset.source).scheme
    entity = Dataset(
        name=dataset.name,
        digest=dataset.digest,
        source_type="http" if kind in ("http", "https") else "local",
        source=json.dumps({"url": dataset.source}),
        profile=json.dumps({f"{k}_images": v for k, v in dataset.splits.items()}),
    )
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])


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
    `resnetlab.logged_model` loads back: pt2 (torch.export's program), no code paths, nothing
    pickled. Two flavors read that one program: `pytorch` (`mlflow.pytorch.load_model`: the
    network, [0, 1] N x 3 x 32 x 32 images in, logits out) and `python_function`, whose loader is
    `resnetlab.serving` (pyfunc and `mlflow models serve`: one row per image with the predicted
    class, its probability and every class's probability; the output schema names the classes).
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    model = model.cpu().eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
        outputs=Schema(
            [ColSpec("string", "class"), ColSpec("double", "probability")]
            + [ColSpec("double", name) for name in classes]
        ),
    )
    mlflow.pytorch.save_model(
        model,
        str(local),
        signature=signature,
        input_example=input_example,
        metadata={"classes": list(classes)},
        # torch.export's program: loading it runs no pickled code and needs no resnetlab.
        serialization_format="pt2",
        # Explicit requirements skip MLflow's slow inference of them. The pyfunc loader is
        # resnetlab's: serve with `--env-manager local` in an environment that has it installed.
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )
    spec = Model.load(str(local / "MLmodel"))
    # Named, not imported: the train stage never runs the loader (nor its imports).
    spec.flavors["python_function"]["loader_module"] = PYFUNC_LOADER
    spec.save(str(local / "MLmodel"))


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
        source = _run_model_location(client(), run_id, path)
    elif parsed.scheme == "models":
        name, _, version = model_uri[len("models:/") :].partition("/")
        if version:
            source = client().get_model_version_download_uri(name, version)
        if source.startswith("models:/"):  # a logged model: models:/<model id>
            model_id = source[len("models:/") :].strip("/")
            source = client().get_logged_model(model_id).artifact_location
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


def _run_model_location(c: MlflowClient, run_id: str, name: str) -> str:
    """Where `runs:/<run_id>/<name>` lives: the logged model `name` the run made (MLflow 3),
    else the run's artifact folder `name` (models logged as run artifacts)."""
    run = c.get_run(run_id)
    for found in c.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"name = '{_quote(name)}'"
    ):
        if found.source_run_id == run_id:
            return found.artifact_location
    return run.info.artifact_uri.rstrip("/") + "/" + name


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Sequence[Path]) -> None:
    """Add test-set metrics (already `test_`-prefixed) and files to a finished training run."""
    uri = tracking_uri()
    calls = _Caller(uri)
    now = _now_ms()

    def record() -> None:
        from mlflow.entities import Metric

        c = client()
        # Linked to the run's logged model too (MLflow 3): the Models tab ranks models by them.
        outputs = getattr(c.get_run(run_id), "outputs", None)
        models = [o.model_id for o in getattr(outputs, "model_outputs", None) or []]
        model_id = models[-1] if models else None
        batch = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()]
        c.log_batch(run_id, metrics=batch)
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
    group: Lineage,
    leaderboard: pd.DataFrame,
    files: Iterable[Path],
    variant_files: Mapping[str, Sequence[Path]] | None = None,
) -> str:
    """Record the leaderboard and comparison figures into the parent run of `group` (found or
    created, see `parent_run`), and each variant's figures into that variant's training run
    (`variant_files`: run id -> files); returns the parent run's id."""
    uri = tracking_uri()
    calls = _Caller(uri)
    files = list(files)

    def record() -> str:
        from mlflow.entities import RunTag

        c = client()
        parent = parent_run(c, experiment_id(c, experiment), group)
        tags = {**common_tags("compare"), **group.tags(), "compared": "true"}
        # The leaderboard as an MLflow table (the UI shows it as one); written whole each time,
        # where log_table would append the rows to a re-run's earlier table.
        tags["mlflow.loggedArtifacts"] = json.dumps([{"path": "leaderboard.json", "type": "table"}])
        with tempfile.TemporaryDirectory(prefix="resnetlab-compare-") as tmp:
            table = Path(tmp) / "leaderboard.json"
            table.write_text(leaderboard.to_json(orient="split", index=False))
            c.log_artifact(parent, str(table))
        c.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            c.log_artifact(parent, str(path))
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
        c.set_terminated(parent, status="FINISHED")
        return parent

    try:
        calls.probe()
        return calls(record, _UPLOAD_S)
    except Exception as exc:
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

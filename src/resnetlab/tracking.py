"""Everything that talks to MLflow. Other modules call these and never import mlflow.

MLflow is reached through an explicit `MlflowClient` on `tracking_uri()`: `MLFLOW_TRACKING_URI`
when set, else the SQLite store `mlflow.db` in the current directory (the project root when DVC
runs a stage), which `mlflow ui` opens by default. Nothing here sets MLflow's global tracking
URI or active experiment, and nothing writes to `os.environ`.

Output-neutral by design: what is recorded here mirrors what the stages write to disk; no DVC
output depends on this module's code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from resnetlab.errors import ResnetlabError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from resnetlab.records import HistoryRow
    from resnetlab.training import EpochEnd, RunStart, StepProgress

log = logging.getLogger(__name__)

# MLflow's param values are limited in length; longer ones (none expected) are cut.
_PARAM_MAX = 6000
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
_PROBE_TIMEOUT_S = 10  # a dead server answers a health probe in seconds, not minutes of retries


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


def ensure_reachable(experiment: str) -> str:
    """Fail fast (before any work) if the tracking store cannot be used; returns the id of
    `experiment`, created if missing."""
    uri = tracking_uri()
    try:
        if urlparse(uri).scheme in ("http", "https"):
            # MLflow's own client retries for minutes; a plain probe answers in seconds.
            url = uri.rstrip("/") + "/health"
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
                response.read(64)
        return experiment_id(client(), experiment)
    except Exception as exc:  # any failure: the message says which store and why
        raise ResnetlabError(
            f"MLflow tracking store {uri} is not usable: {_first_line(exc)}. "
            "Start the server, fix MLFLOW_TRACKING_URI, or unset it to record into ./mlflow.db"
        ) from None


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


class TrainingRun:
    """A variant's MLflow run for one execution of the train stage, and a training listener.

    As a context manager it starts the run (or, with `run_id`, re-opens the run an interrupted
    execution left) and ends it FINISHED, KILLED on Ctrl-C or FAILED on an error. As a listener
    (`resnetlab.training.TrainingListener`) it logs each epoch's metrics with step = epoch.
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
        self.tags = dict(tags)
        self.run_id = run_id or ""
        self._resume_id = run_id
        self._client: MlflowClient | None = None

    @property
    def mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = client()
        return self._client

    def __enter__(self) -> TrainingRun:
        from mlflow.entities import Param, RunTag

        c = self.mlflow
        if self._resume_id is not None:
            try:
                c.get_run(self._resume_id)
                c.update_run(self._resume_id, status="RUNNING")
            except Exception:
                log.warning(
                    "MLflow run %s from the checkpoint is gone; starting a new one", self._resume_id
                )
                self._resume_id = None
        if self._resume_id is None:
            exp_id = experiment_id(c, self.experiment)
            run = c.create_run(exp_id, run_name=self.name)
            self.run_id = run.info.run_id
            params = [Param(k, _param(v)) for k, v in self.params.items()]
            for start in range(0, len(params), _BATCH):
                c.log_batch(self.run_id, params=params[start : start + _BATCH])
        else:
            self.run_id = self._resume_id
        c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        self.mlflow.set_terminated(self.run_id, status=status)

    # --- listener -----------------------------------------------------------------------------

    def on_start(self, event: RunStart) -> None:
        if event.resumed_epoch == 0:
            self.log_metrics({"parameters": float(event.parameters)}, step=0)
            return
        # The checkpoint is written before listeners hear of an epoch, so an interruption can
        # leave epochs on disk that never reached the run: log those now.
        logged = {m.step for m in self.mlflow.get_metric_history(self.run_id, "val_accuracy")}
        for row in event.history:
            if row.epoch not in logged:
                self._log_row(row)

    def _log_row(self, row: HistoryRow) -> None:
        self.log_metrics({k: v for k, v in vars(row).items() if k != "epoch"}, step=row.epoch)

    def on_epoch_start(self, epoch: int, epochs: int) -> None: ...

    def on_step(self, event: StepProgress) -> None: ...

    def on_epoch_end(self, event: EpochEnd) -> None:
        self._log_row(event.row)

    def on_stop(self) -> None: ...

    # --- records ------------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.mlflow.log_batch(self.run_id, metrics=batch)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        self.mlflow.log_table(self.run_id, frame, artifact_file)

    def log_files(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.mlflow.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_model(
        self, model: torch.nn.Module, input_example: np.ndarray, classes: Sequence[str]
    ) -> None:
        """Log `model` as the run's `model` artifact: pyfunc-servable on N x 3 x 32 x 32 float
        arrays in [0, 1]; output: logits in the order of `classes` (kept in its metadata)."""
        log_model_artifact(self.mlflow, self.run_id, model, input_example, classes)


def log_model_artifact(
    mlflow_client: MlflowClient,
    run_id: str,
    model: torch.nn.Module,
    input_example: np.ndarray,
    classes: Sequence[str],
) -> None:
    import mlflow.pytorch
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
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
        mlflow_client.log_artifacts(run_id, str(local), artifact_path="model")


def _local_model_dir(mlflow_client: MlflowClient, model_uri: str) -> Path:
    """A local folder holding the MLmodel at `model_uri`; downloads only from remote stores."""
    parsed = urlparse(model_uri)
    source = model_uri
    if parsed.scheme == "runs":
        run_id, _, path = model_uri[len("runs:/") :].partition("/")
        source = mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    elif parsed.scheme == "models":
        name, _, version = model_uri[len("models:/") :].partition("/")
        source = mlflow_client.get_model_version_download_uri(name, version)
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


def load_logged_model(model_uri: str) -> tuple[torch.nn.Module, list[str] | None]:
    """The PyTorch model logged at `model_uri` (`runs:/<id>/model`, `models:/<name>/<version>`,
    a local path, ...), as `TrainingRun.log_model` logged it: [0, 1] images in, logits out; and
    its class names when the model's metadata has them."""
    try:
        import mlflow.pytorch
        from mlflow.models import Model

        folder = _local_model_dir(client(), model_uri)
        # Not .eval()'d here: the torch.export'ed module MLflow returns for the pt2 format
        # refuses train()/eval() calls (it is exported in eval mode).
        model = mlflow.pytorch.load_model(str(folder))
        metadata = Model.load(str(folder / "MLmodel")).metadata or {}
        return model, metadata.get("classes")
    except Exception as exc:
        raise ResnetlabError(
            f"cannot load the MLflow model {model_uri} (tracking store {tracking_uri()}): "
            f"{_first_line(exc)}"
        ) from None


def _existing_run(mlflow_client: MlflowClient, run_id: str, what: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_run(run_id)
    except MlflowException as exc:
        raise ResnetlabError(
            f"MLflow run {run_id} ({what}) not found in {tracking_uri()}: {_first_line(exc)}. "
            "Re-run its train stage (dvc repro -f train@<variant>) to record a new one."
        ) from None


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Iterable[Path]) -> None:
    """Add test-set metrics (already `test_`-prefixed) and files to a finished training run."""
    from mlflow.entities import Metric

    c = client()
    _existing_run(c, run_id, "from the train stage")
    now = _now_ms()
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in files:
        c.log_artifact(run_id, str(path), artifact_path="evaluation")


def log_comparison(
    experiment: str,
    leaderboard: pd.DataFrame,
    files: Iterable[Path],
    variant_files: Mapping[str, Sequence[Path]] | None = None,
) -> str:
    """Record the leaderboard and comparison figures as a run of their own, and each variant's
    figures into that variant's training run (`variant_files`: run id -> files); returns the
    comparison run's id."""
    c = client()
    from mlflow.entities import RunTag

    run = c.create_run(experiment_id(c, experiment), run_name="compare")
    run_id = run.info.run_id
    try:
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in common_tags("compare").items()])
        c.log_table(run_id, leaderboard, "leaderboard.json")
        for path in files:
            c.log_artifact(run_id, str(path))
        for variant_run, paths in (variant_files or {}).items():
            try:
                c.get_run(variant_run)
            except Exception:
                log.warning("MLflow run %s is gone; its figures are not logged", variant_run)
                continue
            for path in paths:
                c.log_artifact(variant_run, str(path), artifact_path="figures")
    except BaseException:
        c.set_terminated(run_id, status="FAILED")
        raise
    c.set_terminated(run_id, status="FINISHED")
    return run_id


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

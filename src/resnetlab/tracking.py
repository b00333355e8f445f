"""Everything that talks to MLflow. Other modules call these functions and never import mlflow.

Tracking URI: `MLFLOW_TRACKING_URI` when set, else the SQLite store `mlflow.db` in the current
directory (the project root when DVC runs a stage), which `mlflow ui` opens by default.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from resnetlab.atomic import write_atomic
from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

# MLflow's param values are limited in length; longer ones (none expected) are cut.
_PARAM_MAX = 6000
# For the start-up check: a dead server answers in seconds, not after minutes of retries.
_FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def ensure_reachable(experiment: str) -> str:
    """Fail fast (before any training) if the tracking store cannot be used. Returns the URI."""
    uri = tracking_uri()
    saved = {k: os.environ.get(k) for k in _FAST_FAIL}
    os.environ.update(_FAST_FAIL)
    try:
        mlflow = _mlflow()
        mlflow.set_experiment(experiment)
    except Exception as exc:
        raise ResnetlabError(
            f"MLflow tracking store {uri} is not usable: {str(exc).splitlines()[0][:300]}. "
            "Start the server, fix MLFLOW_TRACKING_URI, or unset it to record into ./mlflow.db"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return uri


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def run_tags(variant: str, device: torch.device) -> dict[str, str]:
    tags = {
        "variant": variant,
        "device": str(device),
        "torch_version": torch.__version__,
        "stage": "train",
    }
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    # Set by DVC while `dvc exp run` executes a stage.
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextmanager
def training_run(
    experiment: str,
    variant: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    run_id: str | None = None,
) -> Iterator[str]:
    """Start (or, with `run_id`, continue) the variant's run; yields its id.

    The run ends FINISHED on success, KILLED on Ctrl-C and FAILED on an error; a resumed training
    re-opens the same run, so one stage execution is one run however often it was interrupted.
    """
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except Exception:
            log.warning("MLflow run %s from the checkpoint is gone; starting a new run", run_id)
            run_id = None
    run = mlflow.start_run(run_id=run_id, run_name=variant)
    try:
        if run_id is None:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.set_tags(dict(tags))
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    return text[:_PARAM_MAX]


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    _mlflow().log_metrics(dict(metrics), step=step)


def log_trained_model(
    model: torch.nn.Module,
    input_example: np.ndarray,
    history: pd.DataFrame,
    files: Iterable[Path],
    classes: Sequence[str] | None = None,
) -> None:
    """Log the best model (pyfunc-servable on N x 3 x 32 x 32 float arrays in [0, 1]; output:
    logits in the order of `classes`, kept in the model's metadata), the history table and extra
    files into the active run."""
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    import resnetlab

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    import torchvision

    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(input_example, output),
        input_example=input_example,
        metadata={"classes": list(classes)} if classes is not None else None,
        # The package's code travels with the model, so loading it needs no resnetlab install;
        # explicit requirements skip MLflow's slow inference of them.
        code_paths=[str(Path(resnetlab.__file__).parent)],
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            "pyyaml",
        ],
    )
    mlflow.log_table(history, artifact_file="history.json")
    for path in files:
        mlflow.log_artifact(str(path))


def load_logged_model(model_uri: str) -> tuple[torch.nn.Module, list[str] | None]:
    """The PyTorch model logged at `model_uri` (`runs:/<id>/model`, `models:/<name>/<version>`,
    a local path, ...), as `log_trained_model` logged it: [0, 1] images in, logits out; and its
    class names when the model's metadata has them."""
    mlflow = _mlflow()
    # The artifact download's progress bar (one line per file) would bury `predict`'s output.
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(quiet)
    os.environ.setdefault(quiet, "false")
    try:
        # Not .eval()'d here: MLflow already does for pickled models, and the torch.export'ed
        # module it returns for the default pt2 format refuses train()/eval() calls.
        model = mlflow.pytorch.load_model(model_uri)
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
        return model, metadata.get("classes")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ResnetlabError(
            f"cannot load the MLflow model {model_uri} (tracking store {tracking_uri()}): {first}"
        ) from None
    finally:
        if saved is None:
            os.environ.pop(quiet, None)


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Iterable[Path]) -> None:
    """Add test-set metrics (already `test_`-prefixed) and artifacts to a finished training run."""
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.get_run(run_id)
    except Exception as exc:
        raise ResnetlabError(
            f"MLflow run {run_id} (from the train stage) not found in {tracking_uri()}: {exc}. "
            "Re-run the train stage (dvc repro -f train@<variant>) to record a new one."
        ) from None
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()],
    )
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")


def log_comparison(experiment: str, leaderboard: pd.DataFrame, files: Iterable[Path]) -> str:
    """Record the leaderboard and figures as a run of their own; returns its id."""
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="compare") as run:
        mlflow.set_tags({"stage": "compare"})
        if commit := git_commit():
            mlflow.set_tags({"mlflow.source.git.commit": commit, "git_commit": commit})
        mlflow.log_table(leaderboard, artifact_file="leaderboard.json")
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def write_run_file(path: Path, run_id: str, experiment: str) -> None:
    """The run id, as a stage output: evaluate logs into the same run."""
    blob = json.dumps({"run_id": run_id, "experiment": experiment}, indent=2).encode()
    write_atomic(path, lambda fh: fh.write(blob))


def read_run_file(path: Path) -> dict[str, str]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: cannot read the MLflow run id ({exc})") from None

"""A small real project for the web app's tests: two variants trained for real on the tiny
prepared data (train and evaluate stages' own functions), their leaderboard and figures, and
their MLflow runs in a SQLite store inside the project, as `dvc repro` would leave it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

# Two small nets that learn the tiny set to different degrees, so each gets some test images
# right that the other gets wrong.
VARIANTS = {
    "tiny": {"model": {"name": "resnet_v1", "depth": 8}, "epochs": 2},
    "tiny_plain": {"model": {"name": "plain", "depth": 8}, "epochs": 1},
}
EXPERIMENT = "app-test"


def params() -> dict:
    return {
        "mlflow": {"experiment": EXPERIMENT},
        "train": {
            "device": "cpu",  # the golden outputs are the CPU's, also on a machine with a GPU
            "epochs": 2,
            "batch_size": 64,
            "lr": 0.05,
            "precision": "fp32",
            "eval_batch_size": 500,
            "milestones": [0.67],
        },
        "variants": VARIANTS,
    }


def mlflow_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def build(root: Path, prepared: Path) -> Path:
    """Fill `root` with data/prepared, models/, metrics/, reports/ and mlflow.db."""
    from resnetlab.core.layout import run_folder
    from resnetlab.core.params import parse_params
    from resnetlab.pipeline.evaluate import evaluate_variant
    from resnetlab.pipeline.train import train_variant
    from resnetlab.report import figures, leaderboard

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params(), sort_keys=False))
    shutil.copytree(prepared, root / "data" / "prepared")
    config = parse_params(params())
    # MLflow's store and artifacts land in the project, as when DVC runs the stages there.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri(root))
        for name in VARIANTS:
            # One training seed per variant, in the layout dvc.yaml gives it.
            models, metrics = (
                run_folder(root / "models", name, 0),
                run_folder(root / "metrics", name, 0),
            )
            train_variant(
                config.variant(name), EXPERIMENT, root / "data" / "prepared", models, metrics
            )
            evaluate_variant(name, root / "data" / "prepared", models, metrics)
        register(root, "tiny")
    runs = leaderboard.build_runs(list(VARIANTS), [0], root / "metrics")
    board = leaderboard.build_leaderboard(runs)
    leaderboard.write_leaderboard(board, root / "reports", runs)
    leaderboard.write_mean(
        leaderboard.mean_report(list(VARIANTS), [0], root / "metrics"), root / "reports"
    )
    histories = leaderboard.load_histories(list(VARIANTS), [0], root / "metrics")
    curves = leaderboard.curves_of(leaderboard.mean_curves(histories))
    figures.write_comparison_figures(board, curves, root / "reports" / "figures", None, runs)
    return root


REGISTERED = "tiny-registered"


def register(root: Path, variant: str) -> str:
    """Register `variant`'s logged model as version 1 of REGISTERED; returns its models:/ URI."""
    from mlflow.tracking import MlflowClient

    from resnetlab.core.records import RunFile

    run_id = RunFile.read(root / "models" / variant / "seed0" / "mlflow_run.json").run_id
    client = MlflowClient(mlflow_uri(root), registry_uri=mlflow_uri(root))
    client.create_registered_model(REGISTERED)
    # The train stage registered it as resnetlab-<variant> already; a second name, by hand, as a
    # user would (the logged model is named after the variant).
    source = f"runs:/{run_id}/{variant}"
    version = client.create_model_version(REGISTERED, source, run_id=run_id)
    return f"models:/{REGISTERED}/{version.version}"


# --- `resnetlab app` as a user starts it ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_app(project: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`resnetlab app` on 127.0.0.1:`port` for `project` (with its MLflow store), its output in
    `log`, in a session of its own: the test can stop it, and only it, as a group."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri(project)}
    cmd = [sys.executable, "-m", "resnetlab", "app", "--port", str(port)]
    cmd += ["--address", "127.0.0.1", "--project", str(project)]
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

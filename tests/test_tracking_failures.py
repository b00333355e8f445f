"""MLflow failing under the stages: a server that dies mid-training and comes back, a dead or
silent server under evaluate and compare, a run left RUNNING by a kill -9.

The servers are real (`tracking_server.TrackingServer`: MLflow's REST handlers on 127.0.0.1,
started and killed here); "dead" is a free port on 127.0.0.1 nothing listens on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from tracking_server import TrackingServer, free_port

from resnetlab.cli import main
from resnetlab.core.params import parse_params
from resnetlab.core.records import History, ModelRecord, RunFile
from resnetlab.data.datasets import CIFAR10_CLASSES
from resnetlab.models import build_model
from resnetlab.tracking import store, training_run
from resnetlab.train import checkpoint

EPOCHS = 4
TRAIN = {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05, "precision": "fp32", "device": "cpu"}
TRAIN["checkpoint_every_s"] = 0  # a checkpoint, and with it the epoch's records, every epoch
VARIANT = {"tiny": {"model": {"name": "resnet_v1", "depth": 8}}}


def write_params(root: Path, **train) -> Path:
    params = {"mlflow": {"experiment": "failures"}, "train": {**TRAIN, **train}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({**params, "variants": VARIANT}))
    return path


def train_argv(data: Path) -> list[str]:
    argv = ["train", "--variant", "tiny", "--data", str(data)]
    return [*argv, "--out", "models/tiny/seed0", "--metrics", "metrics/tiny/seed0"]


def cli_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the CLI printed for the failure (log lines may share stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("resnetlab ")]
    return line


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


# --- a server that dies after epoch 1 -----------------------------------------------------------


@pytest.mark.slow
def test_server_dying_mid_training_costs_no_epoch_and_relog_backfills_the_run(
    tiny_prepared, workdir, monkeypatch, caplog
):
    write_params(workdir)
    saved: list[int] = []
    real_save = checkpoint.save_atomic

    def save(obj, path):
        real_save(obj, path)
        saved.append(obj["progress"]["epoch"])

    monkeypatch.setattr(checkpoint, "save_atomic", save)
    waits: dict[str, float] = {}  # how long the MLflow listener held training up, per event
    real_checkpoint, real_finish = (
        training_run.TrainingRun.on_checkpoint,
        training_run.TrainingRun.finish,
    )

    with TrackingServer(workdir / "store") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)

        def on_checkpoint(self, event):
            start = time.monotonic()
            real_checkpoint(self, event)
            (row,) = event.rows
            waits[f"epoch {row.epoch}"] = time.monotonic() - start
            if row.epoch == 1:
                server.kill()  # no goodbye: connections are refused from now on

        def finish(self):
            start = time.monotonic()
            try:
                real_finish(self)
            finally:
                waits["finish"] = time.monotonic() - start

        monkeypatch.setattr(training_run.TrainingRun, "on_checkpoint", on_checkpoint)
        monkeypatch.setattr(training_run.TrainingRun, "finish", finish)
        caplog.set_level(logging.INFO)
        assert main(train_argv(tiny_prepared)) == 1

        # Every epoch trained and checkpointed; the outputs written; nothing waited for MLflow.
        assert saved == [1, 2, 3, 4]
        assert list(waits) == ["epoch 1", "epoch 2", "epoch 3", "epoch 4", "finish"]
        assert max(waits.values()) < 10, waits  # was: 8.5 minutes in epoch 2, then a crash
        history = History.read(workdir / "metrics/tiny/seed0/history.csv")
        assert [r.epoch for r in history.rows] == [1, 2, 3, 4]
        assert (workdir / "metrics/tiny/seed0/train.json").exists()
        record = ModelRecord.read(workdir / "models/tiny/seed0/model.pt")
        assert not (workdir / "models/tiny/seed0/mlflow_run.json").exists()  # the run is incomplete
        state = checkpoint.load(workdir / "models/tiny/seed0/checkpoint.pt")
        assert state["progress"]["epoch"] == EPOCHS and not state["finished"]  # still resumable
        run_id = state["progress"]["run_id"]

        messages = [r.getMessage() for r in caplog.records]
        behind = [m for m in messages if "tracking is behind" in m]
        assert len(behind) == 1 and "\n" not in behind[0]
        assert "did not take epoch 2 (unreachable (" in behind[0]

    with TrackingServer(workdir / "store", port=server.port):  # the same store, back up
        assert main(["relog", "--variant", "tiny"]) == 0
        c = mlflow_client(server.url)
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "tiny · seed 0"
        for key in ("val_accuracy", "train_loss", "lr", "images_per_s"):
            steps = sorted(m.step for m in c.get_metric_history(run_id, key))
            assert steps == [1, 2, 3, 4], key  # epoch 1 once, 2-4 backfilled
        val = {m.step: m.value for m in c.get_metric_history(run_id, "val_accuracy")}
        assert val == pytest.approx({r.epoch: r.val_accuracy for r in history.rows}, abs=1e-6)
        best = c.get_metric_history(run_id, "best_val_accuracy")
        assert [m.value for m in best] == pytest.approx([record.best_val_accuracy])
        artifacts = {a.path for a in c.list_artifacts(run_id)}
        assert {"history.json", "train.json", "history.csv"} <= artifacts
        (output,) = c.get_run(run_id).outputs.model_outputs  # the logged model, relogged
        assert c.get_logged_model(output.model_id).name == "tiny"
        assert RunFile.read(workdir / "models/tiny/seed0/mlflow_run.json").run_id == run_id


def test_stage_error_when_tracking_is_behind_at_the_end_names_files_and_relog(
    tiny_prepared, workdir, monkeypatch, capsys, caplog
):
    """The same failure on the SQLite store, cheaply: every call after epoch 1 fails."""
    write_params(workdir, epochs=2)
    real_checkpoint = training_run.TrainingRun.on_checkpoint

    def on_checkpoint(self, event):
        real_checkpoint(self, event)

        def refuse(*args, **kwargs):
            raise store.Unreachable("unreachable (refused by the test)")

        self._calls.probe = refuse

    monkeypatch.setattr(training_run.TrainingRun, "on_checkpoint", on_checkpoint)
    caplog.set_level(logging.INFO)
    assert main(train_argv(tiny_prepared)) == 1
    assert sum("tracking is behind" in r.getMessage() for r in caplog.records) == 1
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    run_id = checkpoint.load(workdir / "models/tiny/seed0/checkpoint.pt")["progress"]["run_id"]
    assert cli_error(capsys) == (
        f"resnetlab train: error: tiny: training is complete but not recorded: MLflow tracking "
        f"store {uri} did not take the records (unreachable (refused by the test)): run "
        f"{run_id} lacks epoch 2, the model, history.json, train.json, model.json, history.csv, "
        "best_val_accuracy, best_epoch, its end. The model and metrics are on disk "
        "(models/tiny/seed0/model.pt, metrics/tiny/seed0/history.csv, "
        "metrics/tiny/seed0/train.json); when the store answers, record them with "
        "`resnetlab relog --variant tiny --seed 0`, or re-run this stage "
        "(it resumes after the last epoch, trains nothing and records)"
    )

    # Re-running the stage once the store answers: no epoch is trained again, the run completes.
    monkeypatch.setattr(training_run.TrainingRun, "on_checkpoint", real_checkpoint)
    saved: list[bool] = []
    real_save = checkpoint.save_atomic

    def save(obj, path):
        real_save(obj, path)
        saved.append(obj["finished"])

    monkeypatch.setattr(checkpoint, "save_atomic", save)
    assert main(train_argv(tiny_prepared)) == 0
    assert saved == [True]  # no epoch trained again: only the final "finished" mark
    c = mlflow_client(uri)
    assert c.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(run_id, "val_accuracy")) == [1, 2]
    assert RunFile.read(workdir / "models/tiny/seed0/mlflow_run.json").run_id == run_id


# --- evaluate and compare against a store that does not answer ----------------------------------


@pytest.fixture(params=["refused", "silent"])
def dead_uri(request) -> Iterator[str]:
    """A tracking URI nothing answers on: a closed port, or one that accepts and never replies."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes connections; nobody ever reads or answers
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def trained(workdir: Path) -> Path:
    """models/tiny/seed0/{model.pt, mlflow_run.json} as the train stage leaves them (untrained),
    beside the params.yaml evaluate reads."""
    write_params(workdir)
    variant = parse_params({"variants": VARIANT}).variant("tiny")
    ModelRecord(
        state_dict=build_model("resnet_v1", depth=8, num_classes=10).state_dict(),
        variant=variant,
        classes=CIFAR10_CLASSES,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        parameters=0,
        best_epoch=1,
        best_val_accuracy=0.1,
    ).write(workdir / "models/tiny/seed0/model.pt")
    RunFile("0123456789abcdef0123456789abcdef", "failures").write(
        workdir / "models/tiny/seed0/mlflow_run.json"
    )
    return workdir / "models/tiny/seed0"


def test_evaluate_fails_fast_when_the_store_does_not_answer(
    tiny_prepared, trained, dead_uri, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri)
    start = time.monotonic()
    argv = ["evaluate", "--variant", "tiny", "--data", str(tiny_prepared)]
    assert main([*argv, "--model", str(trained), "--out", "metrics/tiny/seed0"]) == 1
    assert time.monotonic() - start < 15  # was: 4.5 minutes, after all the work
    err = cli_error(capsys)
    assert err.startswith(f"resnetlab evaluate: error: MLflow tracking store {dead_uri} is not ")
    assert "unreachable (" in err and "Re-run its train stage" not in err
    assert not Path("metrics/tiny/seed0").exists()  # nothing evaluated in vain


def test_evaluate_tells_a_missing_run_from_an_unreachable_store(
    tiny_prepared, trained, workdir, capsys
):
    argv = ["evaluate", "--variant", "tiny", "--data", str(tiny_prepared)]
    assert main([*argv, "--model", str(trained), "--out", "metrics/tiny/seed0"]) == 1
    assert cli_error(capsys) == (
        "resnetlab evaluate: error: MLflow run 0123456789abcdef0123456789abcdef (from the train "
        f"stage) not found in sqlite:///{workdir / 'mlflow.db'}. Re-run its train stage "
        "(dvc repro -f train@tiny-0) to record a new one."  # was: train@<variant>, no seed
    )


def test_compare_fails_fast_when_the_store_does_not_answer(workdir, monkeypatch, capsys):
    dead_uri = f"http://127.0.0.1:{free_port()}"  # refused; evaluate also tries a silent one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri)
    write_params(workdir)
    start = time.monotonic()
    argv = ["compare", "--metrics", "metrics", "--models", "models", "--out", "reports"]
    assert main(argv) == 1
    assert time.monotonic() - start < 15  # was: 4.3 minutes, then a traceback
    err = cli_error(capsys)
    assert err.startswith(f"resnetlab compare: error: MLflow tracking store {dead_uri} is not ")
    assert "unreachable (" in err
    assert not Path("reports").exists()


# --- a run left RUNNING by kill -9 --------------------------------------------------------------


@pytest.mark.slow
def test_run_left_running_by_kill_9_in_epoch_1_is_marked_killed_by_the_next_run(
    tiny_prepared, workdir
):
    # Batches of 2: epoch 1 lasts long enough (1.6 s here, from the run's creation to the first
    # checkpoint) to be killed in before any checkpoint exists.
    write_params(workdir, epochs=1, batch_size=2)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "resnetlab", *train_argv(tiny_prepared)]
    proc = subprocess.Popen(cmd, cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        run_id = None
        while run_id is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            run_id = _running_run(workdir / "mlflow.db")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_id is not None, "the run never appeared"
    assert not (workdir / "models/tiny/seed0/checkpoint.pt").exists()  # killed inside epoch 1
    c = mlflow_client(uri)
    orphan = c.get_run(run_id)
    assert orphan.info.status == "RUNNING"
    assert orphan.data.tags[training_run.PID_TAG] == str(proc.pid)
    # A run whose process lives (this one) is left alone.
    alive = c.create_run(
        orphan.info.experiment_id,
        run_name="tiny · seed 0",
        tags={training_run.HOST_TAG: socket.gethostname(), training_run.PID_TAG: str(os.getpid())},
    )

    assert main(train_argv(tiny_prepared)) == 0
    assert c.get_run(orphan.info.run_id).info.status == "KILLED"
    assert c.get_run(alive.info.run_id).info.status == "RUNNING"
    finished = json.loads((workdir / "models/tiny/seed0/mlflow_run.json").read_text())["run_id"]
    assert c.get_run(finished).info.status == "FINISHED"
    assert torch.load(workdir / "models/tiny/seed0/model.pt", weights_only=True)["best_epoch"] == 1


def _running_run(db: Path) -> str | None:
    """A RUNNING training run's id in the SQLite store (one with a pid tag, not its parent run),
    read with sqlite3 itself: an MLflow client here would set up the tables the training process
    may be creating right now."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute(
                "SELECT run_uuid FROM runs WHERE status = 'RUNNING' AND run_uuid IN "
                f"(SELECT run_uuid FROM tags WHERE key = '{training_run.PID_TAG}')"
            ).fetchone()
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return None
    return row[0] if row else None

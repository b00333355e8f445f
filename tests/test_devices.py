"""Parallel runs lease their devices; queued experiments record into the project's MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.core import device as dev
from resnetlab.core.errors import ResnetlabError
from resnetlab.tracking import store

# A child process that places itself as a parallel run would and prints where it landed.
PLACE = (
    "import json, torch; from resnetlab.core import device as d; d.LOCK_DIR = __import__('pathlib')"
    ".Path({lock_dir!r}); p = d.place('auto'); print(json.dumps([p.describe(), "
    "torch.get_num_threads()]), flush=True); input()"
)


def place_in_child(lock_dir: Path, workers: str) -> subprocess.Popen:
    env = {**os.environ, dev.CPU_WORKERS_ENV: workers}
    code = PLACE.format(lock_dir=str(lock_dir))
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_cpu_workers_lease_disjoint_cores_and_release_them_on_exit(tmp_path):
    first = place_in_child(tmp_path, "2")
    where_first, threads = json.loads(first.stdout.readline())
    second = place_in_child(tmp_path, "2")
    where_second, _ = json.loads(second.stdout.readline())
    assert where_first.startswith("cpu (core") and where_second.startswith("cpu (core")
    assert where_first != where_second
    assert threads == len(os.sched_getaffinity(0)) // 2
    first.communicate("\n")  # the first run ends: its lease is free again
    third = place_in_child(tmp_path, "2")
    assert json.loads(third.stdout.readline())[0] == where_first
    second.communicate("\n")
    third.communicate("\n")


def test_lease_takes_the_first_free_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "LOCK_DIR", tmp_path)
    i, held = dev._lease(["a", "b"])
    try:
        assert i == 0
        # flock locks belong to the open file: a second open in this process is refused too.
        j, other = dev._lease(["a", "b"])
        assert j == 1
        other.close()
    finally:
        held.close()
    k, again = dev._lease(["a", "b"])
    assert k == 0
    again.close()


def test_explicit_device_and_single_runs_are_not_leased(monkeypatch):
    monkeypatch.delenv(dev.CPU_WORKERS_ENV, raising=False)
    assert dev.place("cpu").describe() == "cpu" and dev.place("cpu").lock is None
    if not torch.cuda.is_available():
        assert dev.place("auto").lock is None
    monkeypatch.setenv(dev.CPU_WORKERS_ENV, "two")
    with pytest.raises(ResnetlabError, match="RESNETLAB_CPU_WORKERS='two': expected a whole"):
        dev.place("auto")
    monkeypatch.setenv(dev.CPU_WORKERS_ENV, "4096")
    with pytest.raises(ResnetlabError, match="RESNETLAB_CPU_WORKERS=4096 but this process"):
        dev.place("auto")


def test_default_store_is_the_projects_even_from_a_temporary_copy(tmp_path, monkeypatch):
    """DVC runs a queued experiment's stages in a copy under .dvc/tmp/exps with DVC_ROOT set to
    the project: the runs, and a new experiment's artifacts, must land in the project."""
    root, copy = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/tmp123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(copy)
    assert store.tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"
    client = store.client()
    experiment = client.get_experiment(store.experiment_id(client, "queued"))
    assert experiment.artifact_location == (root / "mlruns").as_uri()
    assert (root / "mlflow.db").exists() and not (copy / "mlflow.db").exists()
    monkeypatch.delenv("DVC_ROOT")
    assert store.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"

"""The default tracking store (MLFLOW_TRACKING_URI unset: the project's mlflow.db) from where DVC
runs stages (DVC_ROOT set, another working directory, as in a queued experiment's temporary
copy), and a local store on a busy machine: slow, never declared unreachable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from dvc_project import DvcProject, tiny_params

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.params import parse_params
from resnetlab.pipeline import train as train_stage
from resnetlab.tracking import store

TINY = {
    "mlflow": {"experiment": "default-store"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "precision": "fp32", "device": "cpu"},
    "variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}}},
}


def test_train_from_another_directory_registers_into_the_projects_store(
    tiny_prepared, tmp_path, monkeypatch
):
    """MLflow's registry looks a new version's `models:/<model id>` up on MLflow's global URI,
    which with MLFLOW_TRACKING_URI unset is ./mlflow.db in the working directory: before the
    fix, `Logged model with ID 'm-...' not found` and a stray mlflow.db there."""
    import mlflow
    from mlflow.tracking import MlflowClient

    project, elsewhere = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/tmp1"
    elsewhere.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.chdir(elsewhere)
    variant = parse_params(TINY).variant("tiny")
    summary = train_stage.train_variant(
        variant, "default-store", tiny_prepared, project / "models/tiny", project / "metrics/tiny"
    )
    assert summary.epochs == 1

    c = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = c.get_experiment_by_name("default-store")
    (run,) = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert run.info.status == "FINISHED"
    (output,) = run.outputs.model_outputs
    (version,) = c.search_model_versions("name = 'resnetlab-tiny'")
    assert version.source == f"models:/{output.model_id}" and version.run_id == run.info.run_id
    assert c.get_logged_model(output.model_id).artifact_location.startswith(
        (project / "mlruns").as_uri()
    )
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no stray mlflow.db, no mlruns/
    # MLflow's global URI was set for the registration only: nothing is left behind.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{elsewhere / 'mlflow.db'}"


def test_local_and_network_stores():
    for uri in ("sqlite:////p/mlflow.db", "sqlite:///:memory:", "file:///p/mlruns", "/p/mlruns"):
        assert store.is_local(uri), uri
    network = ("http://h:5000", "https://h", "databricks", "databricks-uc", "postgresql://h/db")
    for uri in network:
        assert not store.is_local(uri), uri


@pytest.fixture
def busy_cpus() -> Iterator[int]:
    """Real load: 4 busy-looping processes, more than this machine's cores, for the test."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        time.sleep(1.0)  # under way
        yield len(loops)
    finally:
        for p in loops:
            p.kill()
        for p in loops:
            p.wait()


def test_a_busy_machine_is_slow_not_an_unreachable_local_store(busy_cpus, tmp_path):
    """Under real CPU load and a deadline far below what any call takes (the deadline is a
    setting; the load is real), a fresh process's first call to the default SQLite store
    (importing MLflow's store layer, creating the schema) succeeds; before, it was declared
    `unreachable (no answer within 0 s)`."""
    script = textwrap.dedent(
        """
        from resnetlab.tracking import store
        store.CALL_S = 0.001
        store.UPLOAD_S = 0.001
        print("experiment", store.ensure_reachable("busy"))
        c = store.client()
        run = c.create_run(store.ensure_reachable("busy"))
        store.check_run(run.info.run_id, "a test", "train@tiny-0")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["DVC_ROOT"] = str(tmp_path)
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[-1] == "ok"
    assert (tmp_path / "mlflow.db").is_file()
    print(f"first call to the local store under load: {took:.1f} s")


def test_a_silent_server_is_still_refused_under_load(busy_cpus, monkeypatch):
    """Network stores keep the probe and the deadlines, on a busy machine too: a server that
    accepts connections and never answers is refused within seconds."""
    monkeypatch.setattr(store, "CALL_S", 0.001)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nothing ever reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        started = time.monotonic()
        with pytest.raises(ResnetlabError, match=r"is not usable: unreachable"):
            store.ensure_reachable("silent")
        assert time.monotonic() - started < 30  # the probe's 3 s, stretched by the load
        # Past the probe, each call still has its deadline.
        calls = store.Caller(uri)
        started = time.monotonic()
        with pytest.raises(store.Unreachable, match="no answer within"):
            calls(lambda: time.sleep(5), 0.05)
        assert time.monotonic() - started < 4


@pytest.mark.slow
def test_two_queue_workers_beside_a_busy_process_record_into_the_default_store(
    tiny_archive, tmp_path
):
    """Issue 30's acceptance: two queued experiments, `RESNETLAB_CPU_WORKERS=2 dvc queue start
    -j 2` on this 2-core machine, MLFLOW_TRACKING_URI unset, while a third process keeps a core
    busy. The stages run in DVC's temporary copies (.dvc/tmp/exps/...) and every one records
    into the project's mlflow.db: both experiments succeed, each train and evaluate run is
    FINISHED and tagged with its experiment, and each trained model is a registered version."""
    from mlflow.tracking import MlflowClient

    params = tiny_params(*tiny_archive)
    params["train"]["epochs"] = 1
    params["variants"] = {"resnet8": params["variants"]["resnet8"]}
    params["run_variants"] = ["resnet8"]
    project = DvcProject(tmp_path / "project", params)
    del project.env["MLFLOW_TRACKING_URI"]
    project.env["RESNETLAB_CPU_WORKERS"] = "2"
    names = ("queued-a", "queued-b")
    for name, lr in zip(names, ("0.05", "0.1"), strict=True):
        project.dvc("exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        project.dvc("queue", "start", "-j", "2")
        deadline = time.monotonic() + 900
        while True:
            status = project.dvc("queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert busy.poll() is None  # the third process ran throughout
    finally:
        busy.kill()
        busy.wait()
    if status.count("Success") != 2:
        logs = [project.dvc("queue", "logs", name, check=False) for name in names]
        pytest.fail("\n".join([status, *(f"{r.stdout[-3000:]}\n{r.stderr[-1500:]}" for r in logs)]))

    c = MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("e2e")
    for stage in ("train", "compare"):
        found = c.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")
        assert sorted(r.data.tags.get("dvc_exp_name") for r in found) == list(names), stage
        assert {r.info.status for r in found} == {"FINISHED"}, stage
    trained = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert all("test_accuracy" in r.data.metrics for r in trained)  # evaluate recorded into it
    versions = c.search_model_versions("name = 'resnetlab-resnet8'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in trained)
    for run in trained:
        (output,) = run.outputs.model_outputs
        (version,) = [v for v in versions if v.run_id == run.info.run_id]
        assert version.source == f"models:/{output.model_id}"
    assert not list(project.root.glob(".dvc/tmp/exps/**/mlflow.db"))  # no stray stores


def test_the_experiment_is_tagged_as_training_runs(tmp_path, monkeypatch):
    """Every experiment the stages record into carries MLflow's tag for an experiment of
    training runs (`mlflow.experimentKind`): new ones, and old ones on their next use; a kind
    someone set by hand stays. (MLflow 3.17's UI routes by a per-browser toggle instead, which
    docs/mlflow.md explains.)"""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    old = c.create_experiment("old", artifact_location=(tmp_path / "mlruns").as_uri())
    mine = c.create_experiment(
        "mine",
        artifact_location=(tmp_path / "mlruns").as_uri(),
        tags={"mlflow.experimentKind": "genai_development"},
    )
    kinds = {}
    for name in ("new", "old", "mine"):
        exp_id = store.ensure_reachable(name)
        kinds[name] = c.get_experiment(exp_id).tags.get("mlflow.experimentKind")
    assert kinds == {
        "new": "custom_model_development",
        "old": "custom_model_development",
        "mine": "genai_development",
    }
    assert {c.get_experiment_by_name(n).experiment_id for n in ("old", "mine")} == {old, mine}

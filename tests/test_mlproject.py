"""MLproject and python_env.yaml, read by MLflow's own project loader; one real `mlflow run`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import REPO, DvcProject, tiny_params
from mlflow.exceptions import ExecutionException
from mlflow.projects._project_spec import load_project
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.requirements_utils import _parse_requirements

from resnetlab.tracking import lineage

# `mlflow run` gives the command its own run; the stages nest under it, but never adopt it as
# the active run of MLflow's fluent API (see MLproject).
UNSET = (
    "export RESNETLAB_LAUNCH_RUN_ID=$MLFLOW_RUN_ID && unset MLFLOW_RUN_ID MLFLOW_EXPERIMENT_ID && "
)


@pytest.fixture(scope="module")
def project():
    return load_project(str(REPO))


def test_entry_points_and_parameter_types(project) -> None:
    assert project.name == "resnetlab"
    assert set(project._entry_points) == {"main", "train", "evaluate"}
    assert project.get_entry_point("main").parameters == {}
    for name in ("train", "evaluate"):
        params = project.get_entry_point(name).parameters
        assert set(params) == {"variant", "seed"}
        assert params["variant"].type == "string"
        assert params["variant"].default is None  # required
        assert params["seed"].default == "0"  # the default of `seeds`


def test_commands_reproduce_dvc_stages(project) -> None:
    assert project.get_entry_point("main").compute_command({}, None) == UNSET + "dvc repro"
    for name in ("train", "evaluate"):
        entry = project.get_entry_point(name)
        command = entry.compute_command({"variant": "resnet56"}, None)
        assert command == f"{UNSET}dvc repro {name}@resnet56-0"
        command = entry.compute_command({"variant": "resnet56", "seed": "2"}, None)
        assert command == f"{UNSET}dvc repro {name}@resnet56-2"
        with pytest.raises(ExecutionException, match="variant"):
            entry.compute_command({}, None)


def test_stage_names_exist_in_dvc_yaml() -> None:
    """`train@<variant>-<seed>` and `evaluate@<variant>-<seed>` are matrix stages over
    params.yaml's run_variants and seeds."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        assert stages[name]["matrix"] == {"variant": "${run_variants}", "seed": "${seeds}"}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "resnet56" in params["variants"] and "resnet56" in params["run_variants"]


def test_python_env_installs_the_locked_project(project) -> None:
    assert project.env_type == "python_env"
    assert Path(project.env_config_path).resolve() == REPO / "python_env.yaml"
    env = _PythonEnv.from_yaml(project.env_config_path)
    assert env.python == "3.11"
    # MLflow resolves `-c requirements.lock` against the project folder, as pip will.
    reqs = list(_parse_requirements(env.dependencies, is_constraint=False, base_dir=str(REPO)))
    constraints = {r.req_str for r in reqs if r.is_constraint}
    installs = [r.req_str for r in reqs if not r.is_constraint]
    assert installs == ["-e ."]
    import mlflow
    import torch

    assert f"mlflow=={mlflow.__version__}" in constraints
    assert f"torch=={torch.__version__.split('+')[0]}" in constraints


@pytest.mark.slow
def test_mlflow_run_train_entry_point(tiny_archive, tmp_path) -> None:
    """`mlflow run . -e train -P variant=... --env-manager local` on tiny data (one variant)."""
    from mlflow.tracking import MlflowClient

    archive, md5 = tiny_archive
    dvc = DvcProject(tmp_path / "proj", tiny_params(archive, md5))
    # An MLFLOW_EXPERIMENT_ID inherited from the caller (an id in another store) would make
    # `mlflow run` look for that experiment in this one.
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        dvc.env.pop(name, None)
    for name in ("MLproject", "python_env.yaml"):
        shutil.copy(REPO / name, dvc.root / name)
    dvc.commit("mlproject")

    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    argv = ["run", str(dvc.root), "-e", "train", "-P", "variant=resnet8", "--env-manager", "local"]
    argv += ["--experiment-name", "e2e"]  # params.yaml's mlflow.experiment, as the README says
    res = dvc.run(mlflow_bin, *argv)
    assert "Running stage 'train@resnet8-0'" in res.stdout
    assert "train@plain8" not in res.stdout  # one variant only
    assert (dvc.root / "models/resnet8/seed0/model.pt").exists()

    client = MlflowClient(dvc.env["MLFLOW_TRACKING_URI"])
    exp_id = client.get_experiment_by_name("e2e").experiment_id
    assert not client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    everything = client.search_runs([exp_id])
    (launch,) = [r for r in everything if r.data.tags.get("stage") != "train"]
    assert launch.info.status == "FINISHED"
    assert launch.data.params == {"variant": "resnet8", "seed": "0"}
    # The stage recorded a run of its own, nested under the `mlflow run` run.
    (train,) = client.search_runs([exp_id], "tags.stage = 'train'")
    assert train.info.run_name == "resnet8 · seed 0" and train.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == launch.info.run_id
    key = f"mlflow-run:{launch.info.run_id}"
    assert launch.data.tags[lineage.PARENT_KEY_TAG] == key
    assert train.data.tags["resnetlab.group"] == key

    # Up to date: DVC skips the training, and `mlflow run` still succeeds.
    res = dvc.run(mlflow_bin, *argv)
    assert "Running stage 'train@resnet8-0'" not in res.stdout
    assert len(client.search_runs([exp_id], "tags.stage = 'train'")) == 1


def test_launch_run_in_another_experiment_is_linked(tmp_path, monkeypatch) -> None:
    """`mlflow run` without --experiment-name records into `Default`: no parent across
    experiments, so the stages' parent is made in theirs and the two are linked by tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    launch = client.create_run("0").info.run_id  # Default
    exp_id = client.create_experiment("e2e")
    group = lineage.Lineage(f"mlflow-run:{launch}", launch_run=launch)
    parent = lineage.parent_run(client, exp_id, group)
    assert parent != launch
    assert client.get_run(launch).data.tags["resnetlab.parent_run"] == parent
    tags = client.get_run(parent).data.tags
    assert tags["resnetlab.launch_run"] == launch and tags["resnetlab.launch_experiment"] == "0"
    assert client.get_run(parent).info.experiment_id == exp_id

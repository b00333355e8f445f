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
    assert project.get_entry_point("main").compute_command({}, None) == "resnetlab launch all"
    for name in ("train", "evaluate"):
        entry = project.get_entry_point(name)
        command = entry.compute_command({"variant": "resnet56"}, None)
        assert command == f"resnetlab launch {name} --variant resnet56 --seed 0"
        command = entry.compute_command({"variant": "resnet56", "seed": "2"}, None)
        assert command == f"resnetlab launch {name} --variant resnet56 --seed 2"
        with pytest.raises(ExecutionException, match="variant"):
            entry.compute_command({}, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--variant", "resnet8", "--seed", "1"],
            "seeds: 1 is not listed ([0]), so DVC has no train@resnet8-1 stage; add it to seeds "
            "in params.yaml (or dvc exp run -S 'seeds=[0, 1]')",
        ),
        (
            ["evaluate", "--variant", "spare"],
            "run_variants: spare is declared but not listed (resnet8), so DVC has no "
            "evaluate@spare-0 stage; add it to run_variants in params.yaml (or dvc exp run -S "
            "'run_variants=[resnet8, spare]')",
        ),
        (
            ["train", "--variant", "nope"],
            "variants.nope: no such variant; declared: resnet8, spare",
        ),
        (["train"], "train needs --variant (-P variant=<name> for mlflow run)"),
    ],
)
def test_launch_refuses_a_run_dvc_has_no_stage_for(tmp_path, monkeypatch, capsys, argv, message):
    """Was: DVC's `Stage 'train@resnet20-1' not found`, no word of `seeds`. Nothing starts."""
    from resnetlab.cli import main

    monkeypatch.chdir(tmp_path)
    params = {
        "seeds": [0],
        "run_variants": ["resnet8"],
        "variants": {v: {"model": {"name": "resnet_v1", "depth": 8}} for v in ("resnet8", "spare")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["launch", *argv]) == 1
    assert capsys.readouterr().err == f"resnetlab launch: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


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
    assert launch.info.run_name == "train resnet8 · seed 0"  # was MLflow's random name
    assert "resnetlab.outcome" not in launch.data.tags
    assert launch.data.params == {"variant": "resnet8", "seed": "0"}
    # The stage recorded a run of its own, nested under the `mlflow run` run.
    (train,) = client.search_runs([exp_id], "tags.stage = 'train'")
    assert train.info.run_name == "resnet8 · seed 0" and train.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == launch.info.run_id
    key = f"mlflow-run:{launch.info.run_id}"
    assert launch.data.tags[lineage.PARENT_KEY_TAG] == key
    assert train.data.tags["resnetlab.group"] == key

    # Up to date: DVC skips the training, `mlflow run` still succeeds, and its run says it
    # did nothing (it cannot be removed: `mlflow run` ends it after the command).
    res = dvc.run(mlflow_bin, *argv, "--run-name", "again")
    assert "Running stage 'train@resnet8-0'" not in res.stdout
    assert len(client.search_runs([exp_id], "tags.stage = 'train'")) == 1
    (again,) = client.search_runs([exp_id], "attributes.run_name = 'again'")
    assert again.data.tags["resnetlab.outcome"] == "up to date"
    assert again.data.tags["mlflow.note.content"].startswith(
        "Nothing to do: DVC found train@resnet8-0 up to date"
    )

    # A seed `seeds` does not list: one line naming the key, not DVC's "Stage not found".
    res = dvc.run(mlflow_bin, *argv[:-2], "-P", "seed=1", "--experiment-name", "e2e", check=False)
    assert res.returncode != 0
    assert (
        "resnetlab launch: error: seeds: 1 is not listed ([0]), so DVC has no train@resnet8-1 "
        "stage; add it to seeds in params.yaml (or dvc exp run -S 'seeds=[0, 1]')"
    ) in res.stderr.splitlines()


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

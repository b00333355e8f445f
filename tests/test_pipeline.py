"""The whole pipeline under DVC on tiny data: incremental re-runs, experiments, MLflow runs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow

TRAIN_ON = ["train@plain8", "train@resnet8", "evaluate@plain8", "evaluate@resnet8", "compare"]
ALL = ["download", "prepare", "diagnose", *TRAIN_ON]


def mlflow_train_runs(project: DvcProject) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("stage") == "train"]


def test_pipeline_reruns_exactly_what_changed(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    params = tiny_params(archive, md5)
    project = DvcProject(tmp_path / "proj", params)
    root = project.root

    assert sorted(project.repro()) == sorted(ALL)
    board = pd.read_csv(root / "reports/leaderboard.csv")
    assert sorted(board["variant"]) == ["plain8", "resnet8"]
    for name in ("leaderboard.md", "gradient_profile.csv", "figures/test_accuracy.png"):
        assert (root / "reports" / name).is_file()
    for name in ("degradation.png", "gradient_profile.png", "resnet8/curves.png"):
        assert (root / "reports/figures" / name).is_file()
    assert (root / "reports/figures/plain8/confusion_normalized.png").is_file()
    # DVC metrics hold headline numbers only; the per-class table is a plain output.
    ev = json.loads((root / "metrics/resnet8/eval.json").read_text())
    assert set(ev["resnet8"]) == {"accuracy", "loss", "macro_f1", "weighted_f1"}
    per_class = pd.read_csv(root / "metrics/resnet8/per_class.csv")
    assert len(per_class) == 10 + 2  # classes, then the macro and weighted averages
    # The checkpoint stays out of git; metrics and plots are committed for `dvc metrics diff`.
    status = project.git("status", "--porcelain", "--untracked-files=all")
    assert "checkpoint.pt" not in status and "mlflow.db" not in status
    assert "metrics/resnet8/eval.json" in status
    project.commit("baseline")

    # Nothing changed, nothing runs; not even in a fresh clone, which has no bytecode caches
    # beside the sources (.dvcignore keeps them out of the code dependencies' hashes).
    caches = list((root / "src").rglob("__pycache__"))
    assert caches, "the stages imported the project's own copy of the package"
    for cache in caches:
        shutil.rmtree(cache)
    assert project.repro() == []

    # One variant's recipe: only its train and evaluate stages, and compare.
    params["variants"]["resnet8"]["lr"] = 0.05
    project.write_params(params)
    assert sorted(project.repro()) == ["compare", "evaluate@resnet8", "train@resnet8"]
    diff = project.dvc("params", "diff").stdout
    assert "variants.resnet8.lr" in diff and "0.05" in diff
    metrics_diff = project.dvc("metrics", "diff").stdout
    assert "metrics/resnet8/train.json" in metrics_diff
    assert "metrics/plain8/train.json" not in metrics_diff  # untouched variant, no change
    project.commit("resnet8 lr")

    # The shared training defaults: every variant retrains.
    params["train"]["label_smoothing"] = 0.1
    project.write_params(params)
    assert sorted(project.repro()) == sorted(TRAIN_ON)
    project.commit("label smoothing")

    # The validation split: prepare and everything downstream, but no download.
    params["data"]["val_size"] = 100
    project.write_params(params)
    assert sorted(project.repro()) == sorted(["prepare", *TRAIN_ON])
    project.commit("bigger val split")

    # Code changes re-run exactly the stages that run that code. The learning-rate schedule:
    # every variant retrains (and is evaluated and compared again); data and diagnostics stay.
    project.edit_code("resnetlab/engine.py")
    assert sorted(project.repro()) == sorted(TRAIN_ON)
    # A figure: only the drawing stage.
    project.edit_code("resnetlab/plots.py")
    assert project.repro() == ["compare"]
    # The gradient diagnostics: only their stage (its table comes out the same, so compare
    # has nothing new to draw).
    project.edit_code("resnetlab/diagnostics.py")
    assert project.repro() == ["diagnose"]
    project.commit("code edits")

    # A new variant trains alone (then compare takes it in).
    params["variants"]["resnet14"] = {"model": {"name": "resnet_v1", "depth": 14}}
    project.write_params(params)
    assert sorted(project.repro()) == ["compare", "evaluate@resnet14", "train@resnet14"]
    board = pd.read_csv(root / "reports/leaderboard.csv")
    assert sorted(board["variant"]) == ["plain8", "resnet14", "resnet8"]
    project.commit("resnet14")

    # A DVC experiment with a changed parameter; `dvc exp show` lists it with the new value.
    res = project.dvc("exp", "run", "-n", "short", "-S", "+variants.plain8.epochs=1")
    assert "Running stage 'train@plain8'" in res.stdout
    assert "Running stage 'train@resnet8'" not in res.stdout
    shown = project.dvc("exp", "show", "--csv").stdout
    rows = list(pd.read_csv(__import__("io").StringIO(shown))["Experiment"].fillna(""))
    assert "short" in rows
    assert "variants.plain8.epochs" in shown.splitlines()[0]

    # MLflow: one run per executed train stage (2 + 1 + 2 + 2 + 2 + 1 + 1 = 11), with its params.
    runs = mlflow_train_runs(project)
    assert len(runs) == 11
    assert all(r.info.status == "FINISHED" for r in runs)
    plain8 = sorted(
        (r for r in runs if r.data.tags["variant"] == "plain8"), key=lambda r: r.info.start_time
    )
    assert [r.data.params["train.epochs"] for r in plain8] == ["2", "2", "2", "2", "1"]
    assert plain8[-1].data.tags["dvc_exp_name"] == "short"
    assert [r.info.run_name for r in plain8] == [*["plain8"] * 4, "plain8 · short"]
    assert plain8[-1].data.params["train.label_smoothing"] == "0.1"
    # Evaluation logged into the same run as the training.
    assert "test_accuracy" in plain8[-1].data.metrics

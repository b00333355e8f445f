"""The whole pipeline under DVC on tiny data: incremental re-runs, experiments, MLflow runs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from browser import render_dvc_plots
from dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow

TRAIN_ON = ["train@plain8-0", "train@resnet8-0", "evaluate@plain8-0", "evaluate@resnet8-0"]
TRAIN_ON.append("compare")
ALL = ["download", "prepare", "diagnose", *TRAIN_ON]


# Reference numbers for the tiny variants, in the shipped file's format: one on the budget the
# variant trains with (a verdict), one on another (not comparable), and two claims.
TINY_PUBLISHED = """
sources:
  tiny: {cite: "Reference numbers for the tiny variants"}
results:
  cifar10:
    - {variant: resnet8, source: tiny, where: Table 1, metric: test_accuracy, value: 10.0,
       epochs: 2}
    - {variant: plain8, source: tiny, metric: test_error, value: 90.0, epochs: 182}
claims:
  cifar10:
    - {name: degradation, statement: plain8 ends training with a higher training error than
       resnet8, source: tiny, metric: final_train_error, higher: plain8, lower: resnet8}
    - {name: depth, statement: resnet8 has a lower test error than plain8, source: tiny,
       metric: test_error, higher: plain8, lower: resnet8}
"""


def ran(res) -> list[str]:
    """The stages a `dvc exp run` ran, sorted."""
    lines = res.stdout.splitlines()
    return sorted(line.split("'")[1] for line in lines if line.startswith("Running stage '"))


def stale(project: DvcProject) -> list[str]:
    """The stages `dvc status` says are out of date, sorted (nothing is run)."""
    status = json.loads(project.dvc("status", "--json").stdout or "{}")
    return sorted(status)


def mlflow_train_runs(project: DvcProject) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("stage") == "train"]


def test_pipeline_reruns_exactly_what_changed(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    params = tiny_params(archive, md5)
    params["evaluate"]["tta_variants"] = {"resnet8": "flip"}
    project = DvcProject(tmp_path / "proj", params)
    root = project.root
    (root / "published.yaml").write_text(TINY_PUBLISHED)
    project.commit("tiny published numbers")

    assert sorted(project.repro()) == sorted(ALL)
    board = pd.read_csv(root / "reports/leaderboard.csv")
    assert sorted(board["variant"]) == ["plain8", "resnet8"]
    for name in ("leaderboard.md", "gradient_profile.csv", "figures/test_accuracy.png"):
        assert (root / "reports" / name).is_file()
    for name in ("degradation.png", "gradient_profile.png", "resnet8/curves.png"):
        assert (root / "reports/figures" / name).is_file()
    assert (root / "reports/figures/plain8/confusion_normalized.png").is_file()
    # DVC metrics hold headline numbers only, the same fields in every run's file; the
    # per-class table is a plain output.
    ev = json.loads((root / "metrics/resnet8/seed0.json").read_text())
    assert set(ev) == {
        "accuracy",
        "val_accuracy",
        "loss",
        "macro_f1",
        "weighted_f1",
        "single_view_accuracy",
        "views",
    }
    # Test-time augmentation where evaluate.tta_variants asks for it (resnet8: flip), else none.
    assert ev["views"] == 2
    plain = json.loads((root / "metrics/plain8/seed0.json").read_text())
    assert plain["views"] == 1 and plain["accuracy"] == plain["single_view_accuracy"]
    per_class = pd.read_csv(root / "metrics/resnet8/seed0/per_class.csv")
    assert len(per_class) == 10 + 2  # classes, then the macro and weighted averages
    # The checkpoint stays out of git; metrics and plots are committed for `dvc metrics diff`.
    status = project.git("status", "--porcelain", "--untracked-files=all")
    assert "checkpoint.pt" not in status and "mlflow.db" not in status
    assert "metrics/resnet8/seed0.json" in status
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
    assert sorted(project.repro()) == ["compare", "evaluate@resnet8-0", "train@resnet8-0"]
    diff = project.dvc("params", "diff").stdout
    assert "variants.resnet8.lr" in diff and "0.05" in diff
    metrics_diff = project.dvc("metrics", "diff").stdout
    assert "metrics/resnet8/seed0.json" in metrics_diff and "reports/mean.json" in metrics_diff
    assert "metrics/plain8/seed0.json" not in metrics_diff  # untouched variant, no change
    project.commit("resnet8 lr")

    # The shared training defaults: every variant's training is out of date (`dvc status`, not
    # a run: the re-runs that follow from new models are what the code edit below shows).
    params["train"]["label_smoothing"] = 0.1
    project.write_params(params)
    assert stale(project) == ["train@plain8-0", "train@resnet8-0"]
    params["train"]["label_smoothing"] = 0.0
    project.write_params(params)
    assert stale(project) == []

    # The validation split: prepare and everything downstream, but no download.
    params["data"]["val_size"] = 100
    project.write_params(params)
    assert sorted(project.repro()) == sorted(["prepare", *TRAIN_ON])
    project.commit("bigger val split")

    # Code changes re-run exactly the stages that run that code. The learning-rate schedule:
    # every variant retrains (and is evaluated and compared again); data and diagnostics stay.
    project.edit_code("resnetlab/train/schedule.py")
    assert sorted(project.repro()) == sorted(TRAIN_ON)
    # A figure: only the drawing stage.
    project.edit_code("resnetlab/report/plots.py")
    assert project.repro() == ["compare"]
    # The gradient diagnostics: only their stage (its table comes out the same, so compare
    # has nothing new to draw).
    project.edit_code("resnetlab/report/gradients.py")
    assert project.repro() == ["diagnose"]
    project.commit("code edits")

    # A new variant trains alone (then compare takes it in).
    params["variants"]["resnet14"] = {"model": {"name": "resnet_v1", "depth": 14}}
    params["run_variants"].append("resnet14")
    project.write_params(params)
    assert sorted(project.repro()) == ["compare", "evaluate@resnet14-0", "train@resnet14-0"]
    board = pd.read_csv(root / "reports/leaderboard.csv")
    assert sorted(board["variant"]) == ["plain8", "resnet14", "resnet8"]
    project.commit("resnet14")

    # A DVC experiment with a changed parameter; `dvc exp show` lists it with the new value.
    res = project.dvc("exp", "run", "-n", "short", "-S", "+variants.plain8.epochs=1")
    assert "Running stage 'train@plain8-0'" in res.stdout
    assert "Running stage 'train@resnet8-0'" not in res.stdout
    shown = project.dvc("exp", "show", "--csv").stdout
    rows = list(pd.read_csv(__import__("io").StringIO(shown))["Experiment"].fillna(""))
    assert "short" in rows
    assert "variants.plain8.epochs" in shown.splitlines()[0]

    # MLflow: one run per executed train stage (2 + 1 + 2 + 2 + 1 + 1 = 9), with its params.
    runs = mlflow_train_runs(project)
    assert len(runs) == 9
    assert all(r.info.status == "FINISHED" for r in runs)
    plain8 = sorted(
        (r for r in runs if r.data.tags["variant"] == "plain8"), key=lambda r: r.info.start_time
    )
    assert [r.data.params["train.epochs"] for r in plain8] == ["2", "2", "2", "1"]
    assert plain8[-1].data.tags["dvc_exp_name"] == "short"
    assert [r.info.run_name for r in plain8] == [
        *["plain8 · seed 0"] * 3,
        "plain8 · seed 0 · short",
    ]
    assert plain8[-1].data.params["data.val_size"] == "100"
    # Evaluation logged into the same run as the training.
    assert "test_accuracy" in plain8[-1].data.metrics

    # Seeds: three per variant, as an experiment. Only the new runs train (seed 0's are up to
    # date); compare then reports mean ± std over n = 3. (resnet14 leaves first: fewer runs.)
    params = project.params()
    del params["variants"]["resnet14"]
    params["run_variants"].remove("resnet14")
    project.write_params(params)
    project.commit("without resnet14")
    res = project.dvc("exp", "run", "-n", "seeds", "-S", "seeds=[0,1,2]")
    variants = ["plain8", "resnet8"]
    new = [f"{s}@{v}-{k}" for s in ("evaluate", "train") for v in variants for k in (1, 2)]
    assert ran(res) == sorted(["compare", *new])
    for v in variants:
        for k in (0, 1, 2):
            assert (root / f"models/{v}/seed{k}/model.pt").is_file()
    board = pd.read_csv(root / "reports/leaderboard.csv")
    assert sorted(board["variant"]) == variants
    assert board["n"].tolist() == [3, 3] and (board["seeds"] == "0 1 2").all()
    assert board["test_accuracy_std"].notna().all() and board["macro_f1_std"].notna().all()
    assert len(pd.read_csv(root / "reports/runs.csv")) == 6
    assert "±" in (root / "reports/leaderboard.md").read_text()
    report = pd.read_csv(root / "reports/published_vs_measured.csv").set_index("variant")
    assert report.loc["resnet8", "verdict"] in {"reproduced", "better", "worse"}
    assert report.loc["resnet8", "n"] == 3
    assert report.loc["plain8", "verdict"] == "not comparable: 1 epochs, source 182"
    assert report.loc["claim: degradation", "verdict"] in {"holds", "contradicted", "inconclusive"}
    md = (root / "reports/published_vs_measured.md").read_text()
    assert "Reference numbers for the tiny variants, Table 1" in md and "(n = 3)" in md
    # MLflow: one finished run per variant and seed, each with its seed as param and tag.
    seeds_of: dict[str, set[str]] = {}
    for r in mlflow_train_runs(project):
        assert r.data.params["seed"] == r.data.tags["seed"] == r.data.params["train.seed"]
        name = [r.data.tags["variant"], f"seed {r.data.tags['seed']}"]
        assert r.info.run_name.split(" · ")[:2] == name
        if r.data.tags.get("dvc_exp_name") == "seeds":
            seeds_of.setdefault(r.data.tags["variant"], set()).add(r.data.tags["seed"])
    assert seeds_of == {v: {"1", "2"} for v in variants}  # seed 0's runs were already there
    project.commit("three seeds")

    # One variant's recipe: all of its seeds re-run, no other variant's.
    params = project.params()
    params["variants"]["plain8"]["lr"] = 0.05
    project.write_params(params)
    again = [f"{s}@plain8-{k}" for s in ("evaluate", "train") for k in (0, 1, 2)]
    assert sorted(project.repro()) == sorted(["compare", *again])

    # The top-level DVC plots overlay every variant (one line each, averaged over its seeds),
    # drawn with markers so that a one-epoch run (plain8) shows points.
    shown = json.loads(project.dvc("plots", "show", "--json", "validation_accuracy").stdout)
    (plot,) = shown["data"]["validation_accuracy"]
    spec = plot["content"]
    assert spec["mark"]["point"] is True and spec["encoding"]["color"]["field"] == "variant"
    points = spec["data"]["values"]
    assert {p["variant"] for p in points} == set(variants)
    assert [p["epoch"] for p in points if p["variant"] == "plain8"] == ["1"]

    # `dvc plots show` writes one page whose every chart renders with the network off: the
    # charting libraries are in the page (.dvc/plots/offline.html), not on a CDN (was: only the
    # PNGs rendered, the Vega charts waited on cdn.jsdelivr.net).
    project.dvc("plots", "show")
    page = project.root / "dvc_plots" / "index.html"
    assert "<script src=" not in page.read_text()
    rendered = render_dvc_plots(page)
    # curves: validation accuracy and training loss; one confusion chart per run (2 x 3 seeds);
    # the compare stage's three figures.
    assert rendered == {"charts": 8, "drawn": 8, "images": 3, "loaded": 3}, rendered

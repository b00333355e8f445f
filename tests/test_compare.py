"""The compare stage on fake per-variant metric files: leaderboard, reports, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from resnetlab import figures, leaderboard, tracking
from resnetlab.cli import main
from resnetlab.config import parse_params
from resnetlab.errors import ResnetlabError

# variant -> (model, depth, test accuracy, best val accuracy)
FAKE = {
    "plain8": ("plain", 8, 0.71, 0.70),
    "resnet8": ("resnet_v1", 8, 0.78, 0.77),
    "resnet14": ("resnet_v1", 14, 0.83, 0.81),
}


def make_params(variants: dict[str, tuple]) -> dict:
    return {
        "mlflow": {"experiment": "compare-test"},
        "variants": {v: {"model": {"name": m, "depth": d}} for v, (m, d, *_) in variants.items()},
    }


def write_metrics(metrics: Path, variants: dict[str, tuple]) -> None:
    for v, (model, depth, test_acc, val_acc) in variants.items():
        folder = metrics / v
        folder.mkdir(parents=True)
        card = {
            "variant": v,
            "model": model,
            "model_args": {"depth": depth},
            "depth": depth,
            "parameters": 1000 * depth,
            "best_epoch": 2,
        }
        (folder / "model.json").write_text(json.dumps(card))
        train = {
            "epochs": 3,
            "best_val_accuracy": val_acc,
            "train_time_s": 12.5 * depth,
            "images_per_s": 1000.0 / depth,
        }
        (folder / "train.json").write_text(json.dumps({v: train}))
        evaluation = {
            "accuracy": test_acc,
            "loss": 1.0 - test_acc,
            "macro_f1": test_acc - 0.01,
            "weighted_f1": test_acc - 0.005,
        }
        (folder / "eval.json").write_text(json.dumps({v: evaluation}))
        classes = ["cat", "dog"]
        pd.DataFrame(
            [[40, 10], [5, 45]], index=pd.Index(classes, name="actual"), columns=classes
        ).to_csv(folder / "confusion.csv")
        e = np.arange(1, 4)
        pd.DataFrame(
            {
                "epoch": e,
                "train_loss": 2.0 / e,
                "train_accuracy": val_acc * e / 3 + 0.02,
                "val_loss": 2.1 / e,
                "val_accuracy": val_acc * e / 3,
                "lr": 0.1,
                "epoch_time_s": 4.0,
                "images_per_s": 1000.0 / depth,
            }
        ).to_csv(folder / "history.csv", index=False)


@pytest.fixture
def fake_run(tmp_path: Path) -> tuple[list[str], Path]:
    write_metrics(tmp_path / "metrics", FAKE)
    return list(parse_params(make_params(FAKE)).variants), tmp_path / "metrics"


def test_build_leaderboard(fake_run) -> None:
    variants, metrics = fake_run
    board = leaderboard.build_leaderboard(variants, metrics)
    assert list(board.columns) == list(leaderboard.LEADERBOARD_COLUMNS)
    assert board["variant"].tolist() == ["resnet14", "resnet8", "plain8"]  # best test acc first
    row = board.set_index("variant").loc["plain8"]
    assert row["model"] == "plain" and row["depth"] == 8 and row["parameters"] == 8000
    assert row["test_accuracy"] == pytest.approx(0.71)
    assert row["test_error"] == pytest.approx(0.29)
    assert row["best_val_accuracy"] == pytest.approx(0.70)
    assert row["macro_f1"] == pytest.approx(0.70)
    assert row["train_time_s"] == pytest.approx(100.0)


def test_degradation_groups(fake_run) -> None:
    board = leaderboard.build_leaderboard(*fake_run)
    # resnet14 has no plain twin of its depth, so it stays out.
    assert leaderboard.degradation_groups(board) == {"plain": ["plain8"], "ResNet": ["resnet8"]}
    no_plain = board[board["model"] != "plain"]
    assert leaderboard.degradation_groups(no_plain) == {}


def test_leaderboard_and_comparison_figures(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    board = leaderboard.build_leaderboard(variants, metrics)
    histories = leaderboard.load_histories(variants, metrics)
    out = tmp_path / "reports"
    written = leaderboard.write_leaderboard(board, out)
    written += figures.write_comparison_figures(board, histories, out / "figures")
    names = {p.relative_to(out).as_posix() for p in written}
    assert names == {
        "leaderboard.csv",
        "leaderboard.md",
        "figures/test_accuracy.png",
        "figures/degradation.png",
    }
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
    for png in ("test_accuracy.png", "degradation.png"):
        with Image.open(out / "figures" / png) as im:
            assert im.format == "PNG"

    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv.columns) == list(leaderboard.LEADERBOARD_COLUMNS)
    assert csv["variant"].tolist() == ["resnet14", "resnet8", "plain8"]
    assert csv["test_accuracy"].tolist() == pytest.approx([0.83, 0.78, 0.71])

    md = (out / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| variant | model | depth | parameters | epochs | best val accuracy")
    assert md[0].endswith("| train time | images/s |")
    rows = md[2:]
    assert len(rows) == 3
    assert [r.split("|")[1].strip() for r in rows] == ["resnet14", "resnet8", "plain8"]
    assert "| 83.00% |" in rows[0] and "| 17.00% |" in rows[0]  # test accuracy, test error
    assert all(len(r.split("|")) == len(md[0].split("|")) for r in md)


def test_comparison_figures_without_plain_skip_degradation(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    board = leaderboard.build_leaderboard(variants, metrics)
    board = board[board["model"] != "plain"]
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "figures/degradation.png").write_bytes(b"stale")
    histories = leaderboard.load_histories(variants, metrics)
    written = figures.write_comparison_figures(board, histories, out / "figures")
    assert "degradation.png" not in {p.name for p in written}
    assert not (out / "figures/degradation.png").exists()  # a stale figure would mislead


def test_missing_eval_json_names_the_file(fake_run) -> None:
    variants, metrics = fake_run
    (metrics / "resnet8" / "eval.json").unlink()
    with pytest.raises(ResnetlabError) as err:
        leaderboard.build_leaderboard(variants, metrics)
    assert str(metrics / "resnet8" / "eval.json") in str(err.value)
    assert "dvc repro evaluate@resnet8" in str(err.value)


def test_missing_history_and_bad_json(fake_run) -> None:
    variants, metrics = fake_run
    (metrics / "plain8" / "train.json").write_text('{"plain8": {"epochs": 3}}')
    with pytest.raises(ResnetlabError, match=r"train.json: missing field 'best_val_accuracy'"):
        leaderboard.build_leaderboard(variants, metrics)
    (metrics / "plain8" / "history.csv").unlink()
    with pytest.raises(ResnetlabError, match=r"plain8.history\.csv: not found"):
        leaderboard.load_histories(variants, metrics)


def test_variant_figures_replace_stale_folders(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    folder = tmp_path / "figures"
    (folder / "gone").mkdir(parents=True)
    histories = leaderboard.load_histories(variants, metrics)
    confusions = {v: figures.load_confusion(metrics / v / "confusion.csv", v) for v in variants}
    written = figures.write_variant_figures(histories, confusions, folder)
    assert sorted(written) == sorted(variants)
    assert not (folder / "gone").exists()  # a removed variant's figures would mislead
    for v in variants:
        for name in figures.VARIANT_PNGS:
            with Image.open(folder / v / name) as im:
                assert im.format == "PNG"
    (metrics / "plain8" / "confusion.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ResnetlabError, match=r"confusion.csv: not a square confusion matrix"):
        figures.load_confusion(metrics / "plain8" / "confusion.csv", "plain8")


def test_cli_compare_draws_and_logs_to_mlflow(fake_run, tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from resnetlab.records import RunFile

    _, metrics = fake_run
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(make_params(FAKE)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's artifact store defaults to ./mlruns
    client = MlflowClient(uri)
    # A training run of resnet8, as the train stage would have left it.
    experiment_id = client.create_experiment("compare-test")
    train_run = client.create_run(experiment_id, run_name="resnet8").info.run_id
    RunFile(train_run, "compare-test").write(tmp_path / "models/resnet8/mlflow_run.json")
    gradients = tmp_path / "reports" / "gradient_profile.csv"
    assert main(["diagnose", "--params", str(params_path), "--out", str(gradients)]) == 0

    out = tmp_path / "reports"
    argv = ["compare", "--params", str(params_path), "--metrics", str(metrics)]
    argv += ["--gradients", str(gradients), "--models", str(tmp_path / "models")]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    runs = client.search_runs([experiment_id], filter_string="tags.stage = 'compare'")
    (run,) = runs
    # Outside `dvc exp run` and git: the parent run of this commit-less `dvc repro` and params.
    assert run.info.run_name.startswith("repro no-git ") and run.info.status == "FINISHED"
    assert run.data.tags[tracking.PARENT_KEY_TAG].startswith("repro:no-git:")
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged >= {
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.json",
        "test_accuracy.png",
        "degradation.png",
        "gradient_profile.png",
    }
    # The variant's own figures went into its training run.
    logged_figures = {a.path for a in client.list_artifacts(train_run, "figures")}
    assert logged_figures == {f"figures/{name}" for name in figures.VARIANT_PNGS}
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["variant"].tolist() == ["resnet14", "resnet8", "plain8"]
    assert (out / "figures/plain8/curves.png").is_file()

    # A missing variant is a one-line error (exit 1), not a traceback, and nothing is logged.
    (metrics / "resnet14" / "train.json").unlink()
    assert main(argv) == 1
    assert len(client.search_runs([experiment_id], filter_string="tags.stage = 'compare'")) == 1

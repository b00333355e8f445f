"""The compare stage on fake per-variant metric files: leaderboard, reports, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from resnetlab.cli import main
from resnetlab.config import Params, parse_params
from resnetlab.errors import ResnetlabError
from resnetlab.stages import compare

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
        train = {
            "variant": v,
            "model": model,
            "model_args": {"depth": depth},
            "depth": depth,
            "parameters": 1000 * depth,
            "epochs": 3,
            "best_epoch": 2,
            "best_val_accuracy": val_acc,
            "train_time_s": 12.5 * depth,
            "images_per_s": 1000.0 / depth,
        }
        (folder / "train.json").write_text(json.dumps(train))
        evaluation = {
            "accuracy": test_acc,
            "error": 1 - test_acc,
            "loss": 1.0 - test_acc,
            "macro_f1": test_acc - 0.01,
            "weighted_f1": test_acc - 0.005,
            "per_class": {},
        }
        (folder / "eval.json").write_text(json.dumps(evaluation))
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
def fake_run(tmp_path: Path) -> tuple[Params, Path]:
    write_metrics(tmp_path / "metrics", FAKE)
    return parse_params(make_params(FAKE)), tmp_path / "metrics"


def test_build_leaderboard(fake_run) -> None:
    params, metrics = fake_run
    board = compare.build_leaderboard(params, metrics)
    assert list(board.columns) == list(compare.LEADERBOARD_COLUMNS)
    assert board["variant"].tolist() == ["resnet14", "resnet8", "plain8"]  # best test acc first
    row = board.set_index("variant").loc["plain8"]
    assert row["model"] == "plain" and row["depth"] == 8 and row["parameters"] == 8000
    assert row["test_accuracy"] == pytest.approx(0.71)
    assert row["test_error"] == pytest.approx(0.29)
    assert row["best_val_accuracy"] == pytest.approx(0.70)
    assert row["macro_f1"] == pytest.approx(0.70)
    assert row["train_time_s"] == pytest.approx(100.0)


def test_degradation_groups(fake_run) -> None:
    board = compare.build_leaderboard(*fake_run)
    # resnet14 has no plain twin of its depth, so it stays out.
    assert compare.degradation_groups(board) == {"plain": ["plain8"], "ResNet": ["resnet8"]}
    no_plain = board[board["model"] != "plain"]
    assert compare.degradation_groups(no_plain) == {}


def test_write_reports(fake_run, tmp_path: Path) -> None:
    params, metrics = fake_run
    board = compare.build_leaderboard(params, metrics)
    histories = compare.load_histories(params, metrics)
    out = tmp_path / "reports"
    written = compare.write_reports(board, histories, out, depths=())
    names = {p.name for p in written}
    assert names == {"leaderboard.csv", "leaderboard.md", "test_accuracy.png", "degradation.png"}
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
    for png in ("test_accuracy.png", "degradation.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG"

    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv.columns) == list(compare.LEADERBOARD_COLUMNS)
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


def test_write_reports_without_plain_skips_degradation(fake_run, tmp_path: Path) -> None:
    params, metrics = fake_run
    board = compare.build_leaderboard(params, metrics)
    board = board[board["model"] != "plain"]
    out = tmp_path / "reports"
    out.mkdir()
    (out / "degradation.png").write_bytes(b"stale")
    written = compare.write_reports(board, compare.load_histories(params, metrics), out, depths=())
    assert "degradation.png" not in {p.name for p in written}
    assert not (out / "degradation.png").exists()  # a stale figure would mislead


def test_missing_eval_json_names_the_file(fake_run) -> None:
    params, metrics = fake_run
    (metrics / "resnet8" / "eval.json").unlink()
    with pytest.raises(ResnetlabError) as err:
        compare.build_leaderboard(params, metrics)
    assert str(metrics / "resnet8" / "eval.json") in str(err.value)
    assert "dvc repro evaluate@resnet8" in str(err.value)


def test_missing_history_and_bad_json(fake_run) -> None:
    params, metrics = fake_run
    (metrics / "plain8" / "train.json").write_text('{"model": "plain"}')
    with pytest.raises(ResnetlabError, match=r"missing key.*depth"):
        compare.build_leaderboard(params, metrics)
    (metrics / "plain8" / "history.csv").unlink()
    with pytest.raises(ResnetlabError, match=r"plain8.history\.csv: not found"):
        compare.load_histories(params, metrics)


def test_gradient_profile(tmp_path: Path) -> None:
    written = compare.write_gradient_profile(tmp_path, depths=(8, 14))
    assert {p.name for p in written} == {"gradient_profile.csv", "gradient_profile.png"}
    frame = pd.read_csv(tmp_path / "gradient_profile.csv")
    assert list(frame.columns) == ["label", "layer_index", "layer", "grad_norm"]
    labels = ["plain-8", "resnet_v1-8", "plain-14", "resnet_v1-14"]
    assert frame["label"].unique().tolist() == labels
    # A plain net of depth d has d weight layers (convolutions + the classifier), 1-based.
    for d in (8, 14):
        layers = frame[frame["label"] == f"plain-{d}"]
        assert layers["layer_index"].tolist() == list(range(1, d + 1))
    assert (frame["grad_norm"] > 0).all()
    # Same seed, same numbers: the figure is reproducible.
    again = compare.gradient_profiles(depths=(8,))
    first = frame[frame["label"] == "plain-8"]["grad_norm"].to_numpy()
    np.testing.assert_allclose(list(again["plain-8"].values()), first, rtol=1e-6)
    with Image.open(tmp_path / "gradient_profile.png") as im:
        assert im.format == "PNG"


def test_cli_compare_logs_a_run_to_mlflow(fake_run, tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    _, metrics = fake_run
    params = make_params(FAKE)
    params["compare"] = {"gradient_depths": [8]}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's artifact store defaults to ./mlruns

    out = tmp_path / "reports"
    argv = ["compare", "--params", str(params_path), "--metrics", str(metrics), "--out", str(out)]
    assert main(argv) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "compare" and run.data.tags["stage"] == "compare"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged >= {
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.json",
        "test_accuracy.png",
        "degradation.png",
        "gradient_profile.csv",
        "gradient_profile.png",
    }
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["variant"].tolist() == ["resnet14", "resnet8", "plain8"]

    # A missing variant is a one-line error (exit 1), not a traceback, and nothing is logged.
    (metrics / "resnet14" / "train.json").unlink()
    assert main(argv) == 1
    assert len(client.search_runs([experiment.experiment_id])) == 1  # nothing logged

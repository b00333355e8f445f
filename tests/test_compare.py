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
from resnetlab.core.errors import ResnetlabError
from resnetlab.core.params import parse_params
from resnetlab.report import figures, leaderboard
from resnetlab.tracking import lineage

# variant -> (model, depth, test accuracy, best val accuracy) of seed 0; seed k adds k / 100 to
# both, so over SEEDS each has mean + 0.01 and sample std 0.01.
FAKE = {
    "plain8": ("plain", 8, 0.71, 0.70),
    "resnet8": ("resnet_v1", 8, 0.78, 0.77),
    "resnet14": ("resnet_v1", 14, 0.83, 0.81),
}
SEEDS = [0, 1, 2]


def make_params(variants: dict[str, tuple], seeds: list[int] = SEEDS) -> dict:
    return {
        "seeds": seeds,
        "mlflow": {"experiment": "compare-test"},
        "variants": {v: {"model": {"name": m, "depth": d}} for v, (m, d, *_) in variants.items()},
    }


def write_metrics(metrics: Path, variants: dict[str, tuple], seeds: list[int] = SEEDS) -> None:
    for v, (model, depth, test0, val0) in variants.items():
        for k in seeds:
            test_acc, val_acc = test0 + k / 100, val0 + k / 100
            folder = metrics / v / f"seed{k}"
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
            (folder / "train.json").write_text(json.dumps(train))
            evaluation = {
                "accuracy": test_acc,
                "val_accuracy": val_acc,
                "loss": 1.0 - test_acc,
                "macro_f1": test_acc - 0.01,
                "weighted_f1": test_acc - 0.005,
                "single_view_accuracy": test_acc,
                "views": 1,
            }
            (metrics / v / f"seed{k}.json").write_text(json.dumps(evaluation))
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


def board_of(variants: list[str], metrics: Path, seeds: list[int] = SEEDS) -> pd.DataFrame:
    return leaderboard.build_leaderboard(leaderboard.build_runs(variants, seeds, metrics))


def test_build_leaderboard_over_seeds(fake_run) -> None:
    variants, metrics = fake_run
    runs = leaderboard.build_runs(variants, SEEDS, metrics)
    assert list(runs.columns) == list(leaderboard.RUN_COLUMNS)
    assert len(runs) == 9 and runs["seed"].tolist() == SEEDS * 3
    board = leaderboard.build_leaderboard(runs)
    assert list(board.columns) == list(leaderboard.LEADERBOARD_COLUMNS)
    assert board["variant"].tolist() == ["resnet14", "resnet8", "plain8"]  # best test acc first
    row = board.set_index("variant").loc["plain8"]
    assert row["model"] == "plain" and row["depth"] == 8 and row["parameters"] == 8000
    assert row["n"] == 3 and row["seeds"] == "0 1 2"
    # Mean and sample (ddof = 1) std of 0.71, 0.72, 0.73.
    assert row["test_accuracy"] == pytest.approx(0.72)
    assert row["test_accuracy_std"] == pytest.approx(0.01)
    assert row["test_error"] == pytest.approx(0.28)
    assert row["test_error_std"] == pytest.approx(0.01)
    assert row["best_val_accuracy"] == pytest.approx(0.71)
    assert row["best_val_accuracy_std"] == pytest.approx(0.01)
    assert row["macro_f1"] == pytest.approx(0.71)
    assert row["macro_f1_std"] == pytest.approx(0.01)
    assert row["train_time_s"] == pytest.approx(100.0)

    # One seed: n = 1, no std (one run says nothing about the spread), and no "±" shown.
    single = board_of(variants, metrics, [2])
    assert single["n"].tolist() == [1, 1, 1]
    assert single["test_accuracy_std"].isna().all()
    assert single.set_index("variant").loc["plain8", "test_accuracy"] == pytest.approx(0.73)
    md = leaderboard.leaderboard_markdown(single)
    assert "±" not in md and "| 73.00% |" in md


def test_degradation_groups(fake_run) -> None:
    board = board_of(*fake_run)
    # resnet14 has no plain twin of its depth, so it stays out.
    assert leaderboard.degradation_groups(board) == {"plain": ["plain8"], "ResNet": ["resnet8"]}
    no_plain = board[board["model"] != "plain"]
    assert leaderboard.degradation_groups(no_plain) == {}


def test_mean_curves(fake_run) -> None:
    variants, metrics = fake_run
    curves = leaderboard.mean_curves(leaderboard.load_histories(variants, SEEDS, metrics))
    assert len(curves) == 3 * 3  # 3 variants x 3 epochs
    last = curves[(curves["variant"] == "plain8") & (curves["epoch"] == 3)].iloc[0]
    assert last["n"] == 3
    assert last["val_accuracy"] == pytest.approx(0.71)  # mean of 0.70, 0.71, 0.72
    assert last["val_accuracy_std"] == pytest.approx(0.01)
    assert set(leaderboard.curves_of(curves)) == set(variants)


def test_leaderboard_and_comparison_figures(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    runs = leaderboard.build_runs(variants, SEEDS, metrics)
    board = leaderboard.build_leaderboard(runs)
    curves = leaderboard.mean_curves(leaderboard.load_histories(variants, SEEDS, metrics))
    out = tmp_path / "reports"
    written = leaderboard.write_leaderboard(board, out, runs, curves)
    written += figures.write_comparison_figures(
        board, leaderboard.curves_of(curves), out / "figures", None, runs
    )
    names = {p.relative_to(out).as_posix() for p in written}
    assert names == {
        "leaderboard.csv",
        "leaderboard.md",
        "runs.csv",
        "curves.csv",
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
    assert csv["test_accuracy"].tolist() == pytest.approx([0.84, 0.79, 0.72])
    assert len(pd.read_csv(out / "runs.csv")) == 9

    md = (out / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| variant | model | depth | parameters | epochs | n | best val acc")
    assert md[0].endswith("| train time | images/s |")
    rows = md[2:]
    assert len(rows) == 3
    assert [r.split("|")[1].strip() for r in rows] == ["resnet14", "resnet8", "plain8"]
    # test accuracy and test error as mean ± sample std, and n = 3
    assert "| 84.00% ± 1.00% |" in rows[0] and "| 16.00% ± 1.00% |" in rows[0]
    assert "| 3 |" in rows[0]
    assert all(len(r.split("|")) == len(md[0].split("|")) for r in md)


def test_accuracy_bars_have_error_bars_and_seed_dots(fake_run, tmp_path: Path, monkeypatch):
    from resnetlab.report import plots

    variants, metrics = fake_run
    runs = leaderboard.build_runs(variants, SEEDS, metrics)
    board = leaderboard.build_leaderboard(runs)
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    plots.plot_test_accuracy(board, tmp_path / "acc.png", runs)
    (ax,) = drawn[0].axes
    (dots,) = ax.collections[-1:]  # the scatter of the seeds, drawn last
    offsets = dots.get_offsets()
    assert len(offsets) == 9  # one dot per variant and seed
    # plain8's seeds sit on plain8's bar (the lowest: bars run best on top).
    plain_row = sorted(board["test_accuracy"]).index(
        board.set_index("variant").loc["plain8"]["test_accuracy"]
    )
    plain_x = sorted(x for x, y in offsets if y == plain_row)
    assert plain_x == pytest.approx([71.0, 72.0, 73.0])
    # One error bar per variant, one sample std (1 point) each side of the mean.
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (errorbar,) = bars.lines[2]
    segments = errorbar.get_segments()
    assert len(segments) == 3
    assert all(seg[1][0] - seg[0][0] == pytest.approx(2.0) for seg in segments)


def test_degradation_draws_bands_over_seeds(fake_run, tmp_path: Path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from resnetlab.report import plots

    variants, metrics = fake_run
    curves = leaderboard.curves_of(
        leaderboard.mean_curves(leaderboard.load_histories(variants, SEEDS, metrics))
    )
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    plots.plot_degradation(curves, {"plain": ["plain8"], "ResNet": ["resnet8"]}, tmp_path / "d")
    for ax in drawn[0].axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # training and validation error, each mean +- one std
    # A single seed has no spread: no band.
    single = leaderboard.curves_of(
        leaderboard.mean_curves(leaderboard.load_histories(variants, [0], metrics))
    )
    plots.plot_degradation(single, {"plain": ["plain8"]}, tmp_path / "d1")
    assert not drawn[1].axes[0].collections


def test_comparison_figures_without_plain_skip_degradation(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    board = board_of(variants, metrics)
    board = board[board["model"] != "plain"]
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "figures/degradation.png").write_bytes(b"stale")
    curves = leaderboard.mean_curves(leaderboard.load_histories(variants, SEEDS, metrics))
    written = figures.write_comparison_figures(
        board, leaderboard.curves_of(curves), out / "figures"
    )
    assert "degradation.png" not in {p.name for p in written}
    assert not (out / "figures/degradation.png").exists()  # a stale figure would mislead


def test_missing_metrics_file_names_the_file_and_the_run(fake_run) -> None:
    variants, metrics = fake_run
    (metrics / "resnet8" / "seed1.json").unlink()
    with pytest.raises(ResnetlabError) as err:
        leaderboard.build_runs(variants, SEEDS, metrics)
    assert str(metrics / "resnet8" / "seed1.json") in str(err.value)
    assert "dvc repro evaluate@resnet8-1" in str(err.value)
    # A seed not yet trained: the same kind of message, naming its stage.
    with pytest.raises(ResnetlabError, match=r"dvc repro train@plain8-7"):
        leaderboard.build_runs(variants, [0, 7], metrics)


def test_missing_history_and_bad_json(fake_run) -> None:
    variants, metrics = fake_run
    (metrics / "plain8" / "seed0" / "train.json").write_text('{"epochs": 3}')
    with pytest.raises(ResnetlabError, match=r"train.json: missing field 'best_val_accuracy'"):
        leaderboard.build_runs(variants, SEEDS, metrics)
    (metrics / "plain8" / "seed2" / "history.csv").unlink()
    with pytest.raises(ResnetlabError, match=r"seed2.history\.csv: not found"):
        leaderboard.load_histories(variants, SEEDS, metrics)


def test_variant_figures_replace_stale_folders(fake_run, tmp_path: Path) -> None:
    variants, metrics = fake_run
    folder = tmp_path / "figures"
    (folder / "gone").mkdir(parents=True)
    curves = leaderboard.mean_curves(leaderboard.load_histories(variants, SEEDS, metrics))
    confusions = {v: figures.pooled_confusion(v, SEEDS, metrics) for v in variants}
    assert confusions["plain8"][1].tolist() == [[120, 30], [15, 135]]  # summed over 3 seeds
    written = figures.write_variant_figures(leaderboard.curves_of(curves), confusions, folder)
    assert sorted(written) == sorted(variants)
    assert not (folder / "gone").exists()  # a removed variant's figures would mislead
    for v in variants:
        for name in figures.VARIANT_PNGS:
            with Image.open(folder / v / name) as im:
                assert im.format == "PNG"
    path = metrics / "plain8" / "seed0" / "confusion.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ResnetlabError, match=r"confusion.csv: not a square confusion matrix"):
        figures.pooled_confusion("plain8", SEEDS, metrics)


def test_cli_compare_draws_and_logs_to_mlflow(fake_run, tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from resnetlab.core.records import RunFile

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
    RunFile(train_run, "compare-test").write(tmp_path / "models/resnet8/seed0/mlflow_run.json")
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
    assert run.data.tags[lineage.PARENT_KEY_TAG].startswith("repro:no-git:")
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
    # mean.json, the DVC metrics file `dvc exp show` sorts by: the runs' fields, each the
    # mean over the 9 runs; the views, the same in every run, stay a count.
    evals = [json.loads(p.read_text()) for p in sorted(metrics.glob("*/seed*.json"))]
    mean = json.loads((out / "mean.json").read_text())
    assert len(evals) == 9 and list(mean) == list(evals[0])
    assert mean["accuracy"] == pytest.approx(sum(e["accuracy"] for e in evals) / 9)
    assert mean["val_accuracy"] == pytest.approx(sum(e["val_accuracy"] for e in evals) / 9)
    assert mean["views"] == 1 and isinstance(mean["views"], int)
    assert "mean.json" in logged

    # A missing run is a one-line error (exit 1), not a traceback, and nothing is logged.
    (metrics / "resnet14" / "seed2" / "train.json").unlink()
    assert main(argv) == 1
    assert len(client.search_runs([experiment_id], filter_string="tags.stage = 'compare'")) == 1


PUBLISHED = """
sources:
  paper: {cite: "A. Author. A Paper. 2015"}
  other: {cite: "B. Author. Another Paper. 2016"}
results:
  cifar10:
    # plain8 measures 71, 72, 73 % test accuracy: mean 72, std 1, standard error 0.577.
    - {variant: plain8, source: paper, where: Table 1, metric: test_accuracy, value: 72.5,
       epochs: 3}
    - {variant: resnet8, source: paper, metric: test_accuracy, value: 70.0, epochs: 3}
    - {variant: resnet14, source: paper, metric: test_error, value: 10.0, pm: 0.5, epochs: 3}
    - {variant: resnet14, source: paper, where: longer, metric: test_error, value: 16.2, epochs: 9}
    - {variant: gone, source: paper, metric: test_error, value: 1.0}
  # Another dataset's numbers for the same variants: never set against a CIFAR-10 run.
  cifar100:
    - {variant: resnet14, source: other, where: Table 2, metric: test_error, value: 16.0,
       epochs: 3, train_images: 45000}
claims:
  cifar10:
    - {name: order, statement: resnet14 beats plain8, source: paper, metric: test_error,
       higher: plain8, lower: resnet14}
    - {name: reversed, statement: plain8 beats resnet14, source: paper, metric: test_error,
       higher: resnet14, lower: plain8}
    - {name: degradation, statement: plain8 trains worse than resnet8, source: paper,
       metric: final_train_error, higher: plain8, lower: resnet8}
    - {name: missing, statement: x, source: paper, metric: test_error, higher: x, lower: plain8}
"""


def test_published_vs_measured_verdicts_and_claims(fake_run, tmp_path: Path) -> None:
    from resnetlab.report import published, published_file

    variants, metrics = fake_run
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED)
    data = published_file.load_published(path).for_dataset("cifar10")
    runs = leaderboard.build_runs(variants, SEEDS, metrics)
    finals = published.final_train_errors(leaderboard.load_histories(variants, SEEDS, metrics))
    table = published.compare_published(data, runs, finals, train_images=45000, subset=0)
    verdicts = dict(zip(table["variant"] + "/" + table["where"], table["verdict"], strict=True))
    assert verdicts == {
        "plain8/Table 1": "reproduced",  # 0.5 below: within 2 standard errors (1.15)
        "resnet8/": "better",  # 79 +- 1 against 70
        "resnet14/": "worse",  # 16 % error against 10 +- 0.5
        "resnet14/longer": "not comparable: 3 epochs, source 9",
    }
    row = table[table["variant"] == "plain8"].iloc[0]
    assert (row["measured_mean"], row["measured_std"], row["n"]) == pytest.approx((72, 1, 3))
    assert row["difference"] == pytest.approx(-0.5)
    # A subset run is never the source's budget.
    subset = published.compare_published(data, runs, finals, train_images=500, subset=500)
    assert subset["verdict"].str.startswith("not comparable: ").all()
    assert "500-image subset" in subset["verdict"].iloc[0]

    checks = {c.claim.name: c.verdict for c in published.check_claims(data, runs, finals)}
    assert checks == {
        "order": "holds",  # 28 +- 1 vs 16 +- 1 % error
        "reversed": "contradicted",
        "degradation": "holds",  # last-epoch training error 28 +- 1 vs 21 +- 1 %
        "missing": "not checked",
    }
    single = leaderboard.build_runs(variants, [0], metrics)
    one = {c.claim.name: c.verdict for c in published.check_claims(data, single, finals)}
    assert one["order"] == "holds (n = 1)"

    out = tmp_path / "reports"
    written = published.write_report(table, published.check_claims(data, runs, finals), out, data)
    assert [p.name for p in written] == ["published_vs_measured.csv", "published_vs_measured.md"]
    md = (out / "published_vs_measured.md").read_text()
    assert "Dataset: CIFAR-10 (`cifar10`)." in md
    assert "| plain8 | test_accuracy | 72.50 | 72.00 ± 1.00% (n = 3) | -0.50 | reproduced |" in md
    assert "A. Author. A Paper. 2015, Table 1" in md
    assert "**resnet14 beats plain8** (A. Author. A Paper. 2015): **holds**" in md
    csv = pd.read_csv(out / "published_vs_measured.csv")
    assert csv["verdict"].tolist()[-4:] == ["holds", "contradicted", "holds", "not checked"]


def test_published_file_errors_name_the_entry(tmp_path: Path) -> None:
    from resnetlab.report import published_file

    path = tmp_path / "published.yaml"
    with pytest.raises(ResnetlabError, match=r"published\.yaml: not found"):
        published_file.load_published(path)
    head = "sources: {a: {cite: x}}\n"
    path.write_text(head + "results:\n  cifar10:\n    - {variant: v, source: b}\n")
    with pytest.raises(
        ResnetlabError, match=r"results\.cifar10\[0\]\.source: 'b' is not a key of sources"
    ):
        published_file.load_published(path)
    path.write_text(head + "results:\n  cifar100:\n    - {variant: v, source: a, metric: speed}\n")
    with pytest.raises(ResnetlabError, match=r"results\.cifar100\[0\]\.metric: 'speed'"):
        published_file.load_published(path)
    path.write_text(head + "claims:\n  cifar100:\n    - {name: c, source: a}\n")
    with pytest.raises(ResnetlabError, match=r"claims\.cifar100\[0\]\.statement: None"):
        published_file.load_published(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The flat list of the file's first format: whose dataset's numbers is unknown.
        (
            "results:\n  - {variant: v, source: a}\n",
            "published.yaml: results: expected a mapping of dataset -> list "
            "(e.g. cifar10: [...]), got list",
        ),
        (
            "claims: [x]\n",
            "published.yaml: claims: expected a mapping of dataset -> list "
            "(e.g. cifar10: [...]), got list",
        ),
        (
            "results:\n  cifar100: {variant: v, source: a}\n",
            "published.yaml: results.cifar100: expected a list, got dict",
        ),
        (
            "claims:\n  cifar100: yes\n",
            "published.yaml: claims.cifar100: expected a list, got bool",
        ),
        (
            "results:\n  cifar-100: []\n",
            "published.yaml: results.cifar-100: not a dataset; expected one of cifar10, "
            "cifar100, cifar100_coarse, folder",
        ),
        (
            "results:\n  cifar100:\n    - resnet18\n",
            "published.yaml: results.cifar100[0]: expected a mapping",
        ),
    ],
)
def test_malformed_dataset_section_is_a_one_line_error_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    from resnetlab.report import published_file

    path = tmp_path / "published.yaml"
    path.write_text("sources: {a: {cite: x}}\n" + text)
    with pytest.raises(ResnetlabError) as err:
        published_file.load_published(path)
    assert str(err.value) == message


def test_a_dataset_without_numbers_gets_an_empty_comparison_and_one_line(
    fake_run, tmp_path: Path
) -> None:
    from resnetlab.report import published, published_file

    variants, metrics = fake_run
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED)
    loaded = published_file.load_published(path)
    assert not loaded.for_dataset("cifar100").empty
    runs = leaderboard.build_runs(variants, SEEDS, metrics)
    finals = published.final_train_errors(leaderboard.load_histories(variants, SEEDS, metrics))
    for key in ("cifar100_coarse", "folder"):
        numbers = loaded.for_dataset(key)
        assert numbers.empty and numbers.dataset == key
        table = published.compare_published(numbers, runs, finals, 45000, 0)
        assert table.empty and list(table.columns) == list(published.REPORT_COLUMNS)
        claims = published.check_claims(numbers, runs, finals)
        assert claims == []
        out = tmp_path / key
        # Both files are written all the same: they are the stage's DVC outputs.
        written = published.write_report(table, claims, out, numbers)
        assert [p.name for p in written] == [
            "published_vs_measured.csv",
            "published_vs_measured.md",
        ]
        md = (out / "published_vs_measured.md").read_text().splitlines()
        assert md[0] == "# Published vs measured"
        (note,) = [line for line in md[1:] if line]
        assert note.startswith("No published numbers exist for ") and f"(`{key}`)" in note
        csv = pd.read_csv(out / "published_vs_measured.csv")
        assert csv.empty and list(csv.columns) == list(published.REPORT_COLUMNS)
    assert published.no_numbers_line("folder") == (
        "No published numbers exist for image folder (`folder`) in published.yaml: "
        "nothing to compare."
    )
    # A file without a word of CIFAR-10 leaves CIFAR-10 without numbers too.
    path.write_text("sources: {}\nresults: {cifar100: []}\n")
    assert published_file.load_published(path).for_dataset("cifar10").empty


def test_shipped_cifar100_rows_load() -> None:
    from resnetlab.report import published_file

    root = Path(__file__).resolve().parents[1]
    shipped = published_file.load_published(root / "published.yaml")
    rows = {r.variant: r for r in shipped.for_dataset("cifar100").results}
    got = {v: (r.source, r.where, r.metric, r.value, r.pm) for v, r in rows.items()}
    assert got == {
        "resnet18": ("devries2017", "Table 1", "test_error", 22.46, 0.31),
        "resnet18_cutout8": ("devries2017", "Table 1", "test_error", 21.96, 0.24),
        "preact_resnet164": ("he2016", "Table 3", "test_error", 24.33, None),
        "preact_resnet1001": ("he2016", "Table 3", "test_error", 22.71, None),
    }
    assert {(r.epochs, r.train_images) for r in rows.values() if r.source == "devries2017"} == {
        (200, 50000)
    }
    assert {(r.epochs, r.train_images) for r in rows.values() if r.source == "he2016"} == {
        (182, 45000)
    }
    assert not any(r.differs for r in rows.values())  # each variant is the source's network
    # The variants are the sources' networks and recipes: DeVries & Taylor's 8x8 Cutout on
    # CIFAR-100, He et al.'s pre-activation bottleneck nets.
    from resnetlab.core.params import load_params

    params = load_params(root / "params.yaml")
    cutout8 = params.variant("resnet18_cutout8").train
    assert cutout8.augment.cutout_size == 8 and cutout8.epochs == 200
    assert params.variant("resnet18_cutout").train.augment.cutout_size == 16
    for variant, depth in (("preact_resnet164", 164), ("preact_resnet1001", 1001)):
        model = params.variant(variant).model
        assert (model.name, dict(model.args)) == (
            "resnet_v2",
            {"depth": depth, "block": "bottleneck"},
        )
    # CIFAR-10's rows and claims stay CIFAR-10's alone.
    cifar10 = shipped.for_dataset("cifar10")
    assert len(cifar10.results) == 18 and len(cifar10.claims) == 5
    assert shipped.for_dataset("cifar100").claims == ()
    for key in ("cifar100_coarse", "folder"):
        assert shipped.for_dataset(key).empty


def test_shipped_published_file_names_shipped_variants() -> None:
    from resnetlab.core.params import load_params
    from resnetlab.report import published_file

    root = Path(__file__).resolve().parents[1]
    data = published_file.load_published(root / "published.yaml")
    declared = set(load_params(root / "params.yaml").variants)
    results = [r for rows in data.results.values() for r in rows]
    named = {r.variant for r in results}
    named |= {v for claims in data.claims.values() for c in claims for v in (c.higher, c.lower)}
    assert named <= declared, sorted(named - declared)
    assert all(r.epochs for r in results)  # every number carries its budget


def write_prepared_meta(folder: Path, dataset: str, train_images: int) -> None:
    """What compare reads of the prepared data: meta.json and the train labels' .npy header."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": dataset,
        "classes": ["cat", "dog"],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "counts": {"train": train_images, "val": 10, "test": 10},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    np.save(folder / "train_labels.npy", np.zeros(train_images, dtype=np.int64))


def test_cli_compare_uses_the_published_numbers_of_the_prepared_datas_dataset(
    fake_run, tmp_path: Path, monkeypatch
) -> None:
    from resnetlab.pipeline import compare

    _, metrics = fake_run
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(make_params(FAKE)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "published.yaml").write_text(PUBLISHED)
    data, out = tmp_path / "prepared", tmp_path / "reports"
    argv = ["compare", "--params", str(params_path), "--metrics", str(metrics)]
    argv += ["--out", str(out), "--published", "published.yaml", "--data", str(data)]
    report_csv, report_md = out / "published_vs_measured.csv", out / "published_vs_measured.md"

    # Prepared from CIFAR-100: CIFAR-10's rows and claims do not apply, CIFAR-100's does, and
    # the training budget is the prepared train split's size (500 images, not 45k).
    write_prepared_meta(data, "cifar100", 500)
    assert compare.prepared_dataset(data) == ("cifar100", 500)
    assert main(argv) == 0
    report = pd.read_csv(report_csv)
    assert report["variant"].tolist() == ["resnet14"]
    (verdict,) = report["verdict"]
    assert verdict == "not comparable: 500 training images, source 45000"
    assert report["source"].tolist() == ["B. Author. Another Paper. 2016"]
    md = report_md.read_text()
    assert "Dataset: CIFAR-100 (`cifar100`)." in md and "plain8" not in md
    assert "## Claims" in md and "- (none)" in md

    # A dataset the file gives nothing: both reports written, the Markdown saying so in a line.
    write_prepared_meta(data, "cifar100_coarse", 500)
    assert main(argv) == 0
    assert pd.read_csv(report_csv).empty
    assert report_md.read_text() == (
        "# Published vs measured\n\nNo published numbers exist for CIFAR-100 (20 superclasses) "
        "(`cifar100_coarse`) in published.yaml: nothing to compare.\n"
    )

    # CIFAR-10's own numbers for a CIFAR-10 folder; one written before meta.json named its
    # dataset is CIFAR-10's.
    meta = json.loads((data / "meta.json").read_text())
    del meta["dataset"]
    (data / "meta.json").write_text(json.dumps(meta))
    assert main(argv) == 0
    report = pd.read_csv(report_csv)
    assert set(report["variant"]) >= {"plain8", "resnet8", "claim: order"}
    assert "Dataset: CIFAR-10 (`cifar10`)." in report_md.read_text()

    # Without prepared data the report has no dataset: a one-line error, nothing replaced.
    before = report_md.read_text()
    (data / "train_labels.npy").unlink()
    assert main(argv) == 1
    assert report_md.read_text() == before

"""The typed records stages hand each other: round trips, and errors that name file and field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from resnetlab.core.config import Variant
from resnetlab.core.errors import ResnetlabError
from resnetlab.core.params import parse_params
from resnetlab.core.records import (
    HISTORY_COLUMNS,
    EvalReport,
    History,
    HistoryRow,
    ModelCard,
    ModelRecord,
    RecordError,
    RunFile,
    TrainSummary,
)
from resnetlab.evaluate.classifier import build_network, load_classifier
from resnetlab.models import build_model

SUMMARY = TrainSummary(epochs=3, best_val_accuracy=0.5, train_time_s=1.5, images_per_s=900.0)
CARD = ModelCard(
    variant="tiny",
    model="resnet_v1",
    model_args={"depth": 8},
    depth=8,
    parameters=75290,
    best_epoch=2,
)


def variant(**train) -> Variant:
    params = {
        "train": {"milestones": [0.5], **train},
        "variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}, "lr": 0.05}},
    }
    return parse_params(params).variant("tiny")


def test_json_records_round_trip(tmp_path: Path) -> None:
    SUMMARY.write(tmp_path / "train.json")
    assert TrainSummary.read(tmp_path / "train.json", "tiny") == SUMMARY
    CARD.write(tmp_path / "model.json")
    assert ModelCard.read(tmp_path / "model.json") == CARD
    report = EvalReport(
        accuracy=0.9,
        val_accuracy=0.91,
        loss=0.3,
        macro_f1=0.75,
        weighted_f1=0.76,
        single_view_accuracy=0.89,
        views=2,
    )
    report.write(tmp_path / "seed0.json")
    assert EvalReport.read(tmp_path / "seed0.json") == report


def test_a_record_written_under_its_run_name_still_reads(tmp_path: Path) -> None:
    """Upgrading needs no re-run: a train.json of before (its fields under the run's name) reads
    as before, and one written for another run is still refused."""
    path = tmp_path / "metrics" / "tiny" / "seed0" / "train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tiny-0": SUMMARY.to_dict()}))
    assert TrainSummary.read(path, "tiny-0") == SUMMARY
    assert TrainSummary.read(path) == SUMMARY
    with pytest.raises(RecordError) as err:
        TrainSummary.read(path, "big-0")
    assert str(err.value) == (
        f"{path}: written for run 'tiny-0', not 'big-0'; re-run `dvc repro train@big-0` to "
        "write it again"
    )


def test_dvc_metrics_files_are_one_table(tmp_path: Path) -> None:
    # seed<k>.json is a run's DVC metrics file: numbers only, flat, the same fields for every
    # run, so `dvc metrics show` has a row per run and no empty cells; names and details live
    # in model.json and per_class.csv, training's numbers in train.json (a plain output).
    fields = set()
    for k, name in enumerate(("plain20", "resnet20")):
        report = EvalReport(0.9 + k / 100, 0.91, 0.3, 0.75, 0.76, 0.89, 2)
        path = tmp_path / name / "seed0.json"
        report.write(path)
        data = json.loads(path.read_text())
        assert all(type(v) in (int, float) for v in data.values()), data
        assert list(data)[:2] == ["accuracy", "val_accuracy"]  # the first columns DVC shows
        fields.add(frozenset(data))
    assert len(fields) == 1 and len(next(iter(fields))) == 7
    RunFile("abc", "exp").write(tmp_path / "run.json")
    assert RunFile.read(tmp_path / "run.json") == RunFile("abc", "exp")


def test_history_round_trip(tmp_path: Path) -> None:
    rows = tuple(
        HistoryRow(e, 2.0 / e, 0.3 * e, 2.1 / e, 0.25 * e, 0.1, 4.0, 1000.0) for e in (1, 2)
    )
    History(rows).write(tmp_path / "history.csv")
    back = History.read(tmp_path / "history.csv")
    assert [r.epoch for r in back.rows] == [1, 2]
    assert back.rows[1].val_accuracy == pytest.approx(0.5)
    assert list(back.frame().columns) == list(HISTORY_COLUMNS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "train.json: not found; re-run `dvc repro train@tiny`"),
        ("{not json", "train.json: not readable JSON"),
        ("[1, 2]", "train.json: expected a JSON object, got list"),
        ('{"tiny": [1]}', "train.json: missing field 'epochs'"),
        ('{"epochs": 3}', "train.json: missing field 'best_val_accuracy'"),
        ('{"tiny": {"epochs": 3}}', "train.json: missing field 'best_val_accuracy'"),
    ],
)
def test_bad_json_record_names_file_and_field(tmp_path: Path, content, message) -> None:
    path = tmp_path / "train.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("`", ".")):
        TrainSummary.read(path, "tiny")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[" * 200_000 + "]" * 200_000, "not readable JSON (nested too deeply)"),
        ('{"a": "' + "x" * (16 << 20) + '"}', f"larger than {16 << 20} bytes, not a record"),
    ],
    ids=["nested-200k-deep", "oversized"],
)
def test_deep_or_oversized_model_json_is_refused_in_one_line(tmp_path: Path, content, problem):
    """Was: `RecursionError` (a 200k-deep model.json), and any size read whole."""
    path = tmp_path / "models" / "tiny" / "seed0" / "model.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RecordError) as err:
        ModelCard.read(path, "tiny")
    assert str(err.value) == (
        f"{path}: {problem}; re-run `dvc repro train@tiny-0` to write it again"
    )


def test_a_missing_record_names_the_stage_dvc_has(tmp_path: Path) -> None:
    """The stage to re-run is train@<variant>-<seed>, the seed from the run folder, whether the
    reader passes the variant's name (evaluate) or its run key (compare). Was: `train@plain20`,
    a stage that does not exist."""
    run = tmp_path / "models" / "plain20" / "seed3"
    expected = (
        f"{run / 'mlflow_run.json'}: not found; re-run `dvc repro train@plain20-3` to write it "
        "again"
    )
    for name in ("plain20", "plain20-3"):
        with pytest.raises(RecordError) as err:
            RunFile.read(run / "mlflow_run.json", name)
        assert str(err.value) == expected
    with pytest.raises(RecordError) as err:
        ModelRecord.read(run / "model.pt", "plain20")
    assert (
        str(err.value)
        == f"{run / 'model.pt'}: no trained model (run `dvc repro train@plain20-3` first)"
    )


def test_wrongly_typed_field_is_named(tmp_path: Path) -> None:
    data = SUMMARY.to_dict() | {"epochs": "three"}
    (tmp_path / "train.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"field 'epochs' is 'three'"):
        TrainSummary.read(tmp_path / "train.json")


def test_history_missing_column(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text("epoch,train_loss\n1,2.0\n")
    with pytest.raises(RecordError, match=r"history.csv: missing column\(s\) train_accuracy"):
        History.read(tmp_path / "history.csv", "tiny")


def model_record(v: Variant) -> ModelRecord:
    torch.manual_seed(0)
    net = build_model("resnet_v1", depth=8, num_classes=10)
    return ModelRecord(net.state_dict(), v, ("a",) * 10, (0.5,) * 3, (0.25,) * 3, 75290, 2, 0.5)


def test_model_record_gives_back_the_typed_variant(tmp_path: Path) -> None:
    v = variant(epochs=7)
    model_record(v).write(tmp_path / "model.pt")
    back = ModelRecord.read(tmp_path / "model.pt")
    assert isinstance(back.variant, Variant)
    assert back.variant == v  # frozen dataclasses: every resolved setting survives
    assert back.variant.train.lr == 0.05 and back.variant.train.milestones == (0.5,)
    assert back.variant.fingerprint() == v.fingerprint()
    classifier, record = load_classifier(tmp_path / "model.pt")
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert record.parameters == 75290


def test_model_file_without_config_or_with_wrong_tensors(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    record = model_record(variant())
    record.write(path)
    blob = torch.load(path, weights_only=True)
    del blob["config"]
    torch.save(blob, path)
    with pytest.raises(RecordError, match=r"model.pt: missing field 'config'"):
        ModelRecord.read(path)

    state = dict(record.state_dict)
    state.pop("fc.weight")
    state["extra"] = torch.zeros(1)
    broken = dataclasses.replace(record, state_dict=state)
    with pytest.raises(ResnetlabError) as err:
        build_network(broken, path)
    text = str(err.value)
    assert text.startswith(f"{path}: weights do not fit model 'resnet_v1'")
    assert "missing 1 tensor(s) (e.g. fc.weight)" in text and "1 unexpected tensor(s)" in text
    assert "\n" not in text

    path.write_bytes(b"garbage")
    with pytest.raises(RecordError, match=r"model.pt: not a readable model file"):
        ModelRecord.read(path)

"""What stages hand each other: small typed records, each with a validated `write` and `read`.

| record          | file                          | written by | read by                 |
|-----------------|-------------------------------|------------|-------------------------|
| `ModelRecord`   | `models/<v>/seed<k>/model.pt`         | train      | evaluate, predict |
| `TrainSummary`  | `metrics/<v>/seed<k>/train.json`      | train      | compare           |
| `ModelCard`     | `metrics/<v>/seed<k>/model.json`      | train      | compare           |
| `History`       | `metrics/<v>/seed<k>/history.csv`     | train      | compare           |
| `EvalReport`    | `metrics/<v>/seed<k>.json`            | evaluate   | compare           |
| (its mean)      | `reports/mean.json`                   | compare    | DVC               |
| `RunFile`       | `models/<v>/seed<k>/mlflow_run.json`  | train      | evaluate, compare |

One folder per variant and training seed `k` (`run_folder`); the DVC stages of that run are
`train@<v>-<k>` and `evaluate@<v>-<k>` (`run_key`).

A reader gets the dataclass back or a `RecordError` naming the file and the missing or malformed
field, with the stage to re-run; no reader lists the keys again. Accuracies are fractions in
[0, 1], times are seconds.

`metrics/<v>/seed<k>.json` is each run's DVC metrics file (`run_metrics_file`: beside the run
folder, for a short column name), and compare's `reports/mean.json` (the mean over the runs,
the field names the same) the pipeline's: with the same fields in every file, `dvc metrics
show` is one table, a row per run; `dvc exp show` names a column `<file>:<field>`, and sorts
experiments by `reports/mean.json:accuracy` whatever variants ran. They hold only the numbers
worth a column there; names, model arguments and details live in `model.json` and
`per_class.csv`, training's numbers in `train.json`, which DVC tracks as plain outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from resnetlab.core.atomic import write_atomic
from resnetlab.core.config import Variant
from resnetlab.core.errors import ConfigError, ResnetlabError, first_line
from resnetlab.core.jsonio import UnreadableJson, read_json
from resnetlab.core.layout import SEED_FOLDER
from resnetlab.core.params import variant_from_dict
from resnetlab.data.datasets import LEGACY_IMAGE_SIZE, is_image_side

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "EvalReport",
    "History",
    "HistoryRow",
    "ModelCard",
    "ModelRecord",
    "RecordError",
    "RunFile",
    "TrainSummary",
    "run_key",
    "write_json",
]

R = TypeVar("R")
J = TypeVar("J", bound="_JsonRecord")


class RecordError(ResnetlabError):
    """A stage's output file is missing or malformed; the message names file and field."""


def run_key(variant: str, seed: int) -> str:
    """What DVC's matrix appends to a stage name for this run: `train@<variant>-<seed>`."""
    return f"{variant}-{seed}"


def _fail(path: Path, problem: str, stage: str) -> RecordError:
    return RecordError(f"{path}: {problem}; re-run `dvc repro {stage}` to write it again")


def _check_value(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint) or hint
    return isinstance(value, origin)  # dict, list


def _from_mapping(cls: type[R], data: Any, path: Path, stage: str) -> R:
    """`cls(**data)` after checking every field is present and of its declared type."""
    if not isinstance(data, Mapping):
        raise _fail(path, f"expected a JSON object, got {type(data).__name__}", stage)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            raise _fail(path, f"missing field {f.name!r}", stage)
        value = data[f.name]
        if not _check_value(value, hints[f.name]):
            raise _fail(path, f"field {f.name!r} is {value!r}, not a {hints[f.name]}", stage)
        values[f.name] = float(value) if hints[f.name] is float else value
    return cls(**values)


def _stage(template: str, variant: str | None, path: Path | None = None) -> str:
    """The stage that writes a record, `train@<variant>` filled in as far as known: with the
    run key `<variant>-<seed>` (`run_key`, the name DVC gives the stage) when `variant` is one
    already, or when the file lies in a run folder `<...>/seed<k>/` or is a run's metrics file
    `<...>/seed<k>.json`, which give the seed; else with the variant's name alone. Nothing
    known, the stage group (`train`: every train@ stage), never a placeholder the user would
    have to fill in."""
    folder = Path(path).parent if path is not None else None
    match = SEED_FOLDER.fullmatch(folder.name) if folder is not None else None
    if path is not None and not match and Path(path).suffix == ".json":
        # A run's metrics file, <...>/<variant>/seed<k>.json (`run_metrics_file`).
        folder = Path(path).with_suffix("")
        match = SEED_FOLDER.fullmatch(folder.name)
    if not variant and match:
        variant = folder.parent.name  # type: ignore[union-attr]  # <...>/<variant>/seed<k>/
    if not variant:
        return template.partition("@")[0]
    if match:
        seed = int(match[1])
        # A variant's name is its folder's (models/<variant>/seed<k>); a run key ends in -<k>.
        if folder.parent.name == variant or not variant.endswith(f"-{seed}"):
            variant = run_key(variant, seed)
    return template.replace("<variant>", variant)


MAX_RECORD_BYTES = 16 << 20  # a record of ours is a few KB; history.csv is not JSON


def _read_json(path: Path, stage: str) -> Any:
    try:
        return read_json(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        raise _fail(path, "not found", stage) from None
    except UnreadableJson as exc:
        problem = str(exc).replace(" bytes", " bytes, not a record", 1)
        raise _fail(path, problem, stage) from None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """`data` as indented JSON, written atomically (its folder made first)."""
    blob = (json.dumps(data, indent=2) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), lambda fh: fh.write(blob))


def read_csv(path: Path, stage: str, **kwargs: Any) -> pd.DataFrame:
    """`pandas.read_csv(path, **kwargs)`, failing as a `RecordError` that names the file and
    the stage (`dvc repro <stage>`) that writes it."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise _fail(path, "not found", stage) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise _fail(path, f"not a readable CSV ({e})", stage) from None


class _JsonRecord:
    """`write`/`read` of a frozen dataclass as one JSON object, every field checked on read."""

    STAGE: ClassVar[str]  # the stage that writes it, `<variant>` filled in when known

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls: type[J], path: Path, variant: str | None = None) -> J:
        stage = _stage(cls.STAGE, variant, path)
        return _from_mapping(cls, _read_json(path, stage), Path(path), stage)


class _RunRecord(_JsonRecord):
    """A record of one run whose fields are those of every other run: flat, so `dvc metrics
    show` reads them as one table, a row per run and a column per field.

    Files written before flat records held the fields under the run's name
    (`{"resnet56-0": {...}}`); a reader still takes them, so upgrading needs no re-run."""

    @classmethod
    def read(cls: type[J], path: Path, variant: str | None = None) -> J:
        stage = _stage(cls.STAGE, variant, path)
        data = _read_json(path, stage)
        path = Path(path)
        if isinstance(data, Mapping) and len(data) == 1:
            ((key, inner),) = data.items()
            if isinstance(inner, Mapping) and key not in cls.fields():
                if variant is not None and key != variant:
                    raise _fail(path, f"written for run {key!r}, not {variant!r}", stage)
                data = inner
        return _from_mapping(cls, data, path, stage)


@dataclass(frozen=True)
class TrainSummary(_RunRecord):
    """`train.json`: a run's training in numbers (an output; compare and MLflow read it)."""

    epochs: int  # epochs completed
    best_val_accuracy: float
    train_time_s: float  # optimiser steps only; validation and I/O excluded
    images_per_s: float  # training throughput over the whole run, all processes together

    STAGE: ClassVar[str] = "train@<variant>"


@dataclass(frozen=True)
class ModelCard(_JsonRecord):
    """`model.json`: what a variant trained (not a DVC metric: names and details)."""

    variant: str
    model: str
    model_args: dict[str, Any]
    depth: int
    parameters: int
    best_epoch: int  # the epoch whose weights were kept (best validation accuracy)

    STAGE: ClassVar[str] = "train@<variant>"


@dataclass(frozen=True)
class EvalReport(_RunRecord):
    """`seed<k>.json`: the kept model in headline numbers, the run's DVC metrics file. Per-class
    precision/recall/F1 and the averaged precision and recall go to per_class.csv."""

    accuracy: float  # on the test set, of the configured evaluation (test-time augmentation
    #                  when views > 1)
    # On the validation split, from training (the model file's): the number the kept epoch was
    # selected on, beside the test numbers so that experiments are compared on it.
    val_accuracy: float
    loss: float  # mean cross-entropy
    macro_f1: float
    weighted_f1: float
    single_view_accuracy: float  # each image once, as it is: the papers' protocol
    views: int  # test-time views averaged per image (evaluate.tta); 1 = none

    STAGE: ClassVar[str] = "evaluate@<variant>"


@dataclass(frozen=True)
class HistoryRow:
    """One epoch of training, measured on the main process."""

    epoch: int
    train_loss: float  # mean cross-entropy on the augmented training images
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # learning rate of the epoch's last step
    epoch_time_s: float
    images_per_s: float  # all processes together


HISTORY_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HistoryRow))


@dataclass(frozen=True)
class History:
    """`history.csv`: one `HistoryRow` per epoch, in order."""

    rows: tuple[HistoryRow, ...]

    STAGE: ClassVar[str] = "train@<variant>"

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows], columns=HISTORY_COLUMNS)

    def write(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        blob = self.frame().to_csv(index=False, float_format="%.6g").encode()
        write_atomic(Path(path), lambda fh: fh.write(blob))

    @classmethod
    def read(cls, path: Path, variant: str | None = None) -> History:
        path, stage = Path(path), _stage(cls.STAGE, variant, path)
        frame = read_csv(path, stage)
        lacking = [c for c in HISTORY_COLUMNS if c not in frame.columns]
        if lacking:
            raise _fail(path, f"missing column(s) {', '.join(lacking)}", stage)
        if frame[list(HISTORY_COLUMNS)].isna().any().any():
            raise _fail(path, "empty cells", stage)
        try:
            rows = tuple(
                HistoryRow(
                    epoch=int(r["epoch"]),
                    **{c: float(r[c]) for c in HISTORY_COLUMNS if c != "epoch"},
                )
                for r in frame.to_dict("records")
            )
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"a non-numeric cell ({exc})", stage) from None
        return cls(rows)


@dataclass(frozen=True)
class RunFile(_JsonRecord):
    """`mlflow_run.json`: the MLflow run a variant's training recorded into."""

    run_id: str
    experiment: str

    STAGE: ClassVar[str] = "train@<variant>"


MODEL_FILE_FORMAT = 1  # bump when ModelRecord's layout changes


@dataclass(frozen=True)
class ModelRecord:
    """`model.pt`: the kept weights, the variant that made them, and the data statistics.

    Plain tensors, numbers, strings, lists and dicts only, so it loads with
    `torch.load(..., weights_only=True)`: reading a model file never runs pickled code.
    """

    state_dict: dict[str, torch.Tensor]
    variant: Variant
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale: the train split's
    std: tuple[float, ...]
    parameters: int
    best_epoch: int
    best_val_accuracy: float
    # The side of the square images it takes: the prepared data's. Files written before it was
    # recorded are CIFAR-10 models.
    image_size: int = LEGACY_IMAGE_SIZE

    STAGE: ClassVar[str] = "train@<variant>"

    def write(self, path: Path) -> None:
        import torch

        blob = {
            "format": MODEL_FILE_FORMAT,
            "state_dict": self.state_dict,
            "config": self.variant.to_dict(),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "parameters": self.parameters,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "image_size": self.image_size,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), lambda fh: torch.save(blob, fh))

    @classmethod
    def read(cls, path: Path, variant: str | None = None) -> ModelRecord:
        import torch

        path, stage = Path(path), _stage(cls.STAGE, variant, path)
        if not path.exists():
            raise RecordError(f"{path}: no trained model (run `dvc repro {stage}` first)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = first_line(exc, 200)
            raise _fail(path, f"not a readable model file ({first})", stage) from None
        if not isinstance(blob, Mapping):
            raise _fail(path, "not a model record", stage)
        for key in ("state_dict", "config", "classes", "mean", "std"):
            if key not in blob:
                raise _fail(path, f"missing field {key!r}", stage)
        if blob.get("format") != MODEL_FILE_FORMAT:
            raise _fail(path, f"format {blob.get('format')!r}, expected {MODEL_FILE_FORMAT}", stage)
        state = blob["state_dict"]
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise _fail(path, "field 'state_dict' is not a mapping of tensors", stage)
        try:
            variant = variant_from_dict(blob["config"])
        except ConfigError as exc:
            raise _fail(path, f"field 'config' is invalid ({exc})", stage) from None
        stats = _triple(blob["mean"]) and _triple(blob["std"])
        if not stats:
            raise _fail(path, "fields 'mean'/'std' are not three finite numbers", stage)
        size = blob.get("image_size", LEGACY_IMAGE_SIZE)
        if not is_image_side(size):
            raise _fail(path, f"field 'image_size' is {size!r}, not a side in pixels", stage)
        return cls(
            state_dict=dict(state),
            variant=variant,
            classes=tuple(str(c) for c in blob["classes"]),
            mean=tuple(float(x) for x in blob["mean"]),
            std=tuple(float(x) for x in blob["std"]),
            parameters=int(blob.get("parameters", 0)),
            best_epoch=int(blob.get("best_epoch", 0)),
            best_val_accuracy=float(blob.get("best_val_accuracy", math.nan)),
            image_size=size,
        )


def _triple(values: Any) -> bool:
    return (
        isinstance(values, Sequence)
        and len(values) == 3
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    )

"""What the web app shows, as plain data: the project's folders (the layout of `dvc.yaml`), its
trained and evaluated variants, the best one, the test set's predictions and mistakes, what one
variant gets right and another wrong, and the classification of uploaded files.

No Streamlit here. Readers of optional files return an empty result when the file is missing
(an empty state the page explains); a file that is there but malformed raises ResnetlabError
with the file and the `dvc repro` command that writes it again. torch and pandas are imported
inside the functions that need them: the first page must render before they are loaded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.layout import (
    MODEL_FILE,
    PREDICTIONS_CSV,
    RUN_FILE,
    SEED_FOLDER,
    Project,
    first_seed_folder,
    lowest_seed_file,
)
from resnetlab.core.records import read_csv

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from resnetlab.data.prepared import Prepared
    from resnetlab.evaluate.images import Prediction

# predictions.csv as the evaluate stage writes it: one row per test image.
PREDICTION_COLUMNS = ("index", "actual", "predicted", "confidence")
EXAMPLE_VARIANT = "resnet20"  # named in hints when params.yaml declares none


# --- variants -------------------------------------------------------------------------------


def _variants_with(folder: Path, filename: str) -> list[str]:
    """Variants with `filename` in one of their run folders (`<folder>/<v>/seed<k>/`)."""
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if first_seed_folder(d, filename) is not None)


def trained_variants(project: Project) -> list[str]:
    """Variants with a `models/<v>/seed<k>/model.pt`, by name."""
    return _variants_with(project.models, MODEL_FILE)


def evaluated_variants(project: Project) -> list[str]:
    """Variants with a `metrics/<v>/seed<k>/predictions.csv`, by name."""
    return _variants_with(project.metrics, PREDICTIONS_CSV)


def declared_variants(project: Project) -> list[str]:
    """The variants `params.yaml` declares, in its order; none if it is missing or unreadable
    (only used to name a variant in hints)."""
    try:
        return [str(v) for v in _raw_params(project)["variants"]]
    except (KeyError, TypeError):
        return []


def _raw_params(project: Project) -> Any:
    """`params.yaml` as parsed YAML, unvalidated; None if missing or unreadable (a FIFO or an
    endless file is not read: the page would hang)."""
    import yaml

    from resnetlab.core.jsonio import UnreadableFile, read_bounded
    from resnetlab.core.params import MAX_PARAMS_BYTES

    try:
        return yaml.safe_load(read_bounded(project.root / "params.yaml", MAX_PARAMS_BYTES))
    except (OSError, UnreadableFile, yaml.YAMLError):
        return None


def _run_of(path: Path, variant: str) -> str:
    """`<variant>-<seed>` (the DVC stage suffix) for a file in a `seed<k>` run folder."""
    match = SEED_FOLDER.fullmatch(path.parent.name)
    return f"{variant}-{match.group(1) if match else 0}"


def repro_command(project: Project, stage: str) -> str:
    """`dvc repro <stage>@<variant>-<seed>` for the first declared variant and seed, to quote in
    empty states."""
    variant = next(iter(declared_variants(project)), EXAMPLE_VARIANT)
    try:
        seed = int(_raw_params(project)["seeds"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        seed = 0  # the default of `seeds`
    return f"dvc repro {stage}@{variant}-{seed}"


def leaderboard_order(project: Project) -> list[str]:
    """Variants in leaderboard order (best test accuracy first); none without a leaderboard.

    Read with the csv module, not pandas: the first page needs it and must render fast.
    """
    try:
        with project.leaderboard.open(newline="") as fh:
            return [row["variant"] for row in csv.DictReader(fh) if row.get("variant")]
    except (OSError, csv.Error, UnicodeDecodeError, KeyError):
        return []


def best_variant(candidates: Sequence[str], ranking: Sequence[str]) -> str | None:
    """The first of `ranking` among `candidates`, else the first candidate; None if none."""
    present = set(candidates)
    return next((v for v in ranking if v in present), next(iter(candidates), None))


def logged_model_uris(project: Project) -> dict[str, str]:
    """Variant -> `runs:/<run id>/<variant>`, the model its training logged to MLflow, for every
    variant whose run file is readable. Reads the run files only; MLflow is not contacted."""
    from resnetlab.core.records import RecordError, RunFile

    uris = {}
    for variant in _variants_with(project.models, RUN_FILE):
        try:
            run_id = RunFile.read(
                lowest_seed_file(project.models / variant, RUN_FILE), variant
            ).run_id
        except RecordError:
            continue
        uris[variant] = f"runs:/{run_id}/{variant}"
    return uris


# --- models and uploads ---------------------------------------------------------------------


def load_variant_model(project: Project, variant: str) -> tuple[torch.nn.Module, list[str], int]:
    """A trained variant's classifier ([0, 1] images in, logits out), its class names and the
    side of the images it takes."""
    from resnetlab.evaluate.classifier import load_classifier

    model, record = load_classifier(project.model_file(variant))
    return model, list(record.classes), record.image_size


def load_uri_model(uri: str) -> tuple[torch.nn.Module, list[str], int]:
    """The model logged to MLflow at `uri`, its class names and input side, as `resnetlab
    predict` loads it (the safe loader: it never unpickles or imports a model's own code)."""
    from resnetlab.tracking import logged_model

    network, classes, size = logged_model.load_uri(uri)
    return network, list(classes or ()), size


@dataclass(frozen=True)
class Upload:
    """One uploaded file and what became of it: a prediction, or why it is not an image."""

    name: str
    data: bytes
    prediction: Prediction | None = None
    error: str | None = None


def classify_uploads(
    model: torch.nn.Module,
    classes: Sequence[str],
    image_size: int,
    files: Sequence[tuple[str, bytes]],
    top_k: int = 5,
) -> list[Upload]:
    """Classify uploaded `(name, bytes)` files in one batch, in upload order, each resized to
    the model's `image_size`; a file that is not an image gets its error instead, and the others
    are still classified.

    Preprocessing is `resnetlab predict`'s own (`images.load_image`, `images.predict`).
    """
    from resnetlab.evaluate.images import load_image, predict

    arrays: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for i, (name, data) in enumerate(files):
        try:
            arrays[i] = load_image(io.BytesIO(data), name=name, size=image_size)
        except ResnetlabError as exc:
            errors[i] = str(exc)
    order = list(arrays)
    names = [files[i][0] for i in order]
    predictions = predict(model, classes, names, [arrays[i] for i in order], top_k) if order else []
    by_index = dict(zip(order, predictions, strict=True))
    return [
        Upload(name, data, prediction=by_index.get(i), error=errors.get(i))
        for i, (name, data) in enumerate(files)
    ]


def thumbnail(data: bytes, size: int = 160) -> np.ndarray | None:
    """An upright RGB preview of an uploaded image at most `size` pixels wide and high (the
    upload itself may be a huge photo); None if it cannot be decoded."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            preview = ImageOps.exif_transpose(img).convert("RGB")
            preview.thumbnail((size, size))
            return np.asarray(preview)
    except Exception:  # anything PIL cannot decode: the page shows no preview, not an error
        return None


# --- predictions and mistakes ---------------------------------------------------------------


def read_predictions(project: Project, variant: str) -> pd.DataFrame | None:
    """`metrics/<v>/predictions.csv` (columns PREDICTION_COLUMNS); None if the file is missing.

    Raises ResnetlabError if it is unreadable or lacks a column (e.g. written by an older
    evaluate stage, before it recorded the image index and confidence).
    """
    path = project.predictions_file(variant)
    stage = evaluate_stage(project, variant)
    again = f"re-run `dvc repro {stage}` to write it again"
    if not path.exists():
        return None
    frame = read_csv(path, stage)
    lacking = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if lacking:
        raise ResnetlabError(f"{path}: no column(s) {', '.join(lacking)}; {again}")
    frame = frame[list(PREDICTION_COLUMNS)]
    if frame.isna().any().any() or frame["index"].dtype.kind not in "iu":
        raise ResnetlabError(f"{path}: empty or non-integer cells; {again}")
    if frame["index"].duplicated().any():
        raise ResnetlabError(f"{path}: an image index appears twice; {again}")
    return frame


def evaluate_stage(project: Project, variant: str) -> str:
    """The DVC stage that writes the predictions the app shows for `variant` (its lowest
    seed's), e.g. `evaluate@resnet20-0`."""
    return f"evaluate@{_run_of(project.predictions_file(variant), variant)}"


def check_matches_test_split(predictions: pd.DataFrame, prepared: Prepared, stage: str) -> None:
    """Raise ResnetlabError unless every prediction names an image of the prepared test split
    with the label it records (a model evaluated on other data than what is prepared now);
    `stage` wrote the predictions."""
    labels = prepared.labels["test"]
    classes = list(prepared.classes)
    index = predictions["index"].to_numpy()
    if len(index) and (index.min() < 0 or index.max() >= len(labels)):
        stale = True
    else:
        actual = [classes[y] for y in labels[index]]
        stale = actual != predictions["actual"].tolist()
    if stale:
        raise ResnetlabError(
            f"the predictions {stage} wrote do not match the prepared test images; "
            f"re-run `dvc repro {stage}`"
        )


def _wrong(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions[predictions["actual"] != predictions["predicted"]]


def mistakes(
    predictions: pd.DataFrame, actual: str | None = None, predicted: str | None = None
) -> pd.DataFrame:
    """The wrongly classified rows, optionally only of true class `actual` and/or predicted
    class `predicted`; the most confident mistakes first (ties by image index)."""
    wrong = _wrong(predictions)
    if actual is not None:
        wrong = wrong[wrong["actual"] == actual]
    if predicted is not None:
        wrong = wrong[wrong["predicted"] == predicted]
    return wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable")


def confusion_counts(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Counts of (true class, predicted class): rows true, columns predicted, in `classes`'
    order, every class present. Computed from the same rows the mistakes grid shows."""
    import pandas as pd

    counts = pd.crosstab(predictions["actual"], predictions["predicted"])
    counts = counts.reindex(index=list(classes), columns=list(classes), fill_value=0)
    counts.index.name, counts.columns.name = "true", "predicted"
    return counts.astype(int)


def right_wrong(right: pd.DataFrame, wrong: pd.DataFrame) -> pd.DataFrame:
    """Test images that `right`'s variant classifies correctly and `wrong`'s does not: index,
    actual, and the wrong variant's `predicted` and `confidence`, most confident first."""
    both = right.merge(wrong, on="index", suffixes=("_right", "_wrong"), validate="one_to_one")
    hit = both["actual_right"] == both["predicted_right"]
    miss = both["actual_wrong"] != both["predicted_wrong"]
    rows = both[hit & miss].rename(
        columns={
            "actual_right": "actual",
            "predicted_wrong": "predicted",
            "confidence_wrong": "confidence",
        }
    )
    rows = rows[list(PREDICTION_COLUMNS)]
    return rows.sort_values(["confidence", "index"], ascending=[False, True], kind="stable")


def read_test_split(project: Project) -> Prepared | None:
    """The prepared test images and labels; None if there is no prepared data. A bad file
    (labels that name no class, a meta.json that is not one of ours, ...) raises load_prepared's
    one-line ResnetlabError, which the pages show as they show other unreadable files."""
    from resnetlab.data.prepared import load_prepared

    if not (project.prepared / "meta.json").is_file():
        return None
    try:
        return load_prepared(project.prepared, splits=("test",))
    except (OSError, ValueError, KeyError) as exc:  # a missing or truncated array
        raise ResnetlabError(
            f"{project.prepared}: the test arrays cannot be read ({exc}); "
            "re-run `dvc repro prepare`"
        ) from None


def caption(row: dict, who: str = "predicted") -> str:
    """A grid image's caption: true class, predicted class and its probability."""
    return f"true {row['actual']} · {who} {row['predicted']} {100 * row['confidence']:.0f}%"


# --- reports --------------------------------------------------------------------------------


def read_leaderboard(project: Project) -> pd.DataFrame | None:
    """`reports/leaderboard.csv` as the compare stage wrote it; None if missing."""
    if not project.leaderboard.exists():
        return None
    return read_csv(project.leaderboard, "compare")


def comparison_figures(project: Project) -> list[Path]:
    """The figures across variants under `reports/figures/` (test accuracy, degradation,
    gradient profile, whatever compare drew), by name."""
    if not project.figures.is_dir():
        return []
    return sorted(p for p in project.figures.glob("*.png") if p.is_file())


def variant_figures(project: Project, variant: str) -> list[Path]:
    """One variant's figures (curves, confusion matrices) under `reports/figures/<v>/`."""
    folder = project.figures / variant
    return sorted(p for p in folder.glob("*.png") if p.is_file()) if folder.is_dir() else []

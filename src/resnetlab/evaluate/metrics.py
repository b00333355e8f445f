"""Classification metrics as pure functions: arrays in, plain numbers out (no files, no MLflow).

Every number in a report is a Python ``float``/``int`` so the dict can go straight to JSON.
Labels are class indices ``0..num_classes-1``; a class that never occurs (in the targets or the
predictions) still gets its row, with 0 where a ratio is undefined rather than NaN or a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["classification_report", "confusion_matrix", "per_class_frame"]

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")


def _check_labels(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no labels: metrics of an empty set are undefined")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
        bad = a[(a < 0) | (a >= num_classes)]
        if bad.size:
            raise ValueError(f"{name}: label {int(bad[0])} is outside 0..{num_classes - 1}")
    return t.astype(np.int64), p.astype(np.int64)


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, error, macro/weighted precision-recall-F1 and a per-class breakdown.

    ``classes[i]`` names label ``i``. Macro averages weigh every class equally (absent classes
    included, with their zeros); weighted averages weigh each class by its support in ``y_true``.
    """
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    t, p = _check_labels(y_true, y_pred, len(names))
    # From the confusion matrix, not scikit-learn: the same numbers (a test compares them),
    # without the 1.5-3 s its import adds to every evaluate stage.
    cm = _counts(t, p, len(names))  # the labels are checked once, above
    hits = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    # A ratio with an empty denominator (a class never predicted, or never present) scores 0.
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * hits, predicted + support)  # = 2PR / (P + R) wherever that is defined
    weights = support / support.sum()
    macro = (precision.mean(), recall.mean(), f1.mean())
    weighted = (precision @ weights, recall @ weights, f1 @ weights)
    accuracy = float(hits.sum() / len(t))
    return {
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts as int64 ``(num_classes, num_classes)``: row = actual class, column = predicted."""
    return _counts(*_check_labels(y_true, y_pred, num_classes), num_classes)


def _counts(t: np.ndarray, p: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion matrix of labels already through `_check_labels`."""
    # Each (actual, predicted) pair maps to one flat cell index; bincount tallies all at once.
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The report's ``per_class`` part as a table: class, precision, recall, f1, support; then,
    as scikit-learn's text report does, a ``macro avg`` and a ``weighted avg`` row (support:
    every image)."""
    import pandas as pd

    rows = [
        {"class": name, **{k: values[k] for k in PER_CLASS_COLUMNS[1:]}}
        for name, values in report["per_class"].items()
    ]
    total = sum(int(values["support"]) for values in report["per_class"].values())
    for average in ("macro", "weighted"):
        rows.append(
            {
                "class": f"{average} avg",
                **{k: report[f"{average}_{k}"] for k in ("precision", "recall", "f1")},
                "support": total,
            }
        )
    frame = pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))
    return frame.astype({"support": "int64"})

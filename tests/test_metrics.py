"""Metrics against values worked out by hand (as exact fractions) on tiny label vectors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from resnetlab.evaluate.metrics import (
    classification_report,
    confusion_matrix,
    per_class_frame,
)
from resnetlab.report.stats import mean_std

# Case 1: three classes, two samples each.
# class 0: predicted at 0 (right) and 5 (wrong)       -> P 1/2, R 1/2, F1 1/2
# class 1: predicted at 1 (wrong), 2 and 3 (right)    -> P 2/3, R 1,   F1 4/5
# class 2: predicted at 4 (right); sample 5 missed    -> P 1,   R 1/2, F1 2/3
TRUE_1 = np.array([0, 0, 1, 1, 2, 2])
PRED_1 = np.array([0, 1, 1, 1, 2, 0])


def test_report_hand_case_balanced() -> None:
    r = classification_report(TRUE_1, PRED_1, ["a", "b", "c"])
    expected = {
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (2 / 3, 1.0, 4 / 5, 2),
        "c": (1.0, 1 / 2, 2 / 3, 2),
    }
    for name, (p, rec, f1, n) in expected.items():
        row = r["per_class"][name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(rec)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == n
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["error"] == pytest.approx(2 / 6)
    assert r["macro_precision"] == pytest.approx(13 / 18)  # (1/2 + 2/3 + 1) / 3
    assert r["macro_recall"] == pytest.approx(2 / 3)  # (1/2 + 1 + 1/2) / 3
    assert r["macro_f1"] == pytest.approx(59 / 90)  # (1/2 + 4/5 + 2/3) / 3
    # Equal supports: weighted averages equal the macro ones.
    assert r["weighted_precision"] == pytest.approx(13 / 18)
    assert r["weighted_f1"] == pytest.approx(59 / 90)


# Case 2: unequal supports (3, 2, 1, 0); class c is never predicted, class d never occurs.
# class a: predicted at 0, 1 (right), 4, 5 (wrong); actual at 0, 1, 2 -> P 2/4, R 2/3, F1 4/7
# class b: predicted at 2 (wrong), 3 (right); actual at 3, 4          -> P 1/2, R 1/2, F1 1/2
TRUE_2 = np.array([0, 0, 0, 1, 1, 2])
PRED_2 = np.array([0, 0, 1, 1, 0, 0])


def test_report_unpredicted_and_absent_classes_score_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an UndefinedMetricWarning would fail the test
        r = classification_report(TRUE_2, PRED_2, ["a", "b", "c", "d"])
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["per_class"]["a"]["f1"] == pytest.approx(4 / 7)
    assert r["accuracy"] == pytest.approx(3 / 6)
    # Macro: all four classes count, zeros included.
    assert r["macro_precision"] == pytest.approx((1 / 2 + 1 / 2) / 4)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 1 / 2) / 4)
    assert r["macro_f1"] == pytest.approx((4 / 7 + 1 / 2) / 4)
    # Weighted by support 3, 2, 1, 0 (total 6).
    assert r["weighted_precision"] == pytest.approx((3 * 1 / 2 + 2 * 1 / 2) / 6)
    assert r["weighted_recall"] == pytest.approx(r["accuracy"])
    assert r["weighted_f1"] == pytest.approx((3 * 4 / 7 + 2 * 1 / 2) / 6)


def test_report_is_json_safe() -> None:
    r = classification_report(TRUE_2, PRED_2, ["a", "b", "c", "d"])
    assert json.loads(json.dumps(r)) == r
    assert type(r["accuracy"]) is float
    assert type(r["per_class"]["a"]["support"]) is int


def test_report_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="6 labels but y_pred has 5"):
        classification_report(TRUE_1, PRED_1[:5], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        classification_report(TRUE_1, PRED_1, ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        classification_report(np.array([], int), np.array([], int), ["a"])


def test_confusion_matrix_by_hand_with_absent_class() -> None:
    cm = confusion_matrix(TRUE_2, PRED_2, 4)
    expected = [
        [2, 1, 0, 0],  # actual a: predicted a, a, b
        [1, 1, 0, 0],  # actual b: predicted b, a
        [1, 0, 0, 0],  # actual c: predicted a
        [0, 0, 0, 0],  # actual d: never occurs, still a row
    ]
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(TRUE_2)
    # Rows are actual classes: the row sums are the supports, the trace the correct count.
    np.testing.assert_array_equal(cm.sum(axis=1), [3, 2, 1, 0])
    assert np.trace(cm) == 3


def test_confusion_matrix_agrees_with_report() -> None:
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    cm = confusion_matrix(t, p, 10)
    r = classification_report(t, p, [str(i) for i in range(10)])
    assert np.trace(cm) / cm.sum() == pytest.approx(r["accuracy"])
    for i in range(10):
        assert cm[i, i] / cm[:, i].sum() == pytest.approx(r["per_class"][str(i)]["precision"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_scikit_learn(seed: int) -> None:
    """The numpy report gives scikit-learn's numbers, absent and unpredicted classes included."""
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    t = rng.integers(0, 6, size=200)  # classes 6 and 7 never occur in y_true
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 8, size=200))
    p[p == 3] = 4  # class 3 is never predicted
    report = classification_report(t, p, [f"c{i}" for i in range(8)])
    labels = list(range(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
        for average in ("macro", "weighted"):
            want = precision_recall_fscore_support(
                t, p, labels=labels, average=average, zero_division=0
            )
            for i, key in enumerate(("precision", "recall", "f1")):
                assert report[f"{average}_{key}"] == pytest.approx(want[i], abs=1e-12)
    for i in labels:
        got = report["per_class"][f"c{i}"]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(
            [per[0][i], per[1][i], per[2][i]], abs=1e-12
        )
        assert got["support"] == per[3][i]


def test_per_class_frame() -> None:
    frame = per_class_frame(classification_report(TRUE_1, PRED_1, ["a", "b", "c"]))
    assert list(frame.columns) == ["class", "precision", "recall", "f1", "support"]
    assert frame["class"].tolist() == ["a", "b", "c", "macro avg", "weighted avg"]
    assert frame["recall"].tolist()[:3] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert frame["support"].tolist() == [2, 2, 2, 6, 6]
    assert frame["recall"].tolist()[3] == pytest.approx(2 / 3)  # mean of the three


def test_mean_std() -> None:
    """The one mean ± std of every report (leaderboard, curves, published vs measured)."""
    mean, std, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    # Squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3.
    assert std == pytest.approx(math.sqrt(5 / 3))
    # One seed has no spread: NaN, which the tables print as the mean alone.
    mean, std, n = mean_std([0.91])
    assert (mean, n) == (0.91, 1) and math.isnan(std)
    # Exact sums: the order of the seeds does not change the last digit.
    values = [0.9151, 0.9123, 0.9177, 0.9101, 0.9189]
    assert mean_std(values) == mean_std(reversed(values))
    with pytest.raises(ValueError):
        mean_std([])

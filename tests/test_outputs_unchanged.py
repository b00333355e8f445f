"""Refactoring changes no output: the tiny project the web-app tests build for real (prepare,
train, evaluate, compare on the tiny archive; see app_project.py) must produce the outputs recorded
in golden/tiny_outputs.json, which was written by the code as it stood before the modules moved
into packages.

Why this matters to users: moving or renaming a module changes every stage's code deps in
dvc.yaml, so DVC counts those stages as changed. This test is the evidence that such a change is
output-neutral, i.e. that `dvc commit` of the unchanged stages is honest (docs: architecture.md).

What is compared: every byte-stable output exactly (the prepared arrays, model.json, the
per-class and confusion tables, the predictions); numbers that are computed by floating point
(weights, losses, accuracies) to a relative 1e-5, so that a CPU with other vector units stays
within tolerance; timings and MLflow run ids not at all. One change to the files since was meant:
the run's metrics file moved from `metrics/<v>/seed<k>/eval.json` to `metrics/<v>/seed<k>.json`
and, like train.json, holds its fields flat (no longer under the run's name); it gained the
model's `val_accuracy` (train.json's `best_val_accuracy`), and compare writes
`reports/mean.json`. The prepared data's `meta.json` gained the dataset's key (`"dataset":
"cifar10"`) when `data.dataset` arrived; with the key unset, the arrays and every number are
those of before. The golden file was edited to match, every number in it unchanged.
Regenerate (only after a change meant to alter outputs) with
`RESNETLAB_UPDATE_GOLDEN=1 pytest tests/test_outputs_unchanged.py`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny_outputs.json"
# Wall-clock measurements: they differ between any two runs.
TIMING = {"train_time_s", "images_per_s", "epoch_time_s"}
EXACT = ("data/prepared/*.npy", "metrics/*/seed0/confusion.csv", "metrics/*/seed0/model.json")
TABLES = (
    "metrics/*/seed0/history.csv",
    "metrics/*/seed0/per_class.csv",
    "metrics/*/seed0/predictions.csv",
    "reports/leaderboard.csv",
    "reports/runs.csv",
)
JSONS = (
    "data/prepared/meta.json",
    "metrics/*/seed0.json",
    "metrics/*/seed0/train.json",
    "reports/mean.json",
)


def _number(text: str) -> Any:
    try:
        return float(text) if text else None
    except ValueError:
        return text


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _weights(path: Path) -> dict[str, list[float]]:
    """Per tensor of a model file's weights: shape, sum and sum of absolute values (float64)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {
        name: [*t.shape, t.double().sum().item(), t.double().abs().sum().item()]
        for name, t in sorted(state.items())
    }


def snapshot(root: Path) -> dict[str, Any]:
    """What the tiny project's outputs hold, minus timings and run ids."""
    out: dict[str, Any] = {}
    for pattern in EXACT:
        for path in sorted(root.glob(pattern)):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for pattern in TABLES:
        for path in sorted(root.glob(pattern)):
            with path.open(newline="") as fh:
                rows = [
                    {k: _number(v) for k, v in row.items() if k not in TIMING}
                    for row in csv.DictReader(fh)
                ]
            out[str(path.relative_to(root))] = rows
    for pattern in JSONS:
        for path in sorted(root.glob(pattern)):
            out[str(path.relative_to(root))] = _without_timing(json.loads(path.read_text()))
    for path in sorted(root.glob("models/*/seed0/model.pt")):
        out[str(path.relative_to(root))] = _weights(path)
    return out


def _close(expected: Any, actual: Any, where: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"]
        return [p for k in expected for p in _close(expected[k], actual[k], f"{where}/{k}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        pairs = enumerate(zip(expected, actual, strict=True))
        return [p for i, (e, a) in pairs for p in _close(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float):
        if math.isnan(expected) and math.isnan(actual):
            return []
        if math.isclose(expected, actual, rel_tol=1e-5, abs_tol=1e-7):
            return []
    elif expected == actual:
        return []
    return [f"{where}: {actual!r}, expected {expected!r}"]


def test_refactoring_leaves_every_output_unchanged(app_project: Path):
    got = snapshot(app_project)
    if os.environ.get("RESNETLAB_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    expected = json.loads(GOLDEN.read_text())
    assert len(expected) >= 25, "the golden file covers the prepared data, models and reports"
    problems = _close(expected, got, "")
    assert not problems, "\n".join(problems[:20])


def test_the_comparison_notices_a_changed_output():
    """The check above can fail: one weight's sum moved by 1e-4 relative is reported."""
    expected = json.loads(GOLDEN.read_text())
    name = next(k for k in expected if k.endswith("model.pt"))
    tensor = next(iter(expected[name]))
    changed = json.loads(json.dumps(expected))
    changed[name][tensor][-1] *= 1 + 1e-4
    assert _close(expected, changed, "") and not _close(expected, expected, "")

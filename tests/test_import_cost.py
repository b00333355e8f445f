"""Stages import heavy libraries only where they are used: every `resnetlab <stage>` is a fresh
process, and torch (1.5 s), torchvision (+2 s), MLflow (1.5 s), scikit-learn (1 s), pandas and
matplotlib would otherwise be paid by stages that never touch them.

Each check imports in a fresh interpreter, since `sys.modules` only grows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "torchvision", "mlflow", "sklearn", "pandas", "matplotlib")


def loaded_after(code: str) -> dict[str, list[str]]:
    """Run `code` in a fresh interpreter; which HEAVY packages were loaded at each `mark(name)`."""
    prelude = (
        "import json, sys\n"
        "marks = {}\n"
        f"def mark(name): marks[name] = [m for m in {HEAVY!r} if m in sys.modules]\n"
    )
    script = prelude + code + "\nprint(json.dumps(marks))\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.splitlines()[-1])


def test_data_stages_import_no_torch_and_no_mlflow():
    marks = loaded_after(
        "import resnetlab.cli, resnetlab.pipeline.download, resnetlab.pipeline.prepare\n"
        "mark('imported')\n"
    )
    assert marks["imported"] == []


def test_model_stages_import_torch_alone_and_torchvision_only_for_its_models():
    marks = loaded_after(
        "import resnetlab.cli, resnetlab.pipeline.train, resnetlab.pipeline.evaluate\n"
        "mark('imported')\n"
        "from resnetlab.models import build_model\n"
        "build_model('resnet_v1', depth=8, num_classes=10)\n"
        "mark('cifar model')\n"
        "build_model('resnet18', width=0.125, num_classes=10)\n"
        "mark('torchvision model')\n"
    )
    # MLflow, pandas and the rest load when a stage records or writes, not on import.
    assert marks["imported"] == ["torch"]
    assert marks["cifar model"] == ["torch"]
    assert marks["torchvision model"] == ["torch", "torchvision"]


def test_metrics_need_no_scikit_learn_or_pandas():
    marks = loaded_after(
        "from resnetlab.evaluate.metrics import classification_report, confusion_matrix\n"
        "classification_report([0, 1, 1], [0, 1, 0], ['a', 'b'])\n"
        "confusion_matrix([0, 1, 1], [0, 1, 0], 2)\n"
        "mark('report')\n"
    )
    assert marks["report"] == []

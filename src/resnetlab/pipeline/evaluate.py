"""`resnetlab evaluate --variant NAME`: the variant's kept model, once, on the test set.

Reads only `evaluate` from the params (test-time augmentation); the model file carries the rest
of its resolved config (device, precision, batch size).
Writes the run's metrics file (`--report`, DVC metrics: the headline numbers; by default
`<out>.json`, beside the folder, as dvc.yaml lays it out), per_class.csv (per class and averaged
precision/recall/F1), confusion.csv (counts) and predictions.csv (one
row per test image, for DVC's confusion plot), and logs the `test_*` metrics and files into the
variant's MLflow training run, which it checks first: an unreachable store or a missing run
stops the stage in seconds, before any work. Figures are drawn by the compare stage.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.core.atomic import cleanup_on_sigterm, write_atomic
from resnetlab.core.layout import (
    CONFUSION_CSV,
    MODEL_FILE,
    PER_CLASS_CSV,
    PREDICTIONS_CSV,
    RUN_FILE,
    run_metrics_file,
)
from resnetlab.core.params import load_params
from resnetlab.core.records import EvalReport, ModelRecord, RunFile, run_key
from resnetlab.data.prepared import load_prepared
from resnetlab.evaluate import metrics
from resnetlab.evaluate.scoring import Scorer, loss_and_accuracy
from resnetlab.evaluate.tta import TTA_VIEWS
from resnetlab.tracking import results, store

log = logging.getLogger(__name__)

# Logged to the MLflow run as test_<name>: the metrics file's test numbers and a few more.
MLFLOW_HEADLINE = (
    "accuracy",
    "error",
    "loss",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "single_view_accuracy",
    "views",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--variant", required=True, help="variant name")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--model", type=Path, required=True, help="the train stage's output folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the evaluation outputs")
    p.add_argument(
        "--report",
        type=Path,
        help="the run's metrics file (default: <out>.json, beside the folder)",
    )


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    params.variant(args.variant)  # a known variant, or the error lists them
    tta = params.evaluate.tta_for(args.variant)
    evaluate_variant(args.variant, args.data, args.model, args.out, tta, args.report)


def evaluate_variant(
    variant: str,
    data_dir: Path,
    model_dir: Path,
    out_dir: Path,
    tta: str = "none",
    report_file: Path | None = None,
) -> EvalReport:
    """Score the model in `model_dir` on the test split, averaging the logits of the views of
    test-time augmentation `tta` (`evaluate.tta.TTA_VIEWS`); the headline numbers go to
    `report_file` (default: `run_metrics_file(out_dir)`), the tables into `out_dir`."""
    views = TTA_VIEWS[tta]
    record = ModelRecord.read(Path(model_dir) / MODEL_FILE, variant)
    run_file = RunFile.read(Path(model_dir) / RUN_FILE, variant)
    # Before the work, in seconds: the store answers and holds the run to record into.
    train_stage = f"train@{run_key(record.variant.name, record.variant.train.seed)}"
    store.check_run(run_file.run_id, "from the train stage", train_stage)
    scorer = Scorer.of(record, Path(model_dir) / MODEL_FILE)
    device = scorer.device
    data = load_prepared(data_dir, splits=("test",))
    if list(data.classes) != list(record.classes):
        log.warning("%s: class names differ between the model and %s", variant, data_dir)

    images = torch.from_numpy(data.images["test"]).to(device)
    labels = torch.from_numpy(data.labels["test"]).to(device)
    start = time.perf_counter()
    per_view = scorer.views(images, views)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    forward_s = time.perf_counter() - start
    logits = per_view.mean(0)
    _, single_view_accuracy = loss_and_accuracy(per_view[0], labels)
    loss, _ = loss_and_accuracy(logits, labels)
    predicted = logits.argmax(1)
    # Probability of the predicted class per image: the web app ranks mistakes by it.
    confidence = torch.softmax(logits.float(), dim=1).gather(1, predicted[:, None])[:, 0]
    y_true, y_pred = data.labels["test"], predicted.cpu().numpy()

    classes = list(data.classes)
    full = {
        **metrics.classification_report(y_true, y_pred, classes),
        "loss": loss,
        "single_view_accuracy": single_view_accuracy,
        "views": len(views),
        "val_accuracy": record.best_val_accuracy,
    }
    report = EvalReport(**{name: full[name] for name in EvalReport.fields()})
    report_file = Path(report_file) if report_file else run_metrics_file(Path(out_dir))
    files = _write(
        Path(out_dir), report_file, report, full, classes, y_true, y_pred, confidence.cpu().numpy()
    )
    headline = {f"test_{k}": full[k] for k in MLFLOW_HEADLINE}
    results.log_evaluation(run_file.run_id, headline, files)
    # The forward passes' time is what bench/bench_stage_overhead.py subtracts from the wall.
    tta_words = (
        f", test-time augmentation {tta} ({len(views)} views; single view "
        f"{100 * single_view_accuracy:.2f}%)"
        if len(views) > 1
        else ""
    )
    log.info(
        "%s: test accuracy %.2f%%%s (loss %.4f, macro F1 %.4f) on %d images; forward passes "
        "%.2f s (%.0f images/s)",
        variant,
        100 * report.accuracy,
        tta_words,
        loss,
        report.macro_f1,
        len(y_true),
        forward_s,
        len(views) * len(y_true) / max(forward_s, 1e-9),
    )
    return report


def _write(
    out_dir: Path,
    report_file: Path,
    report: EvalReport,
    full: dict,
    classes,
    y_true,
    y_pred,
    confidence,
) -> list[Path]:
    """Every output atomically (a stopped run leaves each file old or complete, never a 0-byte
    or cut one, and removes its temporary on SIGTERM as on Ctrl-C), the metrics file last: a
    new one means the CSVs are new too."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [report_file, *(out_dir / n for n in (PER_CLASS_CSV, CONFUSION_CSV, PREDICTIONS_CSV))]
    cm = metrics.confusion_matrix(y_true, y_pred, len(classes))
    names = np.asarray(classes)
    frames = [
        (paths[1], metrics.per_class_frame(full), {"index": False, "float_format": "%.6g"}),
        (paths[2], pd.DataFrame(cm, index=pd.Index(classes, name="actual"), columns=classes), {}),
        # One row per test image: `index` is its row in the prepared test arrays (so the image
        # can be shown), `actual`/`predicted` feed DVC's confusion plot, `confidence` is the
        # softmax probability of the predicted class.
        (
            paths[3],
            pd.DataFrame(
                {
                    "index": np.arange(len(y_true)),
                    "actual": names[y_true],
                    "predicted": names[y_pred],
                    "confidence": confidence,
                }
            ),
            {"index": False, "float_format": "%.6g"},
        ),
    ]
    with cleanup_on_sigterm():
        for path, frame, options in frames:
            write_atomic(path, lambda fh, f=frame, o=options: f.to_csv(fh, **o))
        report.write(paths[0])
    return paths

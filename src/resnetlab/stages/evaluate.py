"""`resnetlab evaluate --variant NAME`: the variant's best model, once, on the test set.

Reads no params: the model file carries its resolved config (device, precision, batch size).
Writes eval.json (DVC metrics), per_class.csv, confusion.csv (counts), predictions.csv (one row per
test image, for DVC's confusion plot) and two heatmaps, and logs the `test_*` metrics and files
into the variant's MLflow training run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab import engine, metrics, tracking
from resnetlab.augment import Normalizer
from resnetlab.data import load_prepared
from resnetlab.inference import load_model_file

log = logging.getLogger(__name__)

# eval.json keys logged to MLflow as test_<key>.
LOGGED = ("accuracy", "error", "loss", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, help="variant name (for messages)")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--model", type=Path, required=True, help="the train stage's output folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the evaluation outputs")


def run(args: argparse.Namespace) -> None:
    evaluate_variant(args.variant, args.data, args.model, args.out)


def evaluate_variant(variant: str, data_dir: Path, model_dir: Path, out_dir: Path) -> dict:
    net, record = load_model_file(Path(model_dir) / "model.pt")
    run_info = tracking.read_run_file(Path(model_dir) / "mlflow_run.json")
    train_cfg = record["config"]["train"]
    device = engine.resolve_device(train_cfg["device"])
    amp_dtype = engine.autocast_dtype(train_cfg["precision"], device)
    data = load_prepared(data_dir, splits=("test",))
    if list(data.classes) != list(record["classes"]):
        log.warning("%s: class names differ between the model and %s", variant, data_dir)

    net.to(device)
    if train_cfg["channels_last"]:
        net.to(memory_format=torch.channels_last)
    # The model's own statistics (the train split it was trained on) normalise the test images.
    normalize = Normalizer(record["mean"], record["std"], device, train_cfg["channels_last"])
    images = torch.from_numpy(data.images["test"]).to(device)
    labels = torch.from_numpy(data.labels["test"]).to(device)
    logits = engine.predict_logits(net, images, normalize, train_cfg["eval_batch_size"], amp_dtype)
    loss = F.cross_entropy(logits, labels).item()
    y_true = data.labels["test"]
    y_pred = logits.argmax(1).cpu().numpy()

    classes = list(data.classes)
    report = {**metrics.classification_report(y_true, y_pred, classes), "loss": loss}
    cm = metrics.confusion_matrix(y_true, y_pred, len(classes))
    files = _write(out_dir, report, cm, classes, y_true, y_pred, variant)
    tracking.log_evaluation(run_info["run_id"], {f"test_{k}": report[k] for k in LOGGED}, files)
    log.info(
        "%s: test accuracy %.2f%% (loss %.4f, macro F1 %.4f) on %d images",
        variant,
        100 * report["accuracy"],
        loss,
        report["macro_f1"],
        len(y_true),
    )
    return report


def _write(out_dir, report, cm, classes, y_true, y_pred, variant) -> list[Path]:
    import pandas as pd

    from resnetlab import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "eval": out_dir / "eval.json",
        "per_class": out_dir / "per_class.csv",
        "confusion": out_dir / "confusion.csv",
        "predictions": out_dir / "predictions.csv",
        "png": out_dir / "confusion.png",
        "png_norm": out_dir / "confusion_normalized.png",
    }
    paths["eval"].write_text(json.dumps(report, indent=2) + "\n")
    metrics.per_class_frame(report).to_csv(paths["per_class"], index=False, float_format="%.6g")
    pd.DataFrame(cm, index=pd.Index(classes, name="actual"), columns=classes).to_csv(
        paths["confusion"]
    )
    names = np.asarray(classes)
    pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]}).to_csv(
        paths["predictions"], index=False
    )
    plots.plot_confusion(cm, classes, paths["png"], title=f"{variant}: test confusion (counts)")
    plots.plot_confusion(
        cm, classes, paths["png_norm"], normalize=True, title=f"{variant}: row-normalised"
    )
    return list(paths.values())

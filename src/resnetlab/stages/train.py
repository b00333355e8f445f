"""`resnetlab train --variant NAME`: train one variant, resumably, recording it in MLflow.

Params read: `train` (the defaults), `variants.<NAME>` (model and overrides), `mlflow.experiment`.
Works unchanged under `torchrun --nproc_per_node=N` (DistributedDataParallel).

Outputs (paths from the command line, i.e. from dvc.yaml):
  <out>/model.pt         best-on-validation weights + resolved config (weights_only-loadable)
  <out>/checkpoint.pt    last complete epoch; DVC keeps it (persist) so an interrupted run resumes
  <out>/mlflow_run.json  the MLflow run id, for the evaluate and compare stages
  <metrics>/train.json   summary metrics;  <metrics>/history.csv  one row per epoch
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from resnetlab import tracking
from resnetlab.config import Variant, flatten, load_params
from resnetlab.inference import Classifier, build_network
from resnetlab.progress import ConsoleProgress
from resnetlab.records import RunFile, TrainSummary
from resnetlab.training import Trainer

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--variant", required=True, help="a key of `variants` in the params file")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--out", type=Path, required=True, help="folder for model and checkpoint")
    p.add_argument("--metrics", type=Path, required=True, help="folder for train.json/history")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    variant = params.variant(args.variant)
    train_variant(variant, params.mlflow.experiment, args.data, args.out, args.metrics)


def train_variant(
    variant: Variant, experiment: str, data_dir: Path, out_dir: Path, metrics_dir: Path
) -> TrainSummary:
    """Train `variant` to completion (resuming a matching unfinished checkpoint), write its
    outputs and record it in MLflow; returns the summary written to train.json."""
    out_dir, metrics_dir = Path(out_dir), Path(metrics_dir)
    trainer = Trainer(variant, data_dir, out_dir / "checkpoint.pt")
    console = ConsoleProgress(variant.name, variant.train.batch_size)
    if not trainer.is_main:  # other DDP processes compute; only the main one records
        trainer.fit(sync_every=console.sync_every)
        trainer.finish()
        return trainer.summary()

    tracking.ensure_reachable(experiment)  # fail now, not after hours of training
    run_params = {**flatten(variant.to_dict()), "parameters": trainer.parameters}
    tags = {
        **tracking.common_tags("train"),
        "variant": variant.name,
        "device": str(trainer.device),
        "torch_version": torch.__version__,
        "num_processes": str(trainer.dist.world),
    }
    resume_id = trainer.progress.run_id
    with tracking.TrainingRun(experiment, variant.name, run_params, tags, resume_id) as run:
        trainer.progress.run_id = run.run_id
        trainer.fit([console, run], sync_every=console.sync_every)

        record, history, summary = trainer.model_record(), trainer.history(), trainer.summary()
        record.write(out_dir / "model.pt")
        history.write(metrics_dir / "history.csv")
        summary.write(metrics_dir / "train.json")
        classifier = Classifier(build_network(record), record.mean, record.std)
        example = trainer.data.images["val"][:4].transpose(0, 3, 1, 2).astype("float32") / 255
        run.log_model(classifier, example, record.classes)
        run.log_table(history.frame(), "history.json")
        run.log_files([metrics_dir / "train.json", metrics_dir / "history.csv"])
        best = {"best_val_accuracy": record.best_val_accuracy, "best_epoch": record.best_epoch}
        run.log_metrics(best, step=summary.epochs)
        RunFile(run.run_id, experiment).write(out_dir / "mlflow_run.json")
    trainer.finish()
    log.info(
        "%s: best val accuracy %.2f%% at epoch %d; model -> %s",
        variant.name,
        100 * record.best_val_accuracy,
        record.best_epoch,
        out_dir / "model.pt",
    )
    return summary

"""`resnetlab relog --variant NAME [--seed K]`: record a trained variant in MLflow from its files.

For when the tracking store stopped answering during training: the train stage then fails at
the end, but leaves `<models-dir>/<NAME>/seed<K>/model.pt`,
`<metrics-dir>/<NAME>/seed<K>/history.csv`, `train.json` and `model.json` (and its checkpoint,
still resumable). relog continues the run (its id from the checkpoint, else from
mlflow_run.json; a new run, with the variant's parameters, if neither names one the store
holds), logs the epochs the run lacks, the best epoch, the history table, train.json,
model.json, history.csv and the model, ends the run FINISHED and writes mlflow_run.json.
Params read: `mlflow.experiment`. Trains nothing and needs no data.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.layout import (
    CHECKPOINT_FILE,
    HISTORY_CSV,
    METRICS,
    MODEL_FILE,
    MODEL_JSON,
    MODELS,
    RUN_FILE,
    TRAIN_JSON,
    run_folder,
)
from resnetlab.core.params import flatten, load_params
from resnetlab.core.records import (
    History,
    ModelCard,
    ModelRecord,
    RecordError,
    RunFile,
    TrainSummary,
    run_key,
)
from resnetlab.data.datasets import CHANNELS
from resnetlab.evaluate.classifier import classifier_of
from resnetlab.tracking import lineage, run_context, store, training_run
from resnetlab.train import checkpoint

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--variant", required=True, help="the trained variant to record")
    p.add_argument("--seed", type=int, default=0, help="its training seed (default: 0)")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=MODELS,
        metavar="DIR",
        help="the train stage's output folder, as in dvc.yaml (default: models)",
    )
    p.add_argument(
        "--metrics-dir",
        type=Path,
        default=METRICS,
        metavar="DIR",
        help="the train stage's metrics folder, as in dvc.yaml (default: metrics)",
    )


def run(args: argparse.Namespace) -> None:
    relog(
        args.variant,
        args.params,
        run_folder(args.models_dir, args.variant, args.seed),
        run_folder(args.metrics_dir, args.variant, args.seed),
    )


def relog(variant: str, params: Path, out_dir: Path, metrics_dir: Path) -> str:
    """Record the variant's training from its files; returns the MLflow run id."""
    record = ModelRecord.read(out_dir / MODEL_FILE, variant)
    history = History.read(metrics_dir / HISTORY_CSV, variant)
    seed = record.variant.train.seed
    summary = TrainSummary.read(metrics_dir / TRAIN_JSON, run_key(variant, seed))
    ModelCard.read(metrics_dir / MODEL_JSON, variant)  # logged with the others: check it now
    experiment = load_params(params).mlflow.experiment
    store.ensure_reachable(experiment)

    run_params = {
        **flatten(record.variant.to_dict()),
        "parameters": record.parameters,
        "seed": seed,
    }
    tags = {
        **lineage.common_tags("train"),
        "variant": variant,
        "seed": str(seed),
        "torch_version": torch.__version__,
        "relogged": "true",
    }
    run_id = _earlier_run(out_dir, variant)
    try:
        context = run_context.RunContext(lineage.lineage(params))
        with training_run.TrainingRun(
            experiment, variant, run_params, tags, run_id, context, seed=seed
        ) as run:
            if run.created:
                run.log_metrics({"parameters": float(record.parameters)}, step=0)
            run.log_history(history.rows)
            # The data is not needed: the model's input example is any batch of valid images.
            example = np.random.default_rng(0).random(
                (4, CHANNELS, record.image_size, record.image_size), dtype=np.float32
            )
            classifier = classifier_of(record)
            run.log_outputs(classifier, record, history, summary, metrics_dir, example)
            run.finish()
    except training_run.TrackingBehind as exc:
        raise ResnetlabError(f"{variant}: not recorded: {exc}; try again later") from None
    RunFile(run.run_id, experiment).write(out_dir / RUN_FILE)
    log.info("%s: recorded %d epochs into MLflow run %s", variant, len(history.rows), run.run_id)
    return run.run_id


def _earlier_run(out_dir: Path, variant: str) -> str | None:
    """The run the train stage recorded into: the checkpoint's (an unrecorded training leaves
    it resumable), else the run file's; None if neither says."""
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.exists():
        try:
            run_id = (checkpoint.load(ckpt).get("progress") or {}).get("run_id")
        except ResnetlabError as exc:
            log.warning("%s: %s", variant, exc)
        else:
            if isinstance(run_id, str) and run_id:
                return run_id
    try:
        return RunFile.read(out_dir / RUN_FILE, variant).run_id
    except RecordError:
        return None

"""`resnetlab train --variant NAME --seed K`: train one variant with training seed K, resumably,
recording it in MLflow.

Params read: `train` (the defaults), `variants.<NAME>` (model and overrides), `mlflow.experiment`,
and `data` (recorded with the run: which data it trained on). The seed comes from the command
line (dvc.yaml cuts it from the stage name train@<NAME>-<K>), not from `seeds`: adding a seed to
the list leaves the runs of the others untouched.
Works unchanged under `torchrun --nproc_per_node=N` (DistributedDataParallel).

Outputs (paths from the command line, i.e. from dvc.yaml):
  <out>/model.pt         best-on-validation weights + resolved config (weights_only-loadable)
  <out>/checkpoint.pt    last complete epoch, so an interrupted run resumes (not a DVC output:
                         DVC leaves it alone)
  <out>/mlflow_run.json  the MLflow run id, for the evaluate and compare stages
  <metrics>/train.json   headline numbers (DVC metrics);  <metrics>/model.json  what was trained
  <metrics>/history.csv  one row per epoch

A tracking server that stops answering never costs an epoch: what it does not take is retried at
each epoch and at the end. If it still does not take it then, the stage fails after writing
model.pt, train.json, model.json and history.csv (not mlflow_run.json), leaving the checkpoint
resumable; `resnetlab relog --variant NAME` records them later, or a re-run records without
training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.core.config import DataConfig, Variant
from resnetlab.core.errors import ResnetlabError
from resnetlab.core.layout import (
    CHECKPOINT_FILE,
    HISTORY_CSV,
    MODEL_FILE,
    MODEL_JSON,
    RUN_FILE,
    TRAIN_JSON,
)
from resnetlab.core.lock import folder_lock
from resnetlab.core.params import load_params
from resnetlab.core.records import RunFile, TrainSummary
from resnetlab.evaluate.classifier import classifier_of
from resnetlab.tracking import run_context, store, training_run
from resnetlab.train.console import ConsoleProgress
from resnetlab.train.trainer import Trainer

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--variant", required=True, help="a key of `variants` in the params file")
    p.add_argument(
        "--seed", type=int, default=0, help="training seed: weights, batch order, augmentation"
    )
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--out", type=Path, required=True, help="folder for model and checkpoint")
    p.add_argument("--metrics", type=Path, required=True, help="folder for train.json/history")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    variant = params.variant(args.variant).with_seed(args.seed)
    train_variant(
        variant,
        params.mlflow.experiment,
        args.data,
        args.out,
        args.metrics,
        data_config=params.data,
        params_file=args.params,
        recipe=params.recipe_sources[variant.name].describe(variant.name, params.train.max_epochs),
    )


def train_variant(
    variant: Variant,
    experiment: str,
    data_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    data_config: DataConfig | None = None,
    params_file: Path | None = None,
    recipe: str = "params.yaml `train`",
) -> TrainSummary:
    """Train `variant` to completion (resuming a matching unfinished checkpoint), write its
    outputs and record it in MLflow; returns the summary written to train.json. `data_config`
    (the `data` params), `params_file` (keys the run's parent, see `lineage.Lineage`) and
    `recipe` (where the recipe's values come from, `RecipeSource.describe`) only describe the
    run."""
    out_dir, metrics_dir = Path(out_dir), Path(metrics_dir)
    trainer = Trainer(variant, data_dir, out_dir / CHECKPOINT_FILE)
    console = ConsoleProgress(variant.name, variant.train.batch_size)
    if not trainer.is_main:  # other DDP processes compute; only the main one records
        trainer.fit(sync_every=console.sync_every)
        trainer.finish()
        return trainer.summary()
    # One train into one folder at a time: a second one stops here, once the params and data are
    # checked (before that nothing is written) and before any training or recording.
    with folder_lock(out_dir, "resnetlab train"):
        store.ensure_reachable(experiment)  # fail now, not after hours of training
        about = run_context.describe_training(
            trainer, variant, data_dir, data_config, params_file, recipe
        )
        log.info("%s: %s on %s", variant.name, about.resolved, about.where)
        return _train_and_record(trainer, console, variant, experiment, out_dir, metrics_dir, about)


def _train_and_record(
    trainer: Trainer,
    console: ConsoleProgress,
    variant: Variant,
    experiment: str,
    out_dir: Path,
    metrics_dir: Path,
    about: run_context.TrainingDescription,
) -> TrainSummary:
    """`train_variant`'s work in the main process, with the output folder locked."""
    seed = variant.train.seed
    resume_id = trainer.progress.run_id
    behind: training_run.TrackingBehind | None = None
    with training_run.TrainingRun(
        experiment, variant.name, about.params, about.tags, resume_id, about.context, seed=seed
    ) as run:
        trainer.progress.run_id = run.run_id
        trainer.fit([console, run], sync_every=console.sync_every)

        # Written before the run is completed: if the store fails now, the stage fails, but
        # the results stay on disk for `resnetlab relog`.
        record, history, summary = trainer.model_record(), trainer.history(), trainer.summary()
        record.write(out_dir / MODEL_FILE)
        history.write(metrics_dir / HISTORY_CSV)
        summary.write(metrics_dir / TRAIN_JSON)
        trainer.card().write(metrics_dir / MODEL_JSON)
        example = trainer.data.images["val"][:4].transpose(0, 3, 1, 2).astype("float32") / 255
        classifier = classifier_of(record)
        run.log_outputs(classifier, record, history, summary, metrics_dir, example)
        try:
            run.finish()
            RunFile(run.run_id, experiment).write(out_dir / RUN_FILE)
        except training_run.TrackingBehind as exc:
            behind = exc
    # An unrecorded run leaves the checkpoint resumable: re-running the stage trains nothing.
    trainer.finish(completed=behind is None)
    if behind is not None:
        raise ResnetlabError(behind.stage_message(variant.name, out_dir, metrics_dir, seed))
    best = f"{100 * record.best_val_accuracy:.2f}% at epoch {record.best_epoch}"
    log.info("%s: best val accuracy %s; model -> %s", variant.name, best, out_dir / MODEL_FILE)
    return summary

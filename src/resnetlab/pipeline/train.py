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
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.core.config import DataConfig, Params, Variant
from resnetlab.core.errors import ResnetlabError
from resnetlab.core.params import flatten, load_params
from resnetlab.core.records import RunFile, TrainSummary, run_name
from resnetlab.evaluate.classifier import classifier_of
from resnetlab.tracking import lineage, store, training_run
from resnetlab.train.console import ConsoleProgress
from resnetlab.train.trainer import Trainer

if TYPE_CHECKING:
    from resnetlab.data.prepared import Prepared

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
        overrides=_overrides(params, variant),
    )


def train_variant(
    variant: Variant,
    experiment: str,
    data_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    data_config: DataConfig | None = None,
    params_file: Path | None = None,
    overrides: tuple[str, ...] = (),
) -> TrainSummary:
    """Train `variant` to completion (resuming a matching unfinished checkpoint), write its
    outputs and record it in MLflow; returns the summary written to train.json. `data_config`
    (the `data` params), `params_file` (keys the run's parent, see `lineage.Lineage`) and
    `overrides` (the `train` keys the variant sets) only describe the run."""
    out_dir, metrics_dir = Path(out_dir), Path(metrics_dir)
    trainer = Trainer(variant, data_dir, out_dir / "checkpoint.pt")
    console = ConsoleProgress(variant.name, variant.train.batch_size)
    if not trainer.is_main:  # other DDP processes compute; only the main one records
        trainer.fit(sync_every=console.sync_every)
        trainer.finish()
        return trainer.summary()

    store.ensure_reachable(experiment)  # fail now, not after hours of training
    seed = variant.train.seed
    run_params = {**flatten(variant.to_dict()), "parameters": trainer.parameters, "seed": seed}
    # precision/compile "auto" as resolved on this machine
    run_params.update({f"resolved.{k}": v for k, v in trainer.resolved.items()})
    # The device tag says which GPU, or which CPU cores, a leased run got (core.device).
    where = trainer.device if trainer.dist.enabled else trainer.placement.describe()
    log.info(
        "%s: %s on %s",
        variant.name,
        ", ".join(f"{k} {v}" for k, v in trainer.resolved.items()),
        where,
    )
    if data_config is not None:
        run_params.update(flatten({"data": dataclasses.asdict(data_config)}))
    tags = lineage.training_tags(variant.name, where, trainer.dist.world, seed)
    dataset = _dataset(trainer.data, data_dir, data_config)
    data_words = f"{dataset.splits['train']} train / {dataset.splits['val']} val images"
    if data_config is not None and data_config.subset:
        data_words += f" (subset {data_config.subset}, seed {data_config.seed})"
    context = training_run.RunContext(
        lineage.lineage(params_file),
        training_run.describe_run(variant.model.to_dict(), overrides, variant.name, data_words),
        dataset,
    )
    resume_id = trainer.progress.run_id
    behind: training_run.TrackingBehind | None = None
    with training_run.TrainingRun(
        experiment, variant.name, run_params, tags, resume_id, context, seed=seed
    ) as run:
        trainer.progress.run_id = run.run_id
        trainer.fit([console, run], sync_every=console.sync_every)

        # Written before the run is completed: if the store fails now, the stage fails, but
        # the results stay on disk for `resnetlab relog`.
        record, history, summary = trainer.model_record(), trainer.history(), trainer.summary()
        record.write(out_dir / "model.pt")
        history.write(metrics_dir / "history.csv")
        summary.write(metrics_dir / "train.json", run_name(variant.name, seed))
        trainer.card().write(metrics_dir / "model.json")
        example = trainer.data.images["val"][:4].transpose(0, 3, 1, 2).astype("float32") / 255
        classifier = classifier_of(record)
        run.log_outputs(classifier, record, history, summary, metrics_dir, example)
        try:
            run.finish()
            RunFile(run.run_id, experiment).write(out_dir / "mlflow_run.json")
        except training_run.TrackingBehind as exc:
            behind = exc
    # An unrecorded run leaves the checkpoint resumable: re-running the stage trains nothing.
    trainer.finish(completed=behind is None)
    if behind is not None:
        raise ResnetlabError(behind.stage_message(variant.name, out_dir, metrics_dir, seed))
    best = f"{100 * record.best_val_accuracy:.2f}% at epoch {record.best_epoch}"
    log.info("%s: best val accuracy %s; model -> %s", variant.name, best, out_dir / "model.pt")
    return summary


def _overrides(params: Params, variant: Variant) -> tuple[str, ...]:
    """The `train` keys whose value the variant changes from the defaults."""
    defaults, own = dataclasses.asdict(params.train), dataclasses.asdict(variant.train)
    # The seed is the run's own (from the stage name), not a recipe change.
    return tuple(k for k in own if k != "seed" and own[k] != defaults.get(k))


def _dataset(data: Prepared, data_dir: Path, config: DataConfig | None) -> training_run.DatasetInfo:
    """The training data as an MLflow dataset: SHA-256 over the train and val arrays (the test
    split is not loaded here; meta.json, also hashed, holds its counts and class statistics)."""
    digest = hashlib.sha256((Path(data_dir) / "meta.json").read_bytes())
    for split in ("train", "val"):
        digest.update(data.images[split].tobytes())
        digest.update(data.labels[split].tobytes())
    counts = json.loads((Path(data_dir) / "meta.json").read_text()).get("counts", {})
    splits = {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
    source = config.url if config is not None else str(Path(data_dir).resolve())
    name = "cifar10" if not config or not config.subset else f"cifar10-subset{config.subset}"
    return training_run.DatasetInfo(name, digest.hexdigest()[:16], source, splits)

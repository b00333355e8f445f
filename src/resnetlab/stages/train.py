"""`resnetlab train --variant NAME`: train one variant, resumably, recording it in MLflow.

Params read: `train` (the defaults), `variants.<NAME>` (model and overrides), `mlflow.experiment`.
Works unchanged under `torchrun --nproc_per_node=N` (DistributedDataParallel).

Outputs (paths from the command line, i.e. from dvc.yaml):
  <out>/model.pt         best-on-validation weights + resolved config (weights_only-loadable)
  <out>/checkpoint.pt    last complete epoch; DVC keeps it (persist) so an interrupted run resumes
  <out>/mlflow_run.json  the MLflow run id, for the evaluate stage
  <metrics>/train.json   summary metrics;  <metrics>/history.csv  one row per epoch
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab import checkpoint, distributed, engine, tracking
from resnetlab.atomic import remove_stale_temporaries
from resnetlab.augment import Normalizer
from resnetlab.config import Variant, flatten, load_params
from resnetlab.data import load_prepared
from resnetlab.errors import ResnetlabError
from resnetlab.inference import load_classifier, model_record
from resnetlab.metrics import HISTORY_COLUMNS
from resnetlab.models import build_model, count_parameters, model_depth

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


@dataclass
class Progress:
    """Where training stands; what a checkpoint stores besides the torch states."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    train_time_s: float = 0.0
    run_id: str | None = None


def _epoch_seed(seed: int, epoch: int) -> int:
    # Batch order and augmentation of every epoch derive from (seed, epoch) alone, so a resumed
    # run draws exactly what the uninterrupted run would have drawn.
    return seed * 1_000_003 + epoch


def _data_fingerprint(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "meta.json").read_bytes()).hexdigest()[:16]


def train_variant(
    variant: Variant, experiment: str, data_dir: Path, out_dir: Path, metrics_dir: Path
) -> dict[str, Any]:
    """Train `variant` to completion (resuming a matching unfinished checkpoint); returns the
    summary written to train.json."""
    cfg = variant.train
    out_dir, metrics_dir, data_dir = Path(out_dir), Path(metrics_dir), Path(data_dir)
    device = engine.resolve_device(cfg.device)
    dist = distributed.init(device)
    device = distributed.local_device(device, dist)

    torch.manual_seed(cfg.seed)
    model = build_model(variant.model.name, **variant.model.args)  # validates the model spec
    n_params = count_parameters(model)
    data = load_prepared(data_dir, splits=("train", "val"))  # the test set is never loaded here
    fingerprint = f"{variant.fingerprint()}-{_data_fingerprint(data_dir)}"
    if dist.is_main:
        tracking.ensure_reachable(experiment)  # fail now, not after hours of training
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
    distributed.barrier(dist)

    ckpt_path = out_dir / "checkpoint.pt"
    saved = _resumable_checkpoint(ckpt_path, fingerprint)
    if dist.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter names
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    world = dist.world
    steps = engine.steps_per_epoch(len(data.labels["train"]), cfg.batch_size, world)
    if steps == 0:
        raise ResnetlabError(f"{variant.name}: the training split is empty")
    optimizer = engine.build_optimizer(model, cfg)
    scheduler = engine.build_scheduler(optimizer, cfg, steps)
    amp_dtype = engine.autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ema = engine.build_ema(model, cfg.ema_decay)

    progress = Progress()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        checkpoint.set_rng_state(saved["rng"])
        progress = Progress(**saved["progress"])
        log.info("%s: resuming after epoch %d of %d", variant.name, progress.epoch, cfg.epochs)

    train_model: nn.Module = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)
    eval_model = ema.module if ema is not None else model

    x_train = torch.from_numpy(data.images["train"]).to(device)
    y_train = torch.from_numpy(data.labels["train"]).to(device)
    x_val = torch.from_numpy(data.images["val"]).to(device)
    y_val = torch.from_numpy(data.labels["val"]).to(device)
    normalize = Normalizer(data.mean, data.std, device, cfg.channels_last)
    shard = engine.Shard(dist.rank, dist.world)

    run_ctx: contextlib.AbstractContextManager[str | None]
    if dist.is_main:
        tags = tracking.run_tags(variant.name, device)
        tags["num_processes"] = str(world)
        run_params = {**flatten(variant.to_dict()), "parameters": n_params}
        run_ctx = tracking.training_run(
            experiment, variant.name, run_params, tags, run_id=progress.run_id
        )
    else:
        run_ctx = contextlib.nullcontext(None)

    with run_ctx as run_id:
        progress.run_id = run_id
        if dist.is_main and saved is None:
            tracking.log_metrics({"parameters": float(n_params)}, step=0)
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):
            generator = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch))
            bar = _ProgressBar(
                f"{variant.name} {epoch}/{cfg.epochs}", cfg.batch_size, optimizer, dist.is_main
            )
            try:
                stats = engine.train_epoch(
                    train_model,
                    optimizer,
                    scheduler,
                    x_train,
                    y_train,
                    cfg,
                    normalize,
                    generator,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    ema=ema,
                    shard=shard,
                    sync_every=bar.sync_every,
                    on_progress=bar.update,
                )
            except engine.NonFiniteLossError as exc:
                kept = (
                    f"The checkpoint of epoch {epoch - 1} is intact."
                    if epoch > 1
                    else "No checkpoint was written."
                )
                raise ResnetlabError(
                    f"{variant.name}: the loss became {exc.value} at epoch {epoch}, step "
                    f"{exc.step}; training stopped. {kept} Lower the learning rate "
                    f"(lr={cfg.lr}) or add a warm-up (warmup_epochs) for this variant."
                ) from None
            finally:
                bar.close()
            progress.train_time_s += stats.seconds
            if not dist.is_main:
                continue
            val_loss, val_acc = engine.evaluate(
                eval_model, x_val, y_val, normalize, cfg.eval_batch_size, amp_dtype
            )
            row = {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": stats.lr,
                "epoch_time_s": stats.seconds,
                "images_per_s": stats.images_per_s * world,
            }
            progress.history.append(row)
            progress.epoch = epoch
            if val_acc > progress.best_val_accuracy:
                progress.best_val_accuracy, progress.best_epoch = val_acc, epoch
                progress.best_state = checkpoint.cpu_state_dict(eval_model)
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            _log_epoch_line(variant.name, cfg.epochs, row)
            checkpoint.save_atomic(
                _checkpoint(fingerprint, model, optimizer, scheduler, scaler, ema, progress),
                ckpt_path,
            )
        distributed.barrier(dist)
        summary: dict[str, Any] = {}
        if dist.is_main:
            summary = _write_outputs(variant, data, n_params, progress, out_dir, metrics_dir)
            tracking.write_run_file(out_dir / "mlflow_run.json", progress.run_id or "", experiment)
            state = _checkpoint(fingerprint, model, optimizer, scheduler, scaler, ema, progress)
            checkpoint.save_atomic({**state, "finished": True}, ckpt_path)
    distributed.barrier(dist)
    distributed.shutdown(dist)
    return summary


def _resumable_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    saved = checkpoint.load(path)
    if saved.get("format") != checkpoint.FORMAT or saved.get("fingerprint") != fingerprint:
        log.info("%s belongs to another config or data; training from scratch", path)
        return None
    if saved.get("finished"):
        log.info("%s is from a finished run; training from scratch", path)
        return None
    return saved


def _checkpoint(fingerprint, model, optimizer, scheduler, scaler, ema, progress) -> dict[str, Any]:
    return {
        "format": checkpoint.FORMAT,
        "fingerprint": fingerprint,
        "finished": False,
        "model": checkpoint.cpu_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "ema": ema.state_dict() if ema is not None else {},
        "rng": checkpoint.rng_state(),
        "progress": vars(progress),
    }


def _write_outputs(variant, data, n_params, progress, out_dir, metrics_dir) -> dict[str, Any]:
    import pandas as pd

    if progress.best_state is None:
        raise ResnetlabError(f"{variant.name}: no epoch completed; nothing to save")
    model_path = out_dir / "model.pt"
    record = model_record(
        progress.best_state,
        variant.to_dict(),
        data.classes,
        data.mean,
        data.std,
        parameters=n_params,
        best_epoch=progress.best_epoch,
        best_val_accuracy=progress.best_val_accuracy,
    )
    checkpoint.save_atomic(record, model_path)
    history = pd.DataFrame(progress.history, columns=list(HISTORY_COLUMNS))
    history.to_csv(metrics_dir / "history.csv", index=False, float_format="%.6g")
    from resnetlab.plots import plot_history

    plot_history(history, metrics_dir / "curves.png", title=f"{variant.name}: training curves")
    total_images = float(sum(r["images_per_s"] * r["epoch_time_s"] for r in progress.history))
    summary = {
        "variant": variant.name,
        "model": variant.model.name,
        "model_args": dict(variant.model.args),
        "depth": model_depth(variant.model.name, dict(variant.model.args)),
        "parameters": n_params,
        "epochs": progress.epoch,
        "best_epoch": progress.best_epoch,
        "best_val_accuracy": progress.best_val_accuracy,
        "train_time_s": round(progress.train_time_s, 3),
        "images_per_s": round(total_images / max(progress.train_time_s, 1e-9), 1),
    }
    (metrics_dir / "train.json").write_text(json.dumps(summary, indent=2) + "\n")

    classifier, _ = load_classifier(model_path)
    example = data.images["val"][:4].transpose(0, 3, 1, 2).astype("float32") / 255.0
    tracking.log_trained_model(
        classifier,
        example,
        history,
        [metrics_dir / name for name in ("train.json", "history.csv", "curves.png")],
        classes=data.classes,
    )
    tracking.log_metrics(
        {"best_val_accuracy": progress.best_val_accuracy, "best_epoch": progress.best_epoch},
        step=progress.epoch,
    )
    log.info(
        "%s: best val accuracy %.2f%% at epoch %d; model -> %s",
        variant.name,
        100 * progress.best_val_accuracy,
        progress.best_epoch,
        model_path,
    )
    return summary


def _log_epoch_line(name: str, epochs: int, row: dict[str, float]) -> None:
    log.info(
        "%s epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  lr %.4g  "
        "%.1f s  %.0f img/s",
        name,
        row["epoch"],
        epochs,
        row["train_loss"],
        100 * row["train_accuracy"],
        row["val_loss"],
        100 * row["val_accuracy"],
        row["lr"],
        row["epoch_time_s"],
        row["images_per_s"],
    )


class _ProgressBar:
    """A tqdm bar per epoch on a terminal (loss, accuracy, lr, images/s); nothing otherwise: the
    epoch's summary line says it all in a log."""

    def __init__(self, desc: str, batch_size: int, optimizer: torch.optim.Optimizer, enabled: bool):
        self.bar = None
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.start = time.perf_counter()
        interactive = enabled and sys.stderr.isatty()
        # Steps between host syncs: frequent enough for a live bar, rare enough not to stall a GPU.
        self.sync_every = 10 if interactive else 50
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit="step", leave=False)

    def update(self, step: int, total: int, loss: float, accuracy: float) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.total = total
        self.bar.n = step
        self.bar.set_postfix(
            loss=f"{loss:.3f}",
            acc=f"{100 * accuracy:.1f}%",
            lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
            img_s=f"{step * self.batch_size / elapsed:.0f}",
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

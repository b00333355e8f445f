"""Training one variant, resumably: `Trainer(...).fit(listeners)`.

The trainer sets up device, processes (DistributedDataParallel under torchrun), model, optimiser,
schedule and data, restores a matching unfinished checkpoint, and runs the remaining epochs. After
each epoch it validates, keeps the best-on-validation weights (on the device), writes the
checkpoint if one is due (`train.checkpoint_every_s`; always after the last epoch), and only
then tells its listeners (`TrainingListener`): the console progress display hears of every
epoch, MLflow of the epochs a checkpoint holds; neither is written into the loop.

The test set is never loaded here: model selection uses the validation split only.

About 400 lines on purpose: one class whose set-up, loop, checkpointing and outputs share the
run's state; the pieces that stand alone already do (`loop`, `checkpoint`, `schedule`,
`distributed`, `events`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnetlab.core.atomic import remove_stale_temporaries
from resnetlab.core.config import Variant
from resnetlab.core.device import (
    PRECISION_NAMES,
    autocast_dtype,
    fast_cuda_math,
    place,
    use_compile,
    use_cuda_graphs,
)
from resnetlab.core.errors import ResnetlabError
from resnetlab.core.params import check_batch_fits
from resnetlab.core.records import History, HistoryRow, ModelCard, ModelRecord, TrainSummary
from resnetlab.data.augment import alternating_flips
from resnetlab.data.normalize import Normalizer, normalization_problem
from resnetlab.data.prepared import Prepared, load_prepared
from resnetlab.evaluate.scoring import loss_and_accuracy, predict_logits
from resnetlab.models import build_model_for, count_parameters, model_depth
from resnetlab.train import checkpoint, distributed, loop, schedule
from resnetlab.train.events import (
    Checkpointed,
    EpochEnd,
    RunStart,
    StepProgress,
    TrainingListener,
    notify,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loop:
    """What the epoch loop runs on, built once per `fit`."""

    train_model: nn.Module  # possibly DDP- and compile-wrapped
    eval_model: nn.Module  # the EMA copy when EMA is on
    x_train: torch.Tensor  # uint8 NHWC, on the device
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    normalize: Normalizer
    shard: loop.Shard


def epoch_seed(seed: int, epoch: int) -> int:
    # Batch order and augmentation of every epoch derive from (seed, epoch) alone, so a resumed
    # run draws exactly what the uninterrupted run would have drawn.
    return seed * 1_000_003 + epoch


def data_fingerprint(data_dir: Path) -> str:
    return hashlib.sha256((Path(data_dir) / "meta.json").read_bytes()).hexdigest()[:16]


def run_fingerprint(variant: Variant, data_dir: Path, drop_last: bool) -> str:
    """What a checkpoint must match to be resumed: the config (`Variant.fingerprint`), the
    prepared data, and whether epochs drop their last partial batch (CUDA): a checkpoint from
    the CPU has another number of steps per epoch, which its schedule's state holds."""
    key = f"{variant.fingerprint()}-{data_fingerprint(data_dir)}"
    return f"{key}-full-batches" if drop_last else key


def _mismatch(exc: BaseException) -> str:
    """The first specific line of a `load_state_dict` error (torch's runs to a hundred lines:
    a header, then one line per tensor)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith("Error(s) in loading")]
    return ((specific or lines or [type(exc).__name__])[0])[:160]


class Trainer:
    """One variant's training on the data in `data_dir`, checkpointed to `checkpoint_path`.

    Construction reads (data, checkpoint) and builds, but writes nothing; `fit` trains.
    """

    def __init__(self, variant: Variant, data_dir: Path, checkpoint_path: Path):
        cfg = variant.train
        self.variant = variant
        self.checkpoint_path = Path(checkpoint_path)
        # torchrun gives each process its GPU; otherwise parallel runs lease theirs.
        self.placement = place(cfg.device, parallel_aware=not distributed.launched())
        self.dist, self.device = distributed.init(self.placement.device)

        self.data_dir = Path(data_dir)
        self.data: Prepared = load_prepared(data_dir, splits=("train", "val"))
        torch.manual_seed(cfg.seed)
        # One output per class of the prepared data (validates the spec too).
        model = build_model_for(variant.model.name, dict(variant.model.args), self.data.classes)
        self.parameters = count_parameters(model)
        check_batch_fits(variant, len(self.data.labels["train"]))  # global batch vs the split
        # On CUDA every step has the same shape: the last partial batch (45,000 % 128 = 72
        # images) would recompile a compiled model and cannot replay a captured graph. Its
        # images are reshuffled into the next epoch's batches. On the CPU the batches stay as
        # they were, and with them every CPU result the docs record.
        self.drop_last = self.device.type == "cuda"
        self.fingerprint = run_fingerprint(variant, data_dir, self.drop_last)
        saved = checkpoint.resumable(self.checkpoint_path, self.fingerprint)

        sync_batchnorm = self.dist.enabled and self.device.type == "cuda"
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter names
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.steps = loop.steps_per_epoch(
            len(self.data.labels["train"]), cfg.batch_size, self.dist.world, self.drop_last
        )
        if self.steps == 0:
            raise ResnetlabError(f"{variant.name}: the training split is empty")
        self.model = model
        self.optimizer = schedule.build_optimizer(model, cfg)
        self.scheduler = schedule.build_scheduler(self.optimizer, cfg, self.steps)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.ema = schedule.build_ema(model, cfg.ema_decay)
        self.compiled = use_compile(
            cfg.compile, self.device, cfg.epochs * self.steps, self.amp_dtype, sync_batchnorm
        )
        self.cuda_graphs = use_cuda_graphs(
            cfg.cuda_graphs, self.device, self.compiled, self.dist.enabled
        )
        # On CUDA a step's augmentation kernels are launches the GPU waits for, and they
        # cannot join a captured graph: the epoch is augmented in a few passes before its first
        # step. That draws the random views in another order, so the CPU keeps augmenting per
        # step, and with it every CPU result the docs record.
        self.augment_once = self.device.type == "cuda"

        self.progress = checkpoint.Progress()
        if saved is not None and self._restore_or_set_aside(saved):
            log.info(
                "%s: resuming after epoch %d of %d", variant.name, self.progress.epoch, cfg.epochs
            )
        self.resumed_epoch = self.progress.epoch
        self.saved_epoch = self.progress.epoch  # the last epoch the checkpoint on disk holds

    @property
    def resolved(self) -> dict[str, str | bool]:
        """What `precision`, `compile` and `cuda_graphs: auto` became on this machine."""
        return {
            "precision": PRECISION_NAMES[self.amp_dtype],
            "compile": self.compiled,
            "cuda_graphs": self.cuda_graphs,
        }

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints and outputs and notifies listeners."""
        return self.dist.is_main

    def _restore_or_set_aside(self, saved: checkpoint.TrainingState) -> bool:
        """Restore `saved`; if its tensors do not fit this model and optimizer (a damaged or
        forged file with our format and fingerprint), put back the fresh state, set the file
        aside and return False: the run trains from the start."""
        fresh = copy.deepcopy(self.state())  # load_state_dict copies into these tensors
        try:
            self._restore(saved)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            self._restore(fresh)
            self.progress = checkpoint.Progress()
            if self.is_main:
                checkpoint.set_aside(
                    self.checkpoint_path, f"its tensors do not fit the model: {_mismatch(exc)}"
                )
            return False
        return True

    def _restore(self, saved: checkpoint.TrainingState) -> None:
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        if self.ema is not None:
            self.ema.load_state_dict(saved.ema)
        checkpoint.set_rng_state(saved.rng, self.device)
        self.progress = saved.progress

    def state(self, finished: bool = False) -> checkpoint.TrainingState:
        """The training state now; its best weights may still be on the device (saving moves
        them to the CPU)."""
        return checkpoint.TrainingState(
            fingerprint=self.fingerprint,
            progress=self.progress,
            model=checkpoint.cpu_state_dict(self.model),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else {},
            ema=self.ema.state_dict() if self.ema is not None else {},
            rng=checkpoint.rng_state(self.device),
            finished=finished,
        )

    def fit(self, listeners: Sequence[TrainingListener] = (), sync_every: int = 50) -> None:
        """Run the remaining epochs. Listeners are notified on the main process only; the loop
        reads losses back from the device every `sync_every` steps (progress, non-finite check).
        Raises ResnetlabError on a non-finite loss (the last checkpoint stays intact)."""
        with fast_cuda_math(self.device):
            self._fit(listeners, sync_every)

    def _fit(self, listeners: Sequence[TrainingListener], sync_every: int) -> None:
        epochs = self.variant.train.epochs
        listeners = list(listeners) if self.is_main else []
        if self.is_main:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.checkpoint_path.parent)
        distributed.barrier(self.dist)
        setup = self._loop()
        cadence = checkpoint.Cadence(self.variant.train.checkpoint_every_s)
        unsaved: list[HistoryRow] = []  # epochs trained since the last checkpoint
        start = RunStart(
            self.variant,
            self.device,
            self.dist.world,
            self.parameters,
            self.steps,
            self.resumed_epoch,
            self.history().rows,
        )
        try:
            notify(listeners, "on_start", start)
            for epoch in range(self.progress.epoch + 1, epochs + 1):
                notify(listeners, "on_epoch_start", epoch, epochs)

                def on_progress(step: int, steps: int, loss: float, acc: float, epoch=epoch):
                    lr = self.optimizer.param_groups[0]["lr"]
                    event = StepProgress(epoch, epochs, step, steps, loss, acc, lr)
                    notify(listeners, "on_step", event)

                stats = self._train_epoch(setup, epoch, sync_every, on_progress)
                self.progress.train_time_s += stats.seconds
                if not self.is_main:
                    continue
                row, is_best = self._validate(setup, epoch, stats)
                unsaved.append(row)
                saving = cadence.due(epoch, epochs)
                if saving:
                    # On disk before anyone hears of it: a failing listener never costs it.
                    self.state().save(self.checkpoint_path)
                    cadence.written()
                    self.saved_epoch = epoch
                notify(listeners, "on_epoch_end", EpochEnd(row, epochs, is_best))
                if saving:
                    notify(listeners, "on_checkpoint", Checkpointed(tuple(unsaved)))
                    unsaved.clear()
        finally:
            notify(listeners, "on_stop")
        distributed.barrier(self.dist)

    def _loop(self) -> _Loop:
        """The wrapped model (DDP, compile), the evaluated one (EMA) and the device tensors."""
        cfg, dist, device = self.variant.train, self.dist, self.device
        train_model: nn.Module = self.model
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.compiled:
            mode = "reduce-overhead" if self.cuda_graphs else None  # Inductor's CUDA graphs
            train_model = torch.compile(train_model, mode=mode)
        images, labels = self.data.images, self.data.labels
        return _Loop(
            train_model=train_model,
            eval_model=self.ema.module if self.ema is not None else self.model,
            x_train=torch.from_numpy(images["train"]).to(device),
            y_train=torch.from_numpy(labels["train"]).to(device),
            x_val=torch.from_numpy(images["val"]).to(device),
            y_val=torch.from_numpy(labels["val"]).to(device),
            normalize=Normalizer(self.data.mean, self.data.std, device, cfg.channels_last),
            shard=loop.Shard(dist.rank, dist.world),
        )

    def _train_epoch(
        self, setup: _Loop, epoch: int, sync_every: int, on_progress: Callable[..., None]
    ) -> loop.EpochStats:
        cfg = self.variant.train
        generator = torch.Generator(device=self.device).manual_seed(epoch_seed(cfg.seed, epoch))
        mirror = None
        if cfg.augment.flip == "alternate":
            mirror = alternating_flips(len(setup.x_train), cfg.seed, epoch, self.device)
        try:
            return loop.train_epoch(
                setup.train_model,
                self.optimizer,
                self.scheduler,
                setup.x_train,
                setup.y_train,
                cfg,
                setup.normalize,
                generator,
                amp_dtype=self.amp_dtype,
                scaler=self.scaler,
                ema=self.ema,
                shard=setup.shard,
                sync_every=sync_every,
                on_progress=on_progress,
                mirror=mirror,
                drop_last=self.drop_last,
                augment_once=self.augment_once,
                cuda_graphs=self.cuda_graphs,
            )
        except loop.NonFiniteLossError as exc:
            kept = (
                f"The checkpoint of epoch {self.saved_epoch} is intact."
                if self.saved_epoch
                else "No checkpoint was written."
            )
            problem = normalization_problem(
                self.data_dir, self.data.mean, self.data.std, setup.normalize, setup.x_train
            )
            advice = (
                f"The prepared data is at fault, not the learning rate: {problem}; prepare it "
                "again (`dvc repro -f prepare`)."
                if problem
                else f"Lower the learning rate (lr={cfg.lr}) or add a warm-up (warmup_epochs) "
                "for this variant."
            )
            raise ResnetlabError(
                f"{self.variant.name}: the loss became {exc.value} at epoch {epoch}, step "
                f"{exc.step}; training stopped. {kept} {advice}"
            ) from None

    def _validate(
        self, setup: _Loop, epoch: int, stats: loop.EpochStats
    ) -> tuple[HistoryRow, bool]:
        """Score the epoch on the validation split, record it, and keep its weights if best."""
        cfg, p = self.variant.train, self.progress
        logits = predict_logits(
            setup.eval_model, setup.x_val, setup.normalize, cfg.eval_batch_size, self.amp_dtype
        )
        val_loss, val_acc = loss_and_accuracy(logits, setup.y_val)
        row = HistoryRow(
            epoch=epoch,
            train_loss=stats.loss,
            train_accuracy=stats.accuracy,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=stats.lr,
            epoch_time_s=stats.seconds,
            images_per_s=stats.images_per_s * self.dist.world,
        )
        p.history.append(dataclasses.asdict(row))
        p.epoch = epoch
        is_best = val_acc > p.best_val_accuracy
        if is_best:
            p.best_val_accuracy, p.best_epoch = val_acc, epoch
            p.best_state = checkpoint.device_state_dict(setup.eval_model)
        return row, is_best

    # --- what the stage writes ----------------------------------------------------------------

    def history(self) -> History:
        return History(tuple(HistoryRow(**row) for row in self.progress.history))

    def model_record(self) -> ModelRecord:
        p = self.progress
        if p.best_state is None:
            raise ResnetlabError(f"{self.variant.name}: no epoch completed; nothing to save")
        return ModelRecord(
            state_dict=checkpoint.to_cpu(p.best_state),
            variant=self.variant,
            classes=tuple(self.data.classes),
            mean=tuple(self.data.mean),
            std=tuple(self.data.std),
            parameters=self.parameters,
            best_epoch=p.best_epoch,
            best_val_accuracy=p.best_val_accuracy,
            image_size=self.data.image_size,
        )

    def summary(self) -> TrainSummary:
        p = self.progress
        images = sum(r["images_per_s"] * r["epoch_time_s"] for r in p.history)
        return TrainSummary(
            epochs=p.epoch,
            best_val_accuracy=p.best_val_accuracy,
            train_time_s=round(p.train_time_s, 3),
            images_per_s=round(float(images) / max(p.train_time_s, 1e-9), 1),
        )

    def card(self) -> ModelCard:
        model = self.variant.model
        return ModelCard(
            variant=self.variant.name,
            model=model.name,
            model_args=dict(model.args),
            depth=model_depth(model.name, dict(model.args)),
            parameters=self.parameters,
            best_epoch=self.progress.best_epoch,
        )

    def finish(self, completed: bool = True) -> None:
        """Mark the checkpoint finished (after the outputs are written): never resumed again.
        With `completed=False` (the outputs are written but the stage fails, e.g. tracking did
        not record them) it stays resumable: a re-run resumes after the last epoch, trains
        nothing, and writes and records the outputs again."""
        if self.is_main and completed:
            self.state(finished=True).save(self.checkpoint_path)
        # No barrier: the other ranks have nothing left to wait for, and rank 0 has just written
        # and recorded the outputs, which with a slow tracking server can outlast the process
        # group's timeout and kill ranks that sat waiting for it.
        distributed.shutdown(self.dist)

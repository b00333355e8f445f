"""The typed, frozen configuration: what `params.yaml` holds, as dataclasses that validate
themselves (`core.params` reads the file into them).

Layout of `params.yaml`::

    data:      {dataset, url, md5, path, image_size, val_size, val_fraction, test_fraction,
                seed, subset}
    seeds:     [0, 1, 2]                   # training seeds: every variant trains once per seed
    run_variants: [plain20, resnet20, ...] # the variants the pipeline runs (default: all)
    mlflow:    {experiment}
    evaluate:  {tta, tta_variants: {<name>: <tta>}}   # test-time augmentation
    diagnose:  {gradient_depths, seed}
    train:     {epochs, batch_size, optimizer, lr, ..., augment: {crop_padding, flip, ...}}
    variants:
      <name>:
        model: {name: <registry name>, <model arguments>...}
        <any train key>: <override>        # e.g. epochs: 2, augment: {cutout_size: 16}

A variant's training config is `train` deep-merged with the variant's overrides; its training
seed (weights, batch order, augmentation) is one of `seeds`, given per run (`Variant.with_seed`).
The validation split and the subset stay tied to `data.seed`, so every seed sees the same images.

About 430 lines on purpose: every section of `params.yaml` is one dataclass holding each key's
type, default and validation side by side (the parameter reference in docs/params.md is
rendered from them), and splitting the sections apart would split that one schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from resnetlab.core.depths import BASIC_DEPTHS, MAX_DEPTH_RULE, basic_blocks, too_deep
from resnetlab.core.errors import ConfigError, invalid
from resnetlab.data.datasets import CIFAR10, DATASETS, DEFAULT, PickleArchive

# A variant names a DVC stage (train@<name>), a params key DVC looks up with dots as separators
# (variants.<name>) and folders: DVC's own rule for stage names (no punctuation but '_' and '-').
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# Every seed: torch.manual_seed takes < 2**64, the per-epoch seed is seed * 1_000_003 + epoch,
# and scikit-learn's random_state (the split's data.seed) takes < 2**32. One bound for all.
MAX_SEED = 2**32 - 1
# The largest data.image_size: a prepared 224 x 224 dataset already holds 150 KB per image, and
# everything is kept in memory.
MAX_IMAGE_SIZE = 512
SEED_RULE = f"an integer in 0..{MAX_SEED} (2**32 - 1)"


def is_seed(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


@dataclass(frozen=True)
class DataConfig:
    dataset: str = DEFAULT  # a key of data.datasets.DATASETS
    # An archive dataset's source: "" = its official archive; else a mirror (URL or path) and
    # that copy's md5.
    url: str = ""
    md5: str = ""
    path: str = "data/images"  # folder dataset: one sub-folder per class
    # folder dataset: the side its images are resized to at prepare; by default the side the
    # CIFAR nets were designed for
    image_size: int = CIFAR10.image_size
    val_size: int = 5000  # archive: images held out of the training set (He et al.: 45k/5k)
    val_fraction: float = 0.1  # folder without val/: each class's share held out for validation
    test_fraction: float = 0.2  # folder without test/: each class's share held out for testing
    seed: int = 0  # seeds the validation split and the subset
    subset: int = 0  # training images kept after the split, balanced per class; 0 = all

    @property
    def source(self) -> PickleArchive | None:
        """The archive dataset selected, or None for a folder."""
        found = DATASETS.get(self.dataset)
        return found if isinstance(found, PickleArchive) else None

    def archive_source(self) -> tuple[str, str]:
        """The archive's (url, md5): the mirror given, else the official archive."""
        archive = self.source
        assert archive is not None, "archive_source of a folder dataset"
        return (self.url, self.md5) if self.url else (archive.url, archive.md5)

    def validate(self) -> None:
        require(self.dataset in DATASETS, "data.dataset", self.dataset, ", ".join(DATASETS))
        require(
            self.md5 == "" or re.fullmatch(r"[0-9a-f]{32}", self.md5) is not None,
            "data.md5",
            self.md5,
            "32 lowercase hex digits, or empty for the official archive's",
        )
        require(
            not self.url or bool(self.md5),
            "data.md5",
            self.md5,
            f"the md5 of the mirror at data.url={self.url!r} (32 lowercase hex digits)",
        )
        require(bool(self.path.strip()), "data.path", self.path, "a folder of class folders")
        require(
            isinstance(self.image_size, int) and 8 <= self.image_size <= MAX_IMAGE_SIZE,
            "data.image_size",
            self.image_size,
            f"an integer in 8..{MAX_IMAGE_SIZE} pixels",
        )
        archive = self.source
        train_size = archive.train_size if archive else None
        require(
            0 < self.val_size < (train_size or 2**31),
            "data.val_size",
            self.val_size,
            f"an integer in 1..{train_size - 1}" if train_size else "a positive integer",
        )
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            require(0 < value < 1, f"data.{key}", value, "a fraction in (0, 1)")
        require(
            self.val_fraction + self.test_fraction < 1,
            "data.test_fraction",
            self.test_fraction,
            f"a fraction below {1 - self.val_fraction:g} (1 - data.val_fraction: some images "
            "must be left to train on)",
        )
        require(is_seed(self.seed), "data.seed", self.seed, SEED_RULE)
        require(self.subset >= 0, "data.subset", self.subset, "0 (all) or a positive integer")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "resnetlab"

    def validate(self) -> None:
        require(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "a name")


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4  # pixels of zero padding before the random crop (same size); 0 = no crop
    # Horizontal flip. true: each image mirrored with probability 1/2 in every epoch.
    # alternate: mirrored at random in the first epoch, then in each epoch exactly when it was
    # not in the one before, so every image is seen both ways every two epochs (the alternating
    # flip of Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", which pays most in short runs).
    flip: Flip = True
    cutout_size: int = (
        0  # side in pixels of each square Cutout hole (DeVries & Taylor: 16); 0 = off
    )
    cutout_count: int = 1  # holes per image
    rotation: float = 0.0  # max rotation in degrees, uniform in [-rotation, rotation]; 0 = off
    # max per-channel brightness shift, a fraction of the 0..255 range, uniform in [-x, x] for
    # each channel of each image (Keras's channel_shift_range / 255); 0 = off
    channel_shift: float = 0.0

    def validate(self, prefix: str) -> None:
        require(0 <= self.rotation <= 180, f"{prefix}.rotation", self.rotation, "0..180 degrees")
        require(
            0 <= self.channel_shift <= 1,
            f"{prefix}.channel_shift",
            self.channel_shift,
            "a fraction of the 0..255 range in [0, 1]",
        )
        require(
            0 <= self.crop_padding <= 16,
            f"{prefix}.crop_padding",
            self.crop_padding,
            "an integer in 0..16",
        )
        require(
            0 <= self.cutout_size <= MAX_IMAGE_SIZE,
            f"{prefix}.cutout_size",
            self.cutout_size,
            f"0..{MAX_IMAGE_SIZE} pixels",
        )
        require(self.cutout_count >= 1, f"{prefix}.cutout_count", self.cutout_count, "an int >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """How the evaluate stage scores a model on the test set. Test-time augmentation (TTA)
    averages the logits of several views of each image: `flip` = the image and its mirror (2
    forward passes), `flip_translate` = both, each also shifted by 2 pixels up-left and
    down-right (6 passes), `flip_grid` = both, each shifted by every offset of -1, 0 and +1
    pixel in each direction (18 passes). A run's metrics file gives the configured evaluation's
    `accuracy`; `single_view_accuracy` is always the plain one, comparable with the papers'."""

    tta: Tta = "none"  # for every variant not named in tta_variants
    tta_variants: Mapping[str, Tta] = field(default_factory=dict)  # per-variant exceptions

    def tta_for(self, variant: str) -> Tta:
        return self.tta_variants.get(variant, self.tta)


@dataclass(frozen=True)
class DiagnoseConfig:
    # Depths of the plain and resnet_v1 nets whose per-layer gradient norms at initialisation
    # the diagnose stage measures (He et al.'s 20, 56, 110); empty = no profile.
    gradient_depths: tuple[int, ...] = (20, 56, 110)
    seed: int = 0  # seeds those nets' weights and the random batch

    def validate(self) -> None:
        for i, d in enumerate(self.gradient_depths):
            # Both nets compared (plain and resnet_v1) have basic blocks.
            require(basic_blocks(d) is not None, f"diagnose.gradient_depths[{i}]", d, BASIC_DEPTHS)
            require(not too_deep(d), f"diagnose.gradient_depths[{i}]", d, MAX_DEPTH_RULE)
        require(is_seed(self.seed), "diagnose.seed", self.seed, SEED_RULE)


Optimizer = Literal["sgd", "adamw"]


Schedule = Literal["multistep", "step", "cosine", "linear", "onecycle", "constant"]


Precision = Literal["auto", "fp32", "bf16", "fp16"]


AutoOnOff = Literal["auto", True, False]  # decided by the run, or forced on / off


Tta = Literal["none", "flip", "flip_translate", "flip_grid"]


Flip = Literal[True, False, "alternate"]


# `train` keys that say how a run is carried out, not what it computes: a checkpoint written
# under one value resumes under another.
OUTPUT_NEUTRAL_TRAIN_KEYS = ("checkpoint_every_s",)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 182
    # A cap on every variant's epochs, applied after the variant's own overrides (a variant
    # cannot set it): quick runs shorten everything with one key. 0 = no cap.
    max_epochs: int = 0
    batch_size: int = 128  # images per optimiser step, summed over all processes
    optimizer: Optimizer = "sgd"
    lr: float = 0.1  # peak learning rate (for onecycle: the maximum)
    momentum: float = 0.9  # sgd momentum; for adamw this is beta1
    nesterov: bool = False
    weight_decay: float = 1e-4  # L2 coefficient (sgd) / decoupled decay (adamw)
    schedule: Schedule = "multistep"
    # multistep: epochs at which lr *= gamma. Values < 1 are fractions of `epochs`
    # (He et al.: [0.5, 0.75] of 182 = epochs 91 and 136), values >= 1 are epoch numbers.
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1  # lr factor at each milestone / every `step_size` epochs
    step_size: int = 10  # schedule "step": epochs between lr *= gamma
    warmup_epochs: float = 0.0  # linear ramp from warmup_lr to lr over this many epochs
    warmup_lr: float = 0.01  # lr at the first step of the warm-up (He et al.'s ResNet-110: 0.01)
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0  # seeds weights init, batch order and augmentation
    device: str = "auto"  # auto = cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps
    # auto = bf16 autocast where the device computes bf16 natively (CUDA since Ampere, CPUs with
    # AVX-512 BF16 or AMX), fp32 elsewhere
    precision: Precision = "auto"
    channels_last: bool = True  # NHWC memory format: faster convolutions on GPUs with tensor cores
    # torch.compile the training model: auto = on CUDA, and on a CPU training in bf16, for runs
    # long enough to repay the compilation (device.CUDA_COMPILE_MIN_STEPS and COMPILE_MIN_STEPS
    # optimiser steps); true / false force it
    compile: AutoOnOff = "auto"
    # A compiled model on CUDA also captures forward and backward in CUDA graphs (compile mode
    # "reduce-overhead"): auto = unless training under DDP; true / false force it
    cuda_graphs: AutoOnOff = "auto"
    ema_decay: float = 0.0  # exponential moving average of weights per step; 0 = off
    eval_batch_size: int = 1000  # images per forward pass during validation / test
    # Write the resume checkpoint after an epoch once this many seconds have passed since the
    # last write, and after the last epoch; 0 = after every epoch. On a fast GPU an epoch takes
    # seconds and ResNet-18's checkpoint is ~135 MB (fsync'd): every epoch would be a large
    # share of the run. An interruption loses at most this long plus one epoch. It changes no
    # result, so a run resumes across a change of it (`Variant.fingerprint` leaves it out).
    checkpoint_every_s: float = 60.0

    def validate(self, prefix: str) -> None:
        require(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "an integer >= 1")
        require(self.max_epochs >= 0, f"{prefix}.max_epochs", self.max_epochs, "0 (no cap) or >= 1")
        require(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0, f"{prefix}.lr", self.lr, "a number > 0")
        require(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "a number in [0, 1)")
        require(
            not (self.nesterov and (self.optimizer != "sgd" or self.momentum == 0)),
            f"{prefix}.nesterov",
            self.nesterov,
            "true only with optimizer sgd and momentum > 0",
        )
        require(
            self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "a number >= 0"
        )
        require(0 < self.gamma <= 1, f"{prefix}.gamma", self.gamma, "a number in (0, 1]")
        require(self.step_size >= 1, f"{prefix}.step_size", self.step_size, "an integer >= 1")
        for m in self.milestones:
            require(
                m > 0 and (m < 1 or float(m).is_integer()),
                f"{prefix}.milestones",
                list(self.milestones),
                "fractions in (0, 1) of the epochs, or whole epoch numbers >= 1",
            )
            # An epoch number at or past the last epoch never lowers the lr: a forgotten edit
            # after shortening `epochs`. Fractions scale with `epochs` by design and are left
            # alone: the shipped [0.5, 0.75] of a 2-epoch quick run (docs/getting-started.md)
            # reaches epoch 2.
            # Other schedules ignore milestones (a cosine variant inherits train's).
            require(
                self.schedule != "multistep" or m < 1 or m < self.epochs,
                f"{prefix}.milestones",
                list(self.milestones),
                f"epoch numbers below epochs={self.epochs} (a milestone at or after the last "
                "epoch never takes effect), or fractions in (0, 1) of the epochs",
            )
        require(
            0 <= self.warmup_epochs < self.epochs,
            f"{prefix}.warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs})",
        )
        require(self.warmup_lr > 0, f"{prefix}.warmup_lr", self.warmup_lr, "a number > 0")
        require(
            0 <= self.label_smoothing < 1,
            f"{prefix}.label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        self.augment.validate(f"{prefix}.augment")
        require(is_seed(self.seed), f"{prefix}.seed", self.seed, SEED_RULE)
        require(
            re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
            f"{prefix}.device",
            self.device,
            "auto, cpu, cuda, cuda:N or mps",
        )
        require(0 <= self.ema_decay < 1, f"{prefix}.ema_decay", self.ema_decay, "0 (off) or (0, 1)")
        require(
            self.eval_batch_size >= 1, f"{prefix}.eval_batch_size", self.eval_batch_size, ">= 1"
        )
        require(
            self.checkpoint_every_s >= 0,
            f"{prefix}.checkpoint_every_s",
            self.checkpoint_every_s,
            "a number of seconds >= 0 (0 = after every epoch)",
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    args: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.args)}


@dataclass(frozen=True)
class Variant:
    name: str
    model: ModelSpec
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as plain data (JSON-safe): what a checkpoint and MLflow record."""
        return {"variant": self.name, "model": self.model.to_dict(), "train": plain(self.train)}

    def with_seed(self, seed: int) -> Variant:
        """This variant trained with training seed `seed` (one of the params' `seeds`)."""
        require(is_seed(seed), "seeds", seed, SEED_RULE)
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def fingerprint(self) -> str:
        """Stable hash of the resolved config: a checkpoint only resumes a run with the same one.
        Keys that change no result (`OUTPUT_NEUTRAL_TRAIN_KEYS`) are left out."""
        config = self.to_dict()
        for key in OUTPUT_NEUTRAL_TRAIN_KEYS:
            config["train"].pop(key, None)
        blob = json.dumps(config, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class RecipeSource:
    """Where a variant's resolved recipe departs from `train`: the keys its own entry in
    `variants` sets, and the keys `train.max_epochs` shortened (epochs and what scales with
    them); what a run's description names, so each value can be traced to the key that set it."""

    own: tuple[str, ...] = ()
    capped: tuple[str, ...] = ()

    def describe(self, variant: str, max_epochs: int) -> str:
        """E.g. ``params.yaml `train` + variants.resnet20 (lr) + train.max_epochs=2 (epochs)``."""
        words = "params.yaml `train`"
        if self.own:
            words += f" + variants.{variant} ({', '.join(self.own)})"
        if self.capped:
            words += f" + train.max_epochs={max_epochs} ({', '.join(self.capped)})"
        return words


@dataclass(frozen=True)
class Params:
    data: DataConfig
    mlflow: MlflowConfig
    train: TrainConfig
    variants: Mapping[str, Variant]
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # Training seeds: each variant trains once per seed (DVC stage train@<variant>-<seed>).
    seeds: tuple[int, ...] = (0,)
    # The variants the pipeline trains, evaluates and compares (DVC's matrix runs over this
    # list); empty = all of `variants` (params.yaml lists them: DVC needs the list itself).
    run_variants: tuple[str, ...] = ()
    # Per variant, which keys of its recipe come from where (for run descriptions).
    recipe_sources: Mapping[str, RecipeSource] = field(default_factory=dict)

    @property
    def selected(self) -> tuple[str, ...]:
        """The names in `run_variants`, or every declared variant when it is empty."""
        return self.run_variants or tuple(self.variants)

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            allowed = ", ".join(self.variants) or "(none declared)"
            raise ConfigError(f"variants.{name}: no such variant; declared: {allowed}")
        return self.variants[name]


def plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise invalid(key, value, allowed)

"""`params.yaml`, loaded once into frozen, typed dataclasses and validated.

Every other module takes these objects (or plain arguments) and never reads YAML itself. A bad value
stops the program before any work, with a message naming the key, the value and what is allowed.

Layout of `params.yaml`::

    data:      {url, md5, val_size, seed, subset}
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from resnetlab.depths import BASIC_DEPTHS, basic_blocks
from resnetlab.errors import ConfigError, invalid

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TRAIN_SIZE = 50_000
# A variant names a DVC stage (train@<name>), a params key DVC looks up with dots as separators
# (variants.<name>) and folders: DVC's own rule for stage names (no punctuation but '_' and '-').
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class DataConfig:
    url: str = OFFICIAL_URL
    md5: str = OFFICIAL_MD5
    val_size: int = 5000  # images held out of the 50k training set (He et al.: 45k/5k)
    seed: int = 0  # seeds the validation split and the subset
    subset: int = 0  # training images kept after the split, balanced per class; 0 = all

    def validate(self) -> None:
        _check(bool(self.url), "data.url", self.url, "a non-empty URL or path")
        _check(
            re.fullmatch(r"[0-9a-f]{32}", self.md5) is not None,
            "data.md5",
            self.md5,
            "32 lowercase hex digits",
        )
        _check(
            0 < self.val_size < CIFAR10_TRAIN_SIZE,
            "data.val_size",
            self.val_size,
            f"an integer in 1..{CIFAR10_TRAIN_SIZE - 1}",
        )
        _check(self.seed >= 0, "data.seed", self.seed, "an integer >= 0")
        _check(self.subset >= 0, "data.subset", self.subset, "0 (all) or a positive integer")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "resnetlab"

    def validate(self) -> None:
        _check(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "a name")


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4  # pixels of zero padding before the random 32x32 crop; 0 = no crop
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
        _check(0 <= self.rotation <= 180, f"{prefix}.rotation", self.rotation, "0..180 degrees")
        _check(
            0 <= self.channel_shift <= 1,
            f"{prefix}.channel_shift",
            self.channel_shift,
            "a fraction of the 0..255 range in [0, 1]",
        )
        _check(
            0 <= self.crop_padding <= 16,
            f"{prefix}.crop_padding",
            self.crop_padding,
            "an integer in 0..16",
        )
        _check(
            0 <= self.cutout_size <= 32, f"{prefix}.cutout_size", self.cutout_size, "0..32 pixels"
        )
        _check(self.cutout_count >= 1, f"{prefix}.cutout_count", self.cutout_count, "an int >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """How the evaluate stage scores a model on the test set. Test-time augmentation (TTA)
    averages the logits of several views of each image: `flip` = the image and its mirror (2
    forward passes), `flip_translate` = both, each also shifted by 2 pixels up-left and
    down-right (6 passes), `flip_grid` = both, each shifted by every offset of -1, 0 and +1
    pixel in each direction (18 passes). eval.json's `accuracy` is the configured evaluation's;
    `single_view_accuracy` is always the plain one, comparable with the papers'."""

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
            _check(basic_blocks(d) is not None, f"diagnose.gradient_depths[{i}]", d, BASIC_DEPTHS)
        _check(self.seed >= 0, "diagnose.seed", self.seed, "an integer >= 0")


Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["multistep", "step", "cosine", "linear", "onecycle", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Compile = Literal["auto", True, False]
Tta = Literal["none", "flip", "flip_translate", "flip_grid"]
Flip = Literal[True, False, "alternate"]


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
    # long enough to repay the compilation (device.COMPILE_MIN_STEPS optimiser steps); true /
    # false force it
    compile: Compile = "auto"
    ema_decay: float = 0.0  # exponential moving average of weights per step; 0 = off
    eval_batch_size: int = 1000  # images per forward pass during validation / test

    def validate(self, prefix: str) -> None:
        _check(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "an integer >= 1")
        _check(self.max_epochs >= 0, f"{prefix}.max_epochs", self.max_epochs, "0 (no cap) or >= 1")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, f"{prefix}.lr", self.lr, "a number > 0")
        _check(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "a number in [0, 1)")
        _check(
            not (self.nesterov and (self.optimizer != "sgd" or self.momentum == 0)),
            f"{prefix}.nesterov",
            self.nesterov,
            "true only with optimizer sgd and momentum > 0",
        )
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 < self.gamma <= 1, f"{prefix}.gamma", self.gamma, "a number in (0, 1]")
        _check(self.step_size >= 1, f"{prefix}.step_size", self.step_size, "an integer >= 1")
        for m in self.milestones:
            _check(
                m > 0 and (m < 1 or float(m).is_integer()),
                f"{prefix}.milestones",
                list(self.milestones),
                "fractions in (0, 1) of the epochs, or whole epoch numbers >= 1",
            )
            # An epoch number at or past the last epoch never lowers the lr: a forgotten edit
            # after shortening `epochs`. Fractions scale with `epochs` by design and are left
            # alone: the shipped [0.5, 0.75] of a 2-epoch quick run (README) reaches epoch 2.
            # Other schedules ignore milestones (a cosine variant inherits train's).
            _check(
                self.schedule != "multistep" or m < 1 or m < self.epochs,
                f"{prefix}.milestones",
                list(self.milestones),
                f"epoch numbers below epochs={self.epochs} (a milestone at or after the last "
                "epoch never takes effect), or fractions in (0, 1) of the epochs",
            )
        _check(
            0 <= self.warmup_epochs < self.epochs,
            f"{prefix}.warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs})",
        )
        _check(self.warmup_lr > 0, f"{prefix}.warmup_lr", self.warmup_lr, "a number > 0")
        _check(
            0 <= self.label_smoothing < 1,
            f"{prefix}.label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        self.augment.validate(f"{prefix}.augment")
        _check(self.seed >= 0, f"{prefix}.seed", self.seed, "an integer >= 0")
        _check(
            re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
            f"{prefix}.device",
            self.device,
            "auto, cpu, cuda, cuda:N or mps",
        )
        _check(0 <= self.ema_decay < 1, f"{prefix}.ema_decay", self.ema_decay, "0 (off) or (0, 1)")
        _check(self.eval_batch_size >= 1, f"{prefix}.eval_batch_size", self.eval_batch_size, ">= 1")


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
        return {"variant": self.name, "model": self.model.to_dict(), "train": _plain(self.train)}

    def with_seed(self, seed: int) -> Variant:
        """This variant trained with training seed `seed` (one of the params' `seeds`)."""
        _check(
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            "seeds",
            seed,
            "integers >= 0",
        )
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def fingerprint(self) -> str:
        """Stable hash of the resolved config: a checkpoint only resumes a run with the same one."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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

    @property
    def selected(self) -> tuple[str, ...]:
        """The names in `run_variants`, or every declared variant when it is empty."""
        return self.run_variants or tuple(self.variants)

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            allowed = ", ".join(self.variants) or "(none declared)"
            raise ConfigError(f"variants.{name}: no such variant; declared: {allowed}")
        return self.variants[name]


# ---------------------------------------------------------------------------------------------
# Loading


def load_params(path: str | Path) -> Params:
    """Read and validate `params.yaml`. Raises ConfigError with the offending key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}, line {exc.line}: duplicate key {exc.key!r} (first on line {exc.first}); "
            "each key may appear once in a mapping"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw or {})


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r} on line {line}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a key repeated in one mapping. PyYAML keeps the last value
    silently; DVC, which reads the same file for its params, refuses it; so do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be repeated
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_params(raw: Mapping[str, Any]) -> Params:
    _require_mapping(raw, "params")
    _reject_unknown(
        raw,
        {"data", "mlflow", "train", "variants", "run_variants", "diagnose", "evaluate", "seeds"},
        "",
    )
    seeds = parse_seeds(raw.get("seeds", [0]))
    data = _build(DataConfig, raw.get("data", {}), "data")
    data.validate()
    mlflow = _build(MlflowConfig, raw.get("mlflow", {}), "mlflow")
    mlflow.validate()
    train_raw = raw.get("train", {})
    _require_mapping(train_raw, "train")
    _refuse_seed_key(train_raw, "train")
    train = _build(TrainConfig, train_raw, "train")
    train.validate("train")
    variants_raw = raw.get("variants", {}) or {}
    _require_mapping(variants_raw, "variants")
    variants = {
        name: _parse_variant(str(name), spec, train_raw) for name, spec in variants_raw.items()
    }
    if data.subset:
        # The training split is exactly `data.subset` images: known before any data is read.
        for variant in variants.values():
            check_batch_fits(variant, data.subset)
    diagnose = _build(DiagnoseConfig, raw.get("diagnose", {}), "diagnose")
    diagnose.validate()
    evaluate = _parse_evaluate(raw.get("evaluate", {}) or {}, variants)
    selected = _parse_run_variants(raw.get("run_variants", []), variants)
    return Params(
        data, mlflow, train, types.MappingProxyType(variants), diagnose, evaluate, seeds, selected
    )


def _parse_run_variants(value: Any, variants: Mapping[str, Variant]) -> tuple[str, ...]:
    """`run_variants`: distinct names of declared variants (empty = all)."""
    expected = "a list of distinct variant names, e.g. [plain20, resnet20]"
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise invalid("run_variants", value, expected)
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in variants:
            raise ConfigError(
                f"run_variants[{i}]: {name!r} is not a declared variant; declared: "
                + ", ".join(variants)
            )
    _check(len(set(value)) == len(value), "run_variants", list(value), expected)
    return tuple(value)


def _parse_evaluate(raw: Any, variants: Mapping[str, Variant]) -> EvaluateConfig:
    _require_mapping(raw, "evaluate")
    _reject_unknown(raw, {"tta", "tta_variants"}, "evaluate")
    tta = _coerce(raw.get("tta", "none"), Tta, "evaluate.tta")
    per_variant = raw.get("tta_variants", {}) or {}
    _require_mapping(per_variant, "evaluate.tta_variants")
    for name in per_variant:
        if name not in variants:
            raise ConfigError(
                f"evaluate.tta_variants.{name}: no such variant; declared: {', '.join(variants)}"
            )
    checked = {
        str(k): _coerce(v, Tta, f"evaluate.tta_variants.{k}") for k, v in per_variant.items()
    }
    return EvaluateConfig(tta, types.MappingProxyType(checked))


def parse_seeds(value: Any) -> tuple[int, ...]:
    """The top-level `seeds` list: distinct integers >= 0, at least one."""
    expected = "a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]"
    if not isinstance(value, list | tuple) or not value:
        raise invalid("seeds", value, expected)
    for i, seed in enumerate(value):
        _check(
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            f"seeds[{i}]",
            seed,
            "an integer >= 0",
        )
    _check(len(set(value)) == len(value), "seeds", list(value), expected)
    return tuple(value)


def _refuse_seed_key(raw: Mapping[str, Any], key: str) -> None:
    # One source of the training seed: a `seed` beside `seeds` would silently lose to it.
    if isinstance(raw, Mapping) and "seed" in raw:
        raise ConfigError(
            f"{key}.seed: the training seed comes from the top-level `seeds` list (each variant "
            "trains once per seed); remove this key and list the seeds there"
        )


def check_batch_fits(variant: Variant, n_train: int) -> None:
    """Refuse a batch larger than the `n_train` training images (every epoch would be a single,
    smaller step than asked for). Called once the training split's size is known."""
    _check(
        variant.train.batch_size <= n_train,
        f"variants.{variant.name}.batch_size",
        variant.train.batch_size,
        f"at most the {n_train} images of the training split",
    )


def _parse_variant(name: str, spec: Any, train_raw: Mapping[str, Any]) -> Variant:
    key = f"variants.{name}"
    _check(
        VARIANT_NAME.fullmatch(name) is not None,
        key,
        name,
        "a name of letters, digits, '_' and '-' (it names files and DVC stages)",
    )
    _require_mapping(spec, key)
    if "model" not in spec:
        raise ConfigError(f"{key}.model: missing; give {{name: <model>, <arguments>...}}")
    model_raw = spec["model"]
    if isinstance(model_raw, str):
        model_raw = {"name": model_raw}
    _require_mapping(model_raw, f"{key}.model")
    if not isinstance(model_raw.get("name"), str):
        raise ConfigError(f"{key}.model.name: missing; name a registered model")
    args = {k: v for k, v in model_raw.items() if k != "name"}
    model = ModelSpec(model_raw["name"], types.MappingProxyType(args))
    if "max_epochs" in spec:
        raise ConfigError(
            f"{key}.max_epochs: not allowed in a variant; train.max_epochs caps every variant"
        )
    overrides = {k: v for k, v in spec.items() if k != "model"}
    _refuse_seed_key(overrides, key)
    merged = _deep_merge(train_raw, overrides)
    train = _build(TrainConfig, merged, key)
    train.validate(key)  # the recipe as written
    capped = cap_epochs(train)
    if capped is not train:
        capped.validate(key)
    return Variant(name, model, capped)


def cap_epochs(train: TrainConfig) -> TrainConfig:
    """`train` shortened to `max_epochs` (unchanged when there is no cap or it is not shorter).

    The schedule is compressed with the run, as milestone fractions already are: epoch-number
    milestones become the same fractions of the run, and the warm-up and a `step` schedule's
    step size keep their share of it. So a capped run goes through the whole recipe, faster.
    """
    cap = train.max_epochs
    if cap == 0 or cap >= train.epochs:
        return train
    share = cap / train.epochs
    return dataclasses.replace(
        train,
        epochs=cap,
        milestones=tuple(m if m < 1 else m / train.epochs for m in train.milestones),
        warmup_epochs=train.warmup_epochs * share,
        step_size=max(1, round(train.step_size * share)),
    )


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking keys and types."""
    _require_mapping(raw, prefix)
    hints = typing.get_type_hints(cls)
    _reject_unknown(raw, {f.name for f in dataclasses.fields(cls)}, prefix)
    return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is Literal:
        allowed = get_args(hint)
        # Typed match: YAML's 1 is not `true`, nor "true" (a string) the boolean.
        ok = any(type(value) is type(a) and value == a for a in allowed)
        _check(
            ok, key, value, ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
        )
        return value
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise invalid(key, value, "a list")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if hint is float:
        # YAML reads "1e-4" (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(
            isinstance(value, int | float) and not isinstance(value, bool), key, value, "a number"
        )
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise invalid(key, value, "a finite number") from None
        # inf and nan pass every comparison a range check makes (or fail it silently).
        _check(math.isfinite(number), key, value, "a finite number")
        return number
    if hint is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # programming error


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    if dataclasses.is_dataclass(obj):
        obj = _plain(obj)
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _require_mapping(value: Any, key: str) -> None:
    if not isinstance(value, Mapping):
        raise invalid(key, value, "a mapping of keys to values")


def _reject_unknown(raw: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; allowed keys{' in ' + prefix if prefix else ''}: "
            + ", ".join(sorted(allowed))
        )


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise invalid(key, value, allowed)


def variant_from_dict(data: Any) -> Variant:
    """The typed `Variant` back from `Variant.to_dict()` (e.g. read from a model file)."""
    _require_mapping(data, "config")
    _reject_unknown(data, {"variant", "model", "train"}, "config")
    for key in ("variant", "model", "train"):
        if key not in data:
            raise ConfigError(f"config.{key}: missing")
    model_raw = data["model"]
    _require_mapping(model_raw, "config.model")
    if not isinstance(model_raw.get("name"), str):
        raise ConfigError("config.model.name: missing")
    args = {k: v for k, v in model_raw.items() if k != "name"}
    train = _build(TrainConfig, data["train"], "config.train")
    train.validate("config.train")
    return Variant(
        str(data["variant"]), ModelSpec(model_raw["name"], types.MappingProxyType(args)), train
    )

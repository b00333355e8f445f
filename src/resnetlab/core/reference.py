"""The parameter reference: every key `params.yaml` may hold, with its type and default (read
from the config dataclasses in `core.config`), the values it allows and its unit and meaning
(`MEANINGS` below). `docs/params.md` is rendered from it when the docs are built, so it cannot
fall behind the code, and `dvc exp run -S`, which rewrites `params.yaml` without its comments,
cannot erase it. `tests/test_params_reference.py` keeps `MEANINGS` and the dataclasses in step
and checks every key of the shipped `params.yaml` is in the reference.

No stage imports this module: it is documentation, not configuration.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from resnetlab.core import config
from resnetlab.core.config import SEED_RULE
from resnetlab.core.depths import BASIC_DEPTHS, MAX_DEPTH
from resnetlab.data.datasets import DATASETS

# key: (meaning, unit or "", allowed values where the type does not say them, or "")
MEANINGS: dict[str, tuple[str, str, str]] = {
    "data.dataset": (
        "The data every stage works on: the CIFAR archives, or a folder of your own images "
        "(docs/datasets.md)",
        "",
        ", ".join(DATASETS),
    ),
    "data.url": (
        "Where an archive dataset is fetched from: empty = its official archive; else a mirror "
        "(http(s)://, file:// or a plain path), e.g. when offline",
        "",
        "empty, or a URL or path",
    ),
    "data.md5": (
        "The archive's checksum; nothing is kept that does not match. Empty = the official "
        "archive's; required with a mirror",
        "",
        "empty, or 32 lowercase hex digits",
    ),
    "data.path": (
        "Folder dataset: the folder of class folders (optionally under train/, val/, test/); "
        "a DVC dependency of prepare",
        "",
        "a folder",
    ),
    "data.image_size": (
        "Folder dataset: the square side its images are resized to at prepare "
        "(the CIFAR nets were designed for 32; ImageNet transfer: 64 and up)",
        "pixels",
        f"8..{config.MAX_IMAGE_SIZE}",
    ),
    "data.val_size": (
        "Archive dataset: training images held out as the validation split, for model "
        "selection (He et al.: 45k train / 5k val)",
        "images",
        "1 .. the archive's training images - 1",
    ),
    "data.val_fraction": (
        "Folder dataset without val/: each class's share of images held out for validation",
        "",
        "(0, 1)",
    ),
    "data.test_fraction": (
        "Folder dataset without test/: each class's share of images held out as the test set",
        "",
        "(0, 1), with val_fraction + test_fraction < 1",
    ),
    "data.seed": ("Seeds the validation split and the subset", "", SEED_RULE),
    "data.subset": (
        "Training images kept after the split, balanced per class; 0 = all (quick runs: 5000)",
        "images",
        "0 or >= 1",
    ),
    "mlflow.experiment": ("The MLflow experiment every stage records into", "", "a name"),
    "seeds": (
        "Training seeds: every variant trains and is evaluated once per seed "
        "(one DVC stage each); the leaderboard reports mean ± std over them",
        "",
        f"distinct integers, each {SEED_RULE}; at least one",
    ),
    "run_variants": (
        "The variants the pipeline runs (DVC's matrix); empty = every declared variant",
        "",
        "names declared under `variants`",
    ),
    "variants": (
        "Declared variants, by name: `model: {name: <registered model>, <its arguments>}` and "
        "any `train` key to override (nested `augment` keys merge)",
        "",
        "names of letters, digits, '_' and '-'",
    ),
    "train.epochs": (
        "Training length (He et al.: 64k iterations of batch 128 on 45k images = 182)",
        "epochs",
        ">= 1",
    ),
    "train.max_epochs": (
        "A cap on every variant's epochs, applied after its own overrides; the schedule shrinks "
        "with the run. 0 = no cap. Quick run: `dvc exp run -S train.max_epochs=2`",
        "epochs",
        "0 or >= 1; only under `train`",
    ),
    "train.batch_size": (
        "Images per optimiser step, summed over all processes",
        "images",
        ">= 1, at most the training images",
    ),
    "train.optimizer": ("The optimiser", "", ""),
    "train.lr": ("Peak learning rate (for `onecycle`: the maximum)", "", "> 0"),
    "train.momentum": ("SGD momentum; for `adamw`, beta1", "", "[0, 1)"),
    "train.nesterov": ("Nesterov momentum", "", "true only with sgd and momentum > 0"),
    "train.weight_decay": (
        "L2 coefficient (sgd) or decoupled weight decay (adamw)",
        "",
        ">= 0",
    ),
    "train.schedule": ("How the learning rate changes over the run", "", ""),
    "train.milestones": (
        "`multistep`: when lr *= gamma; values < 1 are fractions of `epochs` (He et al.: "
        "[0.5, 0.75] of 182 = epochs 91 and 136), values >= 1 epoch numbers",
        "fraction of epochs, or epoch",
        "fractions in (0, 1) or whole epochs below `epochs`",
    ),
    "train.gamma": ("The lr factor at each milestone or step", "", "(0, 1]"),
    "train.step_size": ("`step` schedule: epochs between lr *= gamma", "epochs", ">= 1"),
    "train.warmup_epochs": (
        "Linear warm-up from `warmup_lr` to `lr`; 0 = none",
        "epochs",
        "[0, epochs)",
    ),
    "train.warmup_lr": ("The lr at the first step of the warm-up", "", "> 0"),
    "train.label_smoothing": ("Label smoothing of the cross-entropy", "", "[0, 1)"),
    "train.augment.crop_padding": (
        "Zero padding before the random crop back to the image's size; 0 = no crop",
        "pixels",
        "0..16",
    ),
    "train.augment.flip": (
        "Horizontal flip: true = each image mirrored with probability 1/2 each epoch; "
        "`alternate` = mirrored at random in the first epoch, then every other epoch",
        "",
        "",
    ),
    "train.augment.cutout_size": (
        "Side of each square Cutout hole (DeVries & Taylor: 16 on CIFAR-10, 8 on CIFAR-100); "
        "0 = off",
        "pixels",
        f"0..{config.MAX_IMAGE_SIZE}",
    ),
    "train.augment.cutout_count": ("Cutout holes per image", "holes", ">= 1"),
    "train.augment.rotation": (
        "Maximum rotation, uniform in [-rotation, rotation]; 0 = off",
        "degrees",
        "0..180",
    ),
    "train.augment.channel_shift": (
        "Maximum per-channel brightness shift, uniform in [-x, x]; 0 = off",
        "fraction of 0..255",
        "[0, 1]",
    ),
    "train.seed": (
        "Not settable: the training seed of each run comes from `seeds`",
        "",
        "(refused here)",
    ),
    "train.device": (
        "Where to train: auto = cuda, then mps, then cpu",
        "",
        "auto, cpu, cuda, cuda:N, mps",
    ),
    "train.precision": (
        "auto = bf16 autocast where the device computes bf16 natively; fp16 with loss scaling "
        "on a GPU without it (T4, V100); fp32 elsewhere",
        "",
        "",
    ),
    "train.channels_last": ("NHWC memory format (faster convolutions on tensor cores)", "", ""),
    "train.compile": (
        "torch.compile the training model: auto = on CUDA, and on a CPU training in bf16, for "
        "runs long enough to repay the compilation",
        "",
        "",
    ),
    "train.cuda_graphs": (
        "A compiled model on CUDA also captures forward and backward in CUDA graphs (compile "
        "mode reduce-overhead): auto = unless training under DDP",
        "",
        "",
    ),
    "train.ema_decay": (
        "Exponential moving average of the weights, per step; 0 = off",
        "",
        "0 or (0, 1)",
    ),
    "train.eval_batch_size": (
        "Images per forward pass during validation and test",
        "images",
        ">= 1",
    ),
    "train.checkpoint_every_s": (
        "Write the resume checkpoint after an epoch once this long has passed since the last "
        "write, and after the last epoch; 0 = every epoch. Changes no result: a run resumes "
        "across a change of it",
        "seconds",
        ">= 0",
    ),
    "evaluate.tta": (
        "Test-time augmentation for every variant not in `tta_variants`: flip = 2 views, "
        "flip_translate = 6, flip_grid = 18",
        "",
        "",
    ),
    "evaluate.tta_variants": ("Per-variant exceptions to `tta`", "", "`{<variant>: <tta>}`"),
    "diagnose.gradient_depths": (
        "Depths of the plain and resnet_v1 nets whose per-layer gradient norms at "
        "initialisation the diagnose stage measures; empty = none",
        "layers",
        f"{BASIC_DEPTHS}, at most {MAX_DEPTH}",
    ),
    "diagnose.seed": ("Seeds those nets' weights and the random batch", "", SEED_RULE),
}

# Dataclass fields that are not keys of params.yaml.
INTERNAL = {"recipe_sources"}


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    allowed: str
    unit: str
    meaning: str


_TYPE_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _type_words(hint: Any) -> tuple[str, str]:
    """(type, allowed values it implies) for a field's type hint."""
    if get_origin(hint) is Literal:
        values = [_yaml(v) for v in get_args(hint)]
        kinds = sorted({_TYPE_NAMES[type(v)] for v in get_args(hint)})
        return " or ".join(kinds), ", ".join(values)
    origin = get_origin(hint)
    if origin is tuple:
        return f"list of {_type_words(get_args(hint)[0])[0]}", ""
    if origin in (Mapping, typing.Mapping) or hint is types.MappingProxyType:
        return "mapping", ""
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint))), ""


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _fields(cls: type, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls, vars(config))
    for f in dataclasses.fields(cls):
        if f.name in INTERNAL:
            continue
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{key}.")
        else:
            yield key, hints[f.name], default


def reference() -> list[Row]:
    """Every key, in `params.yaml`'s order of sections."""
    defaults = {"data": config.DataConfig, "mlflow": config.MlflowConfig}
    sections = [*(_fields(cls, f"{name}.") for name, cls in defaults.items())]
    sections.append(_top_level())
    sections += [
        _fields(config.TrainConfig, "train."),
        _fields(config.EvaluateConfig, "evaluate."),
        _fields(config.DiagnoseConfig, "diagnose."),
    ]
    rows = []
    for key, hint, default in (item for section in sections for item in section):
        type_, implied = _type_words(hint)
        meaning, unit, allowed = MEANINGS[key]
        shown = "" if default is None else _yaml(default)
        rows.append(Row(key, type_, shown, allowed or implied, unit, meaning))
    return rows


def _top_level() -> Iterator[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(config.Params, vars(config))
    for f in dataclasses.fields(config.Params):
        if f.name in ("seeds", "run_variants"):
            yield f.name, hints[f.name], f.default
    yield "variants", Mapping[str, Any], None


def markdown() -> str:
    """The reference as a Markdown table."""
    lines = [
        "| key | type | default | allowed | unit | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in reference():
        cells = [f"`{r.key}`", r.type, f"`{r.default}`" if r.default else "", r.allowed]
        lines.append("| " + " | ".join([*cells, r.unit, r.meaning]).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"

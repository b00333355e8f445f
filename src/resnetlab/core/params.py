"""Reading `params.yaml` into the dataclasses of `core.config`, validating every key on the way.

Every other module takes these objects (or plain arguments) and never reads YAML itself. A bad value
stops the program before any work, with a message naming the key, the value and what is allowed.
A variant's training config is `train` deep-merged with the variant's overrides; its training
seed (weights, batch order, augmentation) is one of `seeds`, given per run (`Variant.with_seed`).
The validation split and the subset stay tied to `data.seed`, so every seed sees the same images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from resnetlab.core.config import (
    MAX_SEED,
    SEED_RULE,
    VARIANT_NAME,
    DataConfig,
    DiagnoseConfig,
    EvaluateConfig,
    MlflowConfig,
    ModelSpec,
    Params,
    RecipeSource,
    TrainConfig,
    Tta,
    Variant,
    is_seed,
    plain,
    require,
)
from resnetlab.core.errors import ConfigError, invalid
from resnetlab.core.jsonio import UnreadableFile, read_bounded

# The shipped params.yaml is ~10 KB; a file beyond this is not one (or is /dev/zero).
MAX_PARAMS_BYTES = 1 << 20


def load_params(path: str | Path) -> Params:
    """Read and validate `params.yaml`. Raises ConfigError with the offending key."""
    path = Path(path)
    try:
        text = read_bounded(path, MAX_PARAMS_BYTES).decode()
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: {exc}; expected a params.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected a params.yaml") from None
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
    parsed = {
        str(name): _parse_variant(str(name), spec, train_raw) for name, spec in variants_raw.items()
    }
    variants = {name: variant for name, (variant, _) in parsed.items()}
    if data.subset:
        # The training split is exactly `data.subset` images: known before any data is read.
        for variant in variants.values():
            check_batch_fits(variant, data.subset)
    diagnose = _build(DiagnoseConfig, raw.get("diagnose", {}), "diagnose")
    diagnose.validate()
    evaluate = _parse_evaluate(raw.get("evaluate", {}) or {}, variants)
    selected = _parse_run_variants(raw.get("run_variants", []), variants)
    sources = types.MappingProxyType({name: source for name, (_, source) in parsed.items()})
    return Params(
        data,
        mlflow,
        train,
        types.MappingProxyType(variants),
        diagnose,
        evaluate,
        seeds,
        selected,
        sources,
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
    require(len(set(value)) == len(value), "run_variants", list(value), expected)
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
    """The top-level `seeds` list: distinct integers in 0..MAX_SEED, at least one."""
    expected = f"a non-empty list of distinct integers in 0..{MAX_SEED}, e.g. [0, 1, 2]"
    if not isinstance(value, list | tuple) or not value:
        raise invalid("seeds", value, expected)
    for i, seed in enumerate(value):
        require(is_seed(seed), f"seeds[{i}]", seed, SEED_RULE)
    require(len(set(value)) == len(value), "seeds", list(value), expected)
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
    require(
        variant.train.batch_size <= n_train,
        f"variants.{variant.name}.batch_size",
        variant.train.batch_size,
        f"at most the {n_train} images of the training split",
    )


def _parse_variant(
    name: str, spec: Any, train_raw: Mapping[str, Any]
) -> tuple[Variant, RecipeSource]:
    key = f"variants.{name}"
    require(
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
    shortened = tuple(
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(capped, f.name) != getattr(train, f.name)
    )
    return Variant(name, model, capped), RecipeSource(tuple(overrides), shortened)


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
        require(
            ok, key, value, ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
        )
        return value
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise invalid(key, value, "a list")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        require(isinstance(value, bool), key, value, "true or false")
        return value
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if hint is float:
        # YAML reads "1e-4" (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        require(
            isinstance(value, int | float) and not isinstance(value, bool), key, value, "a number"
        )
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise invalid(key, value, "a finite number") from None
        # inf and nan pass every comparison a range check makes (or fail it silently).
        require(math.isfinite(number), key, value, "a finite number")
        return number
    if hint is str:
        require(isinstance(value, str), key, value, "a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # programming error


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    if dataclasses.is_dataclass(obj):
        obj = plain(obj)
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

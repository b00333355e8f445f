"""One registry for every model, so a variant in ``params.yaml`` is a name plus its arguments.

Builders are plain functions registered with :func:`register_model`. :func:`build_model` checks
the arguments against the builder's signature before calling it, so an unknown or missing
argument fails with the list of accepted ones; the builders validate the values themselves with
the ``check_*`` helpers below or :func:`resnetlab.core.errors.invalid`. Every message names the
argument as ``<model>.<arg>``, the key shape of :mod:`resnetlab.core.config`'s messages::

    resnet_v1.width: 0 is not allowed; expected an integer >= 1
    resnet_v1.foo: unknown argument; accepted: depth (required), shortcut='A', ...
    resnet_v1.depth: missing required argument; accepted: depth (required), shortcut='A', ...
    resnet_v1.num_classes: missing required argument; it is the data's number of classes (...)

Every builder takes ``num_classes`` as a required keyword-only argument: no model assumes a
dataset's class count (training and loading a model file pass the data's, through
:func:`build_model_for`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from resnetlab.core.errors import ConfigError, invalid

__all__ = [
    "build_model",
    "build_model_for",
    "check_bool",
    "check_choice",
    "check_positive_int",
    "count_parameters",
    "list_models",
    "model_depth",
    "register_model",
]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    # None: the depth is an argument (CIFAR nets); otherwise the fixed nominal depth.
    depth: int | None


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, depth: int | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``name``; registering a name twice raises :class:`ConfigError`.

    ``depth`` is the nominal depth reported by :func:`model_depth` for models whose depth is not
    an argument (e.g. 18 for ``resnet18``); leave it ``None`` when the builder takes ``depth``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            previous = _REGISTRY[name].builder
            raise ConfigError(
                f"model {name!r} is already registered "
                f"(by {previous.__module__}.{previous.__qualname__})"
            )
        if depth is None and "depth" not in inspect.signature(builder).parameters:
            raise ConfigError(f"model {name!r}: give depth= or make 'depth' an argument")
        _REGISTRY[name] = _Entry(builder=builder, depth=depth)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise invalid("model", name, f"one of {', '.join(list_models())}")
    return _REGISTRY[name]


def _describe_arguments(builder: Callable[..., nn.Module]) -> str:
    parts = []
    for param in inspect.signature(builder).parameters.values():
        if param.default is inspect.Parameter.empty:
            parts.append(f"{param.name} (required)")
        else:
            parts.append(f"{param.name}={param.default!r}")
    return ", ".join(parts)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``kwargs``.

    Raises :class:`ConfigError` for an unknown name (listing the registered ones), an unknown or
    missing argument (listing the accepted ones) or an invalid value (saying what is allowed).
    Every builder requires ``num_classes``, which no model assumes: it is the data's number of
    classes (:func:`build_model_for` sets it from them).
    """
    entry = _entry(name)
    params = inspect.signature(entry.builder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not accepts_any:
        raise ConfigError(
            f"{', '.join(f'{name}.{arg}' for arg in unknown)}: "
            f"unknown argument{'s' if len(unknown) > 1 else ''}; "
            f"accepted: {_describe_arguments(entry.builder)}"
        )
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in kwargs
        and p.name != "num_classes"  # reported on its own below: it comes from the data
    ]
    if missing:
        raise ConfigError(
            f"{', '.join(f'{name}.{arg}' for arg in missing)}: "
            f"missing required argument{'s' if len(missing) > 1 else ''}; "
            f"accepted: {_describe_arguments(entry.builder)}"
        )
    if "num_classes" in params and "num_classes" not in kwargs:
        raise ConfigError(
            f"{name}.num_classes: missing required argument; it is the data's number of classes "
            "(build_model_for sets it from the data's classes)"
        )
    return entry.builder(**kwargs)


def build_model_for(name: str, args: dict[str, Any], classes: Sequence[str]) -> nn.Module:
    """`build_model(name, **args)` with a head of one output per class of `classes`: the data's
    (a prepared folder's `meta.json`, a model file's record) decide the number of outputs, not
    the variant. `args` may name `num_classes` only if it agrees."""
    declared = args.get("num_classes", len(classes))
    if declared != len(classes):
        raise ConfigError(
            f"{name}.num_classes: {declared!r} is not allowed; the data has {len(classes)} "
            "classes, which set it: leave it out"
        )
    return build_model(name, **{**args, "num_classes": len(classes)})


def model_depth(name: str, kwargs: dict[str, Any]) -> int:
    """Nominal depth for the leaderboard: ``kwargs["depth"]`` for CIFAR nets, else fixed (18...)."""
    entry = _entry(name)
    if entry.depth is not None:
        return entry.depth
    if "depth" not in kwargs:
        raise ConfigError(f"{name}.depth: missing required argument")
    return int(kwargs["depth"])


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen alike (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


# --- value checks shared by the builders -------------------------------------------------------


def check_positive_int(model: str, arg: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools and floats (YAML ``1.0``) are rejected."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(f"{model}.{arg}", value, f"an integer >= {minimum}")
    return value


def check_bool(model: str, arg: str, value: Any) -> bool:
    """``value`` as a bool; strings such as ``"false"`` are rejected rather than read as true."""
    if not isinstance(value, bool):
        raise invalid(f"{model}.{arg}", value, "true or false")
    return value


def check_choice(model: str, arg: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise invalid(f"{model}.{arg}", value, f"one of {', '.join(repr(a) for a in allowed)}")
    return value

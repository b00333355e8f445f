"""`published.yaml`, the published numbers and claims the compare stage checks measurements
against: its format, read and validated into typed records (`report.published` compares them).

The citations (`sources`) are shared; `results` and `claims` are per dataset (a key of
:data:`resnetlab.data.datasets.DATASETS`), and :meth:`PublishedFile.for_dataset` gives one
dataset's. Every problem in the file is one line naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.datasets import DATASETS

T = TypeVar("T")

# Metrics a published number or a claim may name: (leaderboard/run column, higher is better).
# `final_train_error` is the training error of a run's last epoch (He et al.'s Fig. 6 curves).
METRICS = {
    "test_error": ("test_error", False),
    "test_accuracy": ("test_accuracy", True),
    "final_train_error": ("final_train_error", False),
}


class PublishedError(ResnetlabError):
    """The published-numbers file is missing or malformed; the message names the entry."""


@dataclass(frozen=True)
class Published:
    variant: str
    source: str  # a key of `sources`
    where: str  # table or figure in the source
    metric: str  # a key of METRICS
    value: float  # percent
    pm: float | None  # the source's own ± (percent), where given
    epochs: int | None  # the source's training budget
    train_images: int | None
    differs: str | None  # a known difference besides the budget (architecture, protocol)


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    source: str
    where: str
    metric: str
    higher: str  # the variant whose metric the claim says is higher
    lower: str


@dataclass(frozen=True)
class PublishedNumbers:
    """One dataset's published numbers and claims, with the file's citations."""

    dataset: str  # a key of DATASETS
    sources: Mapping[str, str]  # key -> full citation
    results: tuple[Published, ...]
    claims: tuple[Claim, ...]

    @property
    def empty(self) -> bool:
        """Whether the file gives this dataset nothing to compare with."""
        return not self.results and not self.claims


@dataclass(frozen=True)
class PublishedFile:
    sources: Mapping[str, str]  # key -> full citation
    results: Mapping[str, tuple[Published, ...]]  # dataset key -> its published numbers
    claims: Mapping[str, tuple[Claim, ...]]  # dataset key -> its claims

    def for_dataset(self, dataset: str) -> PublishedNumbers:
        """The numbers and claims of `dataset`; none (empty) where the file gives it none."""
        return PublishedNumbers(
            dataset, self.sources, self.results.get(dataset, ()), self.claims.get(dataset, ())
        )


def _field(entry: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PublishedError(f"{where}.{key}: {value!r} is not allowed; expected {kind}")
    return value


def _sections(raw: Mapping[str, Any], key: str, name: str) -> dict[str, list]:
    """`raw[key]` checked as a mapping of dataset key -> list of entries (absent: none)."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PublishedError(
            f"{name}: {key}: expected a mapping of dataset -> list (e.g. cifar10: [...]), "
            f"got {type(value).__name__}"
        )
    sections = {}
    for dataset, entries in value.items():
        if dataset not in DATASETS:
            raise PublishedError(
                f"{name}: {key}.{dataset}: not a dataset; expected one of {', '.join(DATASETS)}"
            )
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise PublishedError(
                f"{name}: {key}.{dataset}: expected a list, got {type(entries).__name__}"
            )
        sections[dataset] = entries
    return sections


def load_published(path: Path) -> PublishedFile:
    """Read and check the published-numbers file: `sources` (key -> `cite`), and `results` and
    `claims`, each a mapping of dataset key -> list (one dataset's:
    :meth:`PublishedFile.for_dataset`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PublishedError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PublishedError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise PublishedError(f"{path}: expected a mapping with sources, results, claims")
    sources = raw.get("sources") or {}
    if not isinstance(sources, Mapping):
        raise PublishedError(f"{path}: sources: expected a mapping of key -> citation")
    sources = {str(k): _field(v, "cite", f"sources.{k}", str) for k, v in sources.items()}

    def source_of(entry: Mapping[str, Any], where: str) -> str:
        key = _field(entry, "source", where, str)
        if key not in sources:
            raise PublishedError(f"{where}.source: {key!r} is not a key of sources")
        return key

    def metric_of(entry: Mapping[str, Any], where: str) -> str:
        metric = _field(entry, "metric", where, str)
        if metric not in METRICS:
            raise PublishedError(f"{where}.metric: {metric!r}; expected {', '.join(METRICS)}")
        return metric

    def result(entry: Mapping[str, Any], where: str) -> Published:
        pm = entry.get("pm")
        return Published(
            variant=_field(entry, "variant", where, str),
            source=source_of(entry, where),
            where=str(entry.get("where", "")),
            metric=metric_of(entry, where),
            value=float(_field(entry, "value", where, (int, float))),
            pm=None if pm is None else float(_field(entry, "pm", where, (int, float))),
            epochs=entry.get("epochs"),
            train_images=entry.get("train_images"),
            differs=entry.get("differs"),
        )

    def claim(entry: Mapping[str, Any], where: str) -> Claim:
        return Claim(
            name=_field(entry, "name", where, str),
            statement=_field(entry, "statement", where, str),
            source=source_of(entry, where),
            where=str(entry.get("where", "")),
            metric=metric_of(entry, where),
            higher=_field(entry, "higher", where, str),
            lower=_field(entry, "lower", where, str),
        )

    def section(key: str, read: Callable[[Mapping[str, Any], str], T]) -> dict[str, tuple[T, ...]]:
        """`key`'s lists, one per dataset, each entry a mapping read by `read`."""
        out = {}
        for dataset, entries in _sections(raw, key, path.name).items():
            rows = []
            for i, entry in enumerate(entries):
                where = f"{path.name}: {key}.{dataset}[{i}]"
                if not isinstance(entry, Mapping):
                    raise PublishedError(f"{where}: expected a mapping")
                rows.append(read(entry, where))
            out[dataset] = tuple(rows)
        return out

    return PublishedFile(sources, section("results", result), section("claims", claim))

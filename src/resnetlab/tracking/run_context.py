"""What places and describes a training run in MLflow: its group (parent run), a one-line
description of the model and recipe, and the data it trained on as an MLflow dataset input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from resnetlab.tracking.lineage import Lineage

if TYPE_CHECKING:
    from resnetlab.core.config import DataConfig, Variant
    from resnetlab.data.prepared import Prepared
    from resnetlab.train.trainer import Trainer


@dataclass(frozen=True)
class DatasetInfo:
    """The prepared data a run trained on, as MLflow's dataset input: a digest of the arrays,
    a name, where it came from, and the split sizes (its profile)."""

    name: str
    digest: str
    source: str  # the archive's URL, or the folder the data was read from
    splits: Mapping[str, int]


@dataclass(frozen=True)
class RunContext:
    """What places and describes a training run: its group (parent run), a one-line
    description, and the data it trained on (None when unknown, as for `resnetlab relog`)."""

    lineage: Lineage
    description: str = ""
    dataset: DatasetInfo | None = None


def describe_run(model: Mapping[str, Any], recipe: str, data: str) -> str:
    """The run description: one line naming the model, the recipe's source (`RecipeSource`)
    and the data."""
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    return f"model {model.get('name')}({args}) · recipe: {recipe} · data: {data}"


def dataset_input(dataset: DatasetInfo) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    kind = urlparse(dataset.source).scheme
    entity = Dataset(
        name=dataset.name,
        digest=dataset.digest,
        source_type="http" if kind in ("http", "https") else "local",
        source=json.dumps({"url": dataset.source}),
        profile=json.dumps({f"{k}_images": v for k, v in dataset.splits.items()}),
    )
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])


def dataset_of(data: Prepared, data_dir: Path, config: DataConfig | None) -> DatasetInfo:
    """The training data as an MLflow dataset: SHA-256 over the train and val arrays (the test
    split is not loaded for training; meta.json, also hashed, holds its counts and class
    statistics)."""
    meta = Path(data_dir) / "meta.json"
    digest = hashlib.sha256(meta.read_bytes())
    for split in ("train", "val"):
        digest.update(data.images[split].tobytes())
        digest.update(data.labels[split].tobytes())
    counts = json.loads(meta.read_text()).get("counts", {})
    splits = {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
    if config is None:
        source = str(Path(data_dir).resolve())
    elif config.source is not None:
        source = config.archive_source()[0]
    else:
        source = str(Path(config.path).resolve())
    name = (
        data.dataset if not config or not config.subset else f"{data.dataset}-subset{config.subset}"
    )
    return DatasetInfo(name, digest.hexdigest()[:16], source, splits)


def data_words(dataset: DatasetInfo, config: DataConfig | None) -> str:
    """The data part of a run's description: `45000 train / 5000 val images (subset ...)`."""
    words = f"{dataset.splits['train']} train / {dataset.splits['val']} val images"
    if config is not None and config.subset:
        words += f" (subset {config.subset}, seed {config.seed})"
    return words


@dataclass(frozen=True)
class TrainingDescription:
    """What the train stage records about a run before it starts: MLflow params and tags, its
    context, and for the console where it runs and what `auto` resolved to."""

    params: dict[str, Any]
    tags: dict[str, str]
    context: RunContext
    where: str  # the device, or for a leased run which GPU or CPU cores
    resolved: str  # e.g. `precision bf16, compile True`


def describe_training(
    trainer: Trainer,
    variant: Variant,
    data_dir: Path,
    data_config: DataConfig | None,
    params_file: Path | None,
    recipe: str,
) -> TrainingDescription:
    """The params (the resolved config, parameter count, seed, what precision/compile `auto`
    resolved to on this machine, the `data` params), tags and context of `trainer`'s run."""
    from resnetlab.core.params import flatten
    from resnetlab.tracking.lineage import lineage, training_tags

    seed = variant.train.seed
    params = {**flatten(variant.to_dict()), "parameters": trainer.parameters, "seed": seed}
    params.update({f"resolved.{k}": v for k, v in trainer.resolved.items()})
    if data_config is not None:
        params.update(flatten({"data": dataclasses.asdict(data_config)}))
    where = str(trainer.device if trainer.dist.enabled else trainer.placement.describe())
    tags = training_tags(variant.name, where, trainer.dist.world, seed)
    dataset = dataset_of(trainer.data, data_dir, data_config)
    words = data_words(dataset, data_config)
    description = describe_run(variant.model.to_dict(), recipe, words)
    context = RunContext(lineage(params_file), description, dataset)
    resolved = ", ".join(f"{k} {v}" for k, v in trainer.resolved.items())
    return TrainingDescription(params, tags, context, where, resolved)

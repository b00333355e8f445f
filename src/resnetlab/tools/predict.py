"""`resnetlab predict (--variant NAME | --model-uri URI) IMAGE...`: classify image files.

Any image PIL opens (PNG, JPEG, ...), of any size, is converted to RGB and resized to the side
of the images the model learnt from (its record's `image_size`: 32 for CIFAR), exactly as
`prepare` reads a folder dataset. Prints one line per image with its top-k classes, most
probable first: `cat.png: cat 91.2%, dog 6.0%, frog 1.1%`; with --json, a JSON list instead. A
file that cannot be read as an image is reported on stderr, the others are still classified, and
the exit status is 1.

--variant loads `<models-dir>/<NAME>/seed<K>/model.pt`, the train stage's output for training
seed K (--seed; by default the lowest seed trained). --model-uri loads the model the train stage
logged to MLflow (e.g. `models:/resnetlab-<variant>/<version>` or `runs:/<run id>/<variant>`);
its class names and input size come from the model's MLflow metadata (a model logged without
them is a CIFAR-10 model).
Only the format the train stage logs is loaded (pt2, no code paths; `tracking.logged_model`): a
model folder that would unpickle or import its own code is refused before anything of it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.layout import MODEL_FILE, MODELS, first_seed_folder, run_folder
from resnetlab.evaluate.images import format_prediction, load_image, predict

MAX_TOP_K = 10


def _top_k(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= k <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"{k} is outside 1..{MAX_TOP_K}")
    return k


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--variant",
        metavar="NAME",
        help="a trained variant: loads <models-dir>/<NAME>/seed<K>/model.pt",
    )
    source.add_argument(
        "--model-uri",
        metavar="URI",
        help="an MLflow model URI, e.g. models:/resnetlab-resnet56/1 or runs:/<run id>/resnet56",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=MODELS,
        metavar="DIR",
        help="the train stage's output folder, as in dvc.yaml (default: models)",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="K",
        help="with --variant: the training seed's model (default: the lowest seed trained)",
    )
    p.add_argument(
        "--top-k",
        type=_top_k,
        default=3,
        metavar="K",
        help=f"classes shown per image, 1..{MAX_TOP_K}",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)"
    )


def run(args: argparse.Namespace) -> None:
    model, classes, size = _load(args)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    failed: list[tuple[str, str]] = []  # (path, why)
    for path in args.images:
        try:
            arrays.append(load_image(path, size=size))
            names.append(str(path))
        except ResnetlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append((str(path), str(exc)))

    predictions = predict(model, classes, names, arrays, args.top_k) if arrays else []
    if args.json:
        entries = [
            {"image": p.image, "top": [{"class": c, "probability": round(q, 6)} for c, q in p.top]}
            for p in predictions
        ]
        entries += [{"image": name, "error": why} for name, why in failed]
        print(json.dumps(entries, indent=2))
    else:
        for p in predictions:
            print(format_prediction(p))

    if failed:
        # Raised after the good results are out: the CLI turns it into one line and exit 1.
        raise ResnetlabError(
            f"{len(failed)} of {len(args.images)} files could not be classified: "
            + ", ".join(name for name, _ in failed)
        )


def _model_file(models_dir: Path, variant: str, seed: int | None) -> Path:
    """`<models_dir>/<variant>/seed<seed>/model.pt`; without a seed, the lowest trained one's."""
    if seed is not None:
        return run_folder(models_dir, variant, seed) / MODEL_FILE
    folder = first_seed_folder(models_dir / variant, MODEL_FILE)
    return (folder or run_folder(models_dir, variant, 0)) / MODEL_FILE


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Sequence[str], int]:
    """The model, its class names and the side of the images it takes."""
    if args.variant is not None:
        from resnetlab.evaluate.classifier import load_classifier

        model, record = load_classifier(_model_file(args.models_dir, args.variant, args.seed))
        return model, list(record.classes), record.image_size
    from resnetlab.tracking import logged_model

    # Never mlflow.pytorch.load_model: it unpickles and imports what a model folder brings.
    return logged_model.load_uri(args.model_uri)

"""`resnetlab predict (--variant NAME | --model-uri URI) IMAGE...`: classify image files.

Any image PIL opens (PNG, JPEG, ...), of any size, is converted to RGB and resized to 32x32, like
the CIFAR-10 images the models learnt from. Prints one line per image with its top-k classes, most
probable first: `cat.png: cat 91.2%, dog 6.0%, frog 1.1%`; with --json, a JSON list instead. A
file that cannot be read as an image is reported on stderr, the others are still classified, and
the exit status is 1.

--variant loads `<models-dir>/<NAME>/model.pt`, the train stage's output. --model-uri loads the
model the train stage logged to MLflow (e.g. `runs:/<run id>/model`); its class names come from the
model's MLflow metadata (CIFAR-10's ten classes, in label order, for a model logged without them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.errors import ResnetlabError

# CIFAR-10's label names in label order (the archive's `batches.meta`). Only a fallback for
# `--model-uri` models logged without class names in their metadata.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SIZE = 32
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
        "--variant", metavar="NAME", help="a trained variant: loads <models-dir>/<NAME>/model.pt"
    )
    source.add_argument(
        "--model-uri", metavar="URI", help="an MLflow model URI, e.g. runs:/<run id>/model"
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="the train stage's output folder, as in dvc.yaml (default: models)",
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


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


def run(args: argparse.Namespace) -> None:
    model, classes = _load(args)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    failed: list[tuple[str, str]] = []  # (path, why)
    for path in args.images:
        try:
            arrays.append(load_image(path))
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


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Sequence[str]]:
    if args.variant is not None:
        from resnetlab.inference import load_classifier

        model, record = load_classifier(args.models_dir / args.variant / "model.pt")
        return model, list(record.classes)
    from resnetlab import tracking

    model, classes = tracking.load_logged_model(args.model_uri)
    # A model logged without class names in its metadata: assume CIFAR-10's label order.
    return model, classes or CIFAR10_CLASSES


def load_image(path: Path) -> np.ndarray:
    """The image at `path` as float32 in [0, 1], 3 x 32 x 32 (RGB, CHW), what `Classifier` takes.

    Raises ResnetlabError naming the file if it is missing or not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            # Cameras store portrait photos sideways with an EXIF orientation tag; upright is
            # how the network saw its training images.
            upright = ImageOps.exif_transpose(img)
            # convert() first: palette, greyscale and RGBA images all become 3-channel RGB.
            # Pillow's bilinear resize widens its kernel when shrinking, so a large photo is
            # averaged down (antialiased) rather than sampled into aliasing noise.
            small = upright.convert("RGB").resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR
            )
    except FileNotFoundError:
        raise ResnetlabError(f"{path}: not an image (no such file)") from None
    except UnidentifiedImageError:
        raise ResnetlabError(f"{path}: not an image (unknown or unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # A directory, an unreadable file, a truncated or corrupt image, an absurd size.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResnetlabError(f"{path}: not an image ({reason})") from None
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


def predict(
    model: torch.nn.Module,
    classes: Sequence[str],
    names: Sequence[str],
    images: Sequence[np.ndarray],
    top_k: int,
) -> list[Prediction]:
    """Classify all `images` (3 x 32 x 32, [0, 1]) in one batch; the `top_k` classes of each."""
    batch = torch.from_numpy(np.stack(images))
    # Both loaders return CPU models, and a handful of images does not repay starting a GPU.
    with torch.no_grad():
        logits = model(batch)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise ResnetlabError(
            f"the model returns outputs of shape {tuple(logits.shape)}, "
            f"expected (N, {len(classes)}) for the classes {', '.join(classes)}"
        )
    probs, indices = torch.softmax(logits.float(), dim=1).topk(min(top_k, len(classes)), dim=1)
    return [
        Prediction(
            name, [(classes[i], p) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)]
        )
        for name, row_p, row_i in zip(names, probs, indices, strict=True)
    ]


def format_prediction(p: Prediction) -> str:
    return f"{p.image}: " + ", ".join(f"{c} {100 * q:.1f}%" for c, q in p.top)

"""Classifying image files with a trained network: the one preprocessing path (any image PIL
opens, any size, RGB/RGBA/greyscale -> 32 x 32 RGB in [0, 1], as the CIFAR-10 images the models
learnt from) and top-k predictions. Used by `resnetlab predict` and the web app (`resnetlab app`),
which hands over uploaded bytes as a stream: both go through `load_image`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


def load_image(path: Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """The image at `path` (a file, or a binary stream such as an upload) as float32 in [0, 1],
    3 x 32 x 32 (RGB, CHW), what `Classifier` takes.

    Raises ResnetlabError naming the file (`name`, else `path`) if it is missing or not a
    readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name if name is not None else str(path)
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
        raise ResnetlabError(f"{label}: not an image (no such file)") from None
    except UnidentifiedImageError:
        raise ResnetlabError(f"{label}: not an image (unknown or unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # A directory, an unreadable file, a truncated or corrupt image, an absurd size.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResnetlabError(f"{label}: not an image ({reason})") from None
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

"""Classifying image files with a trained network: the preprocessing (any image PIL opens, any
size, RGB/RGBA/greyscale/16-bit -> S x S RGB in [0, 1], S the side of the images the model
learnt from: its record's or its logged metadata's `image_size`) and top-k predictions. Used by
`resnetlab predict` and the web app (`resnetlab app`), which hands over uploaded bytes as a
stream: both go through `load_image`.

The decoding itself (the pixel budget, EXIF orientation, how each mode's range is scaled, the
resize) is `data/decode.py`'s, the one path `prepare` also reads a folder dataset through, so an
image trained on and the same file classified here see the same pixel values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.decode import MAX_PIXELS, decode_image

__all__ = ["MAX_PIXELS", "Prediction", "format_prediction", "load_image", "predict"]


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


def load_image(path: Path | BinaryIO, name: str | None = None, *, size: int) -> np.ndarray:
    """The image at `path` (a file, or a binary stream such as an upload) as float32 in [0, 1],
    3 x `size` x `size` (RGB, CHW), what `Classifier` takes.

    Raises ResnetlabError naming the file (`name`, else `path`) if it is missing, not a readable
    image, or larger than `MAX_PIXELS`.
    """
    return np.ascontiguousarray(decode_image(path, size, name).transpose(2, 0, 1))


def predict(
    model: torch.nn.Module,
    classes: Sequence[str],
    names: Sequence[str],
    images: Sequence[np.ndarray],
    top_k: int,
) -> list[Prediction]:
    """Classify all `images` (3 x S x S, [0, 1]) in one batch; the `top_k` classes of each."""
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

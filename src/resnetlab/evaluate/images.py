"""Classifying image files with a trained network: the one preprocessing path (any image PIL
opens, any size, RGB/RGBA/greyscale -> 32 x 32 RGB in [0, 1], as the CIFAR-10 images the models
learnt from) and top-k predictions. Used by `resnetlab predict` and the web app (`resnetlab app`),
which hands over uploaded bytes as a stream: both go through `load_image`.

Pixel values are scaled by the range the image's mode really has, not squeezed through 8 bits:

- 8-bit modes (RGB, RGBA, L, P, 1, CMYK, ...): value / 255;
- 16-bit greyscale (I;16, I;16B, ...): value / 65535;
- 32-bit integer greyscale (I; older Pillows open 16-bit PNGs so): value / 65535 when
  every value fits in 16 bits, else value / the image's maximum;
- floating point greyscale (F, e.g. a float TIFF): the values as given when they lie in [0, 1],
  else value / the image's maximum;

negative and non-finite values count as 0. An image of more than `MAX_PIXELS` pixels is refused
from its header, before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.cifar10 import IMAGE_SIZE

if TYPE_CHECKING:
    from PIL import Image

# Decoding a 50-megapixel image takes 150 MB to 200 MB as RGB (four times that in float); a
# header claiming more is refused before decoding. Pillow's own guard is 89 megapixels (a
# warning) and 179 (an error).
MAX_PIXELS = 50_000_000
# Greyscale modes with more than 8 bits; Pillow's convert("RGB") would clip them at 255.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


def load_image(path: Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """The image at `path` (a file, or a binary stream such as an upload) as float32 in [0, 1],
    3 x 32 x 32 (RGB, CHW), what `Classifier` takes.

    Raises ResnetlabError naming the file (`name`, else `path`) if it is missing, not a readable
    image, or larger than `MAX_PIXELS`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name if name is not None else str(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns of a possible decompression bomb above 89 megapixels; the budget
            # below refuses such images anyway, with a message naming the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            # Image.open reads only the header: the size is known before any pixel is decoded.
            _check_budget(label, *img.size)
            # Cameras store portrait photos sideways with an EXIF orientation tag; upright is
            # how the network saw its training images.
            upright = ImageOps.exif_transpose(img)
            if upright.mode in _WIDE_MODES:
                return _wide_greyscale(upright)
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
    except Image.DecompressionBombError:
        # Above twice Pillow's limit, Image.open itself refuses, before our check sees the size.
        raise ResnetlabError(_over_budget(label, "more than 179 megapixels")) from None
    except (OSError, ValueError) as exc:
        # A directory, an unreadable file, a truncated or corrupt image.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResnetlabError(f"{label}: not an image ({reason})") from None
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _check_budget(path: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ResnetlabError(_over_budget(path, f"{width} x {height} pixels"))


def _over_budget(path: str, size: str) -> str:
    return (
        f"{path}: {size}, above the budget of {MAX_PIXELS / 1e6:g} megapixels; not decoded "
        "(shrink it first: the network sees 32 x 32 pixels)"
    )


def _wide_greyscale(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit or float greyscale image as 3 x 32 x 32 in [0, 1] (rules: module doc)."""
    from PIL import Image

    values = np.asarray(img, dtype=np.float32)
    values = np.nan_to_num(np.maximum(values, 0.0), nan=0.0, posinf=0.0)
    top = float(values.max(initial=0.0))
    if img.mode.startswith("I;16") or (img.mode == "I" and top <= 65535):
        scale = 65535.0
    else:
        scale = top if top > 1.0 else 1.0  # F in [0, 1]: as given
    grey = Image.fromarray((values / scale).astype(np.float32))  # mode F
    small = np.asarray(grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
    return np.repeat(np.clip(small, 0.0, 1.0)[None], 3, axis=0).astype(np.float32)


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

"""Decoding one image file into the pixels a network sees: the one path shared by `prepare` (a
folder dataset, `data/folder.py`), `resnetlab predict` and the web app (`evaluate/images.py`), so
an image prepared for training and the same file classified later give the same pixel values.

Any image Pillow opens, any size: `decode_image` returns float32 `size x size x 3` (RGB, HWC) in
[0, 1]; `decode_uint8` returns that as uint8, `round(x * 255)`, what `prepare` stores (for an
8-bit image exactly its resized 8-bit values). Steps: the header's pixel count is checked before
any pixel is decoded; the EXIF orientation is applied; the image is resized bilinearly (Pillow
widens the kernel when shrinking, so a large photo is averaged down, not aliased).

Pixel values are scaled by the range the image's mode really has, not squeezed through 8 bits:

- 8-bit modes (RGB, RGBA, L, P, 1, CMYK, ...): value / 255; every mode but RGB is converted to
  RGB first (alpha dropped, palette looked up, greyscale repeated);
- 16-bit greyscale (I;16, I;16B, ...): value / 65535;
- 32-bit integer greyscale (I; older Pillows open 16-bit PNGs so): value / 65535 when
  every value fits in 16 bits, else value / the image's maximum;
- floating point greyscale (F, e.g. a float TIFF): the values as given when they lie in [0, 1],
  else value / the image's maximum;

negative and non-finite values count as 0. An image of more than `MAX_PIXELS` pixels is refused
from its header, before any pixel is decoded (`ImageTooLarge`); `check_header` makes that check,
and finds files Pillow cannot identify, without decoding anything. Every failure is a one-line
ResnetlabError naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from resnetlab.core.errors import ResnetlabError

if TYPE_CHECKING:
    from PIL import Image

# Decoding a 50-megapixel image takes 150 MB to 200 MB as RGB (four times that in float); a
# header claiming more is refused before decoding. Pillow's own guard is 89 megapixels (a
# warning) and 179 (an error).
MAX_PIXELS = 50_000_000
# Greyscale modes with more than 8 bits; Pillow's convert("RGB") would clip them at 255.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageTooLarge(ResnetlabError):
    """An image whose header claims more than `MAX_PIXELS` pixels; nothing of it was decoded."""


def decode_image(source: Path | BinaryIO, size: int, name: str | None = None) -> np.ndarray:
    """The image at `source` (a file, or a binary stream such as an upload) as float32 in [0, 1],
    `size x size x 3` (RGB, HWC), by the rules of the module docstring.

    Raises ResnetlabError naming the file (`name`, else `source`) if it is missing, not a
    readable image, or larger than `MAX_PIXELS` (`ImageTooLarge`).
    """
    from PIL import Image, ImageOps

    with _opened(source, name, size) as img:
        # Cameras store portrait photos sideways with an EXIF orientation tag; upright is how
        # the network sees its training images.
        upright = ImageOps.exif_transpose(img)
        if upright.mode in WIDE_MODES:
            return _wide_greyscale(upright, size)
        # convert() first: palette, greyscale and RGBA images all become 3-channel RGB.
        # Pillow's bilinear resize widens its kernel when shrinking, so a large photo is
        # averaged down (antialiased) rather than sampled into aliasing noise.
        small = upright.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(small, dtype=np.float32)
    return pixels / np.float32(255.0)


def check_header(source: Path | BinaryIO, size: int, name: str | None = None) -> None:
    """Raise what `decode_image` would for a file that is missing, of no format Pillow knows, or
    above `MAX_PIXELS`, from its header alone (no pixel is decoded): how a folder of thousands
    of images is checked in a fraction of its decoding time. `size` is only for the message."""
    with _opened(source, name, size):
        pass


@contextmanager
def _opened(source: Path | BinaryIO, name: str | None, size: int) -> Iterator[Image.Image]:
    """`source` opened (its header read, its pixel count checked); any failure while it is open,
    decoding included, becomes a one-line ResnetlabError naming it."""
    from PIL import Image, UnidentifiedImageError

    label = name if name is not None else str(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns of a possible decompression bomb above 89 megapixels; the budget
            # below refuses such images anyway, with a message naming the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            # Image.open reads only the header: the size is known before any pixel is decoded.
            _check_budget(label, img.size[0], img.size[1], size)
            yield img
    except FileNotFoundError:
        raise ResnetlabError(f"{label}: not an image (no such file)") from None
    except UnidentifiedImageError:
        raise ResnetlabError(f"{label}: not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError:
        # Above twice Pillow's limit, Image.open itself refuses, before our check sees the size.
        raise ImageTooLarge(_over_budget(label, "more than 179 megapixels", size)) from None
    except (OSError, ValueError) as exc:
        # A directory, an unreadable file, a truncated or corrupt image.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResnetlabError(f"{label}: not an image ({_one_line(reason)})") from None


def decode_uint8(source: Path | BinaryIO, size: int, name: str | None = None) -> np.ndarray:
    """`decode_image` as uint8 `size x size x 3` (HWC, contiguous): round(x * 255), so an 8-bit
    image keeps exactly the values `decode_image` divides by 255, and a wider one is rounded to
    the nearest of 256 levels."""
    x = decode_image(source, size, name)
    return np.rint(x * np.float32(255.0)).clip(0, 255).astype(np.uint8)


def _check_budget(path: str, width: int, height: int, size: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(_over_budget(path, f"{width} x {height} pixels", size))


def _over_budget(path: str, dims: str, size: int) -> str:
    return (
        f"{path}: {dims}, above the budget of {MAX_PIXELS / 1e6:g} megapixels; not decoded "
        f"(shrink it first: the network sees {size} x {size} pixels)"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unreadable"


def _wide_greyscale(img: Image.Image, size: int) -> np.ndarray:
    """A 16-bit, 32-bit or float greyscale image as size x size x 3 in [0, 1] (module doc)."""
    from PIL import Image

    values = np.asarray(img, dtype=np.float32)
    values = np.nan_to_num(np.maximum(values, 0.0), nan=0.0, posinf=0.0)
    top = float(values.max(initial=0.0))
    if img.mode.startswith("I;16") or (img.mode == "I" and top <= 65535):
        scale = 65535.0
    else:
        scale = top if top > 1.0 else 1.0  # F in [0, 1]: as given
    grey = Image.fromarray((values / scale).astype(np.float32))  # mode F
    small = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(np.clip(small, 0.0, 1.0)[:, :, None], 3, axis=2).astype(np.float32)

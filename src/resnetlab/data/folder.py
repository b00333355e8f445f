"""A folder of the user's images (`data.dataset: folder`) read into the arrays `prepare` stores.

Layout, under `data.path`:

- flat: `<class>/<image files>`: test and validation images are drawn from each class;
- split: `train/<class>/...`, with optional `val/<class>/...` and `test/<class>/...` (used
  whenever `train/` exists); a split that is absent is drawn from `train/`. Every split present
  must hold the same class folders, and nothing but `train/`, `val/` and `test/` may sit beside
  them (a `validation/` folder is refused rather than silently left out).

Classes are the class folders' names, sorted (label i = the i-th name). Image files are those
ending in .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff or .webp (any case), decoded by
`data/decode.py`, the path `resnetlab predict` uses too, and resized to `data.image_size`
squared. Names starting with '.' are ignored; other files are ignored with one warning; a folder
inside a class folder is refused (class folders are not searched recursively: a nested folder
is more likely a mistake than a part of the class, and refusing says so).

Drawn splits (stratified, seeded): per class, in sorted class order, its files in sorted order
are permuted by one `np.random.default_rng(data.seed)`; the first max(1, round(n *
data.test_fraction)) go to test (if drawn), the next max(1, round(n * data.val_fraction)) to val
(if drawn), the rest, at least one, to train (rounding half up). Within a split, images are
ordered by class, then file name: the same folder and seed give byte-identical arrays.

Limits, each a one-line ResnetlabError raised before any image is decoded: the root is a
folder; at least 2 classes; no class folder without images; enough images per class for the
drawn splits; the arrays fit `MAX_PREPARED_BYTES`; then, from every file's header, each is an
image Pillow knows of at most `MAX_PIXELS` pixels. A file that is corrupt past its header is
refused when decoding reaches it. Every refusal names the file or folder and what to do; it
comes before `read_folder` returns, so `prepare` writes nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.datasets import CHANNELS
from resnetlab.data.decode import MAX_PIXELS, ImageTooLarge, check_header, decode_uint8
from resnetlab.data.prepared import Raw

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_PREPARED_BYTES", "read_folder"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLIT_FOLDERS = ("train", "val", "test")
# Every image is held in memory as uint8 arrays (the splits, then the prepared copies), and
# training holds its split again as float32 (four times the bytes): 4 GiB of uint8 images is
# already 16 GiB of floats to train on.
MAX_PREPARED_BYTES = 4 << 30


@dataclass
class _Listing:
    """The image files of one split folder, per class, and what was left out."""

    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)


def read_folder(
    root: Path, *, image_size: int, val_fraction: float, test_fraction: float, seed: int
) -> Raw:
    """The images under `root` (layout: module docstring) as NHWC uint8 `image_size` squared,
    split into train, val and test; a one-line ResnetlabError for anything it cannot use."""
    start = time.perf_counter()
    root = Path(root)
    if not root.exists():
        raise ResnetlabError(
            f"{root}: no such folder; set data.path to a folder of class folders of images"
        )
    if not root.is_dir():
        raise ResnetlabError(
            f"{root}: is a file, not a folder; set data.path to a folder of class folders"
        )
    given = _split_folders(root)
    listings = {split: _list_split(folder) for split, folder in given.items()}
    classes = _check_classes(listings)
    ignored = [p for listing in listings.values() for p in listing.ignored]
    if ignored:
        log.warning(
            "%s: ignored %d file(s) that are not images (%s), e.g. %s",
            root,
            len(ignored),
            ", ".join(sorted(IMAGE_EXTENSIONS)),
            ignored[0],
        )
    files = _draw_splits(listings, classes, val_fraction, test_fraction, seed)
    _check_memory(root, sum(len(f) for f in files.values()), image_size)
    for split in SPLIT_FOLDERS:  # headers only: a bad file at the end costs no decoding first
        for path, _ in files[split]:
            with _replace_or_remove():
                check_header(path, image_size)

    arrays = {split: _decode(files[split], image_size) for split in SPLIT_FOLDERS}
    raw = Raw(
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        classes=tuple(classes),
        val_images=arrays["val"][0],
        val_labels=arrays["val"][1],
    )
    log.info(
        "read %s: %d classes, train %d, val %d, test %d images (%d x %d) in %.1f s",
        root,
        len(classes),
        *(len(files[s]) for s in SPLIT_FOLDERS),
        image_size,
        image_size,
        time.perf_counter() - start,
    )
    return raw


def _split_folders(root: Path) -> dict[str, Path]:
    """{split: folder} of the split layout's folders present, or {"train": root} (flat)."""
    if not (root / "train").is_dir():
        for split in ("val", "test"):
            # Taken as a class, its class folders would be refused as nested folders; this
            # says what is really missing (a training folder named, say, training/).
            folder = root / split
            if folder.is_dir() and any(p.is_dir() for p in _entries(folder)):
                raise ResnetlabError(
                    f"{folder}: holds class folders, but {root} has no train/; put the training "
                    "images in train/<class>/ beside it"
                )
        return {"train": root}
    beside = sorted(
        p.name
        for p in _entries(root)
        if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_FOLDERS
    )
    if beside:
        raise ResnetlabError(
            f"{root}: has train/ and also {', '.join(n + '/' for n in beside[:3])}"
            f"{', ...' if len(beside) > 3 else ''}; with train/ only train/, val/ and test/ may "
            "hold class folders (rename a validation folder val/, or move the others out)"
        )
    return {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise ResnetlabError(
            f"{folder}: cannot be read ({exc.strerror or exc}); check its permissions"
        ) from None


def _list_split(folder: Path) -> _Listing:
    listing = _Listing(folder)
    for entry in _entries(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            listing.files[entry.name] = _list_class(entry, listing.ignored)
        else:  # a README beside the class folders
            listing.ignored.append(entry)
    return listing


def _list_class(folder: Path, ignored: list[Path]) -> list[Path]:
    images = []
    for entry in _entries(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise ResnetlabError(
                f"{entry}: a folder inside the class folder {folder.name}/; class folders hold "
                "image files only (move its images up into the class folder, or out)"
            )
        # is_file: regular files only (after links); a FIFO named x.png would block the read.
        if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            images.append(entry)
        else:
            ignored.append(entry)
    return images  # sorted: _entries sorts


def _check_classes(listings: dict[str, _Listing]) -> list[str]:
    train = listings["train"]
    classes = sorted(train.files)
    where = train.folder
    if not classes:
        raise ResnetlabError(
            f"{where}: no class folders; put each class's images in a folder named after it"
        )
    if len(classes) < 2:
        raise ResnetlabError(
            f"{where}: only one class folder ({classes[0]}/); a classifier needs at least 2 "
            "classes, one folder each"
        )
    for listing in listings.values():
        missing = sorted(set(classes) - set(listing.files))
        extra = sorted(set(listing.files) - set(classes))
        if missing or extra:
            problems = [f"lacks {', '.join(missing)}"] if missing else []
            problems += [f"has {', '.join(extra)} that train/ lacks"] if extra else []
            raise ResnetlabError(
                f"{listing.folder}: {'; '.join(problems)}; every split needs the same class "
                "folders as train/"
            )
        for name in classes:
            if not listing.files[name]:
                raise ResnetlabError(
                    f"{listing.folder / name}: a class folder without images; add images or "
                    "remove the folder"
                )
    return classes


def _share(n: int, fraction: float) -> int:
    """max(1, n * fraction rounded half up): every drawn split sees every class."""
    return max(1, math.floor(n * fraction + 0.5))


def _minimum(fractions: list[float]) -> int:
    """The fewest images a class needs so that each drawn split and train get one."""
    n = 1
    while n - sum(_share(n, f) for f in fractions) < 1:
        n += 1
    return n


def _draw_splits(
    given: dict[str, _Listing],
    classes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[tuple[Path, int]]]:
    """{split: [(file, label), ...]}, ordered by class then name; absent splits drawn from train."""
    drawn = [(s, f) for s, f in (("test", test_fraction), ("val", val_fraction)) if s not in given]
    need = _minimum([f for _, f in drawn])
    train = given["train"]
    for name in classes:
        n = len(train.files[name])
        if n < need:
            shares = ", ".join(f"data.{s}_fraction={f:g}" for s, f in drawn)
            raise ResnetlabError(
                f"{train.folder / name}: {n} image(s), too few to split: at least {need} needed "
                f"(1 to train on, at least 1 each for {' and '.join(s for s, _ in drawn)} "
                f"at {shares}); add images to it"
            )
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLIT_FOLDERS}
    for label, name in enumerate(classes):
        files = train.files[name]
        if drawn:
            order = rng.permutation(len(files))
            taken = 0
            for split, fraction in drawn:
                k = _share(len(files), fraction)
                chosen = sorted(order[taken : taken + k].tolist())
                out[split] += [(files[i], label) for i in chosen]
                taken += k
            files = [files[i] for i in sorted(order[taken:].tolist())]
        out["train"] += [(f, label) for f in files]
        for split, listing in given.items():
            if split != "train":
                out[split] += [(f, label) for f in listing.files[name]]
    return out


def _check_memory(root: Path, n_images: int, image_size: int) -> None:
    size = n_images * image_size * image_size * CHANNELS
    if size > MAX_PREPARED_BYTES:
        raise ResnetlabError(
            f"{root}: {n_images} images at data.image_size={image_size} take {_size(size)} as "
            f"uint8, above the limit of {_size(MAX_PREPARED_BYTES)} held in memory; lower "
            "data.image_size or use fewer images"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _decode(files: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """NHWC uint8 images and int64 labels of `files`, filled in place: no list of arrays to
    stack, so the peak is the arrays themselves."""
    images = np.empty((len(files), size, size, CHANNELS), dtype=np.uint8)
    labels = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    for i, (path, _) in enumerate(files):
        with _replace_or_remove():
            images[i] = decode_uint8(path, size)
    return images, labels


@contextmanager
def _replace_or_remove() -> Iterator[None]:
    """A file that is not an image gets what to do appended (a file too large already says)."""
    try:
        yield
    except ImageTooLarge:
        raise
    except ResnetlabError as exc:
        raise ResnetlabError(f"{exc}; replace or remove the file") from None

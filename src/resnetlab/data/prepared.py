"""The prepared arrays: the stratified train/val split, the train split's channel statistics, and
their files.

Prepared layout (`data/prepared/`): `{train,val,test}_images.npy` (uint8, N x S x S x 3, NHWC,
S the dataset's image size), `{train,val,test}_labels.npy` (int64) and `meta.json` (the dataset's
key, the class names, the train split's per-channel mean/std on the [0, 1] scale, counts). Every
later stage takes the classes and the image size from here. Plain `.npy` files load in a
fraction of a second and are byte-identical for identical inputs (an `.npz` zip would embed
timestamps).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetlab.core.atomic import replace_folder
from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.core.jsonio import UnreadableJson, read_json
from resnetlab.data.datasets import CHANNELS, DEFAULT, is_image_side

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PREPARED_FILES = (
    "meta.json",
    *(f"{s}_{kind}.npy" for s in SPLITS for kind in ("images", "labels")),
)


@dataclass(frozen=True)
class Raw:
    """A dataset as its reader hands it to `prepare`: NHWC uint8 images and int64 labels. A
    dataset that fixes its validation split (a folder's `val/`) gives it; else `prepare` draws
    it from the training images."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None


@dataclass(frozen=True)
class Prepared:
    """Prepared arrays; splits not loaded are absent (training never loads the test set)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, on the [0, 1] scale, train split only
    std: tuple[float, float, float]
    dataset: str = DEFAULT  # the registry key it was prepared from

    @property
    def image_size(self) -> int:
        """The side of the (square) images, from the arrays themselves."""
        return int(next(iter(self.images.values())).shape[1])


def split_indices(
    labels: np.ndarray, val_size: int, subset: int, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val split of `labels`, then an optional class-balanced train subset.

    Returns sorted index arrays (train, val), so the stored order follows the archive's.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ResnetlabError(f"data.val_size={val_size} must be between 1 and {n - 1}")
    if val_size < num_classes:
        raise ResnetlabError(
            f"data.val_size={val_size} must be at least {num_classes} (one image per class)"
        )
    from sklearn.model_selection import train_test_split  # 1 s to import; only prepare needs it

    train_idx, val_idx = train_test_split(
        np.arange(n), test_size=val_size, stratify=labels, random_state=seed, shuffle=True
    )
    if subset:
        train_idx = _balanced_subset(train_idx, labels[train_idx], subset, seed, num_classes)
    return np.sort(train_idx), np.sort(val_idx)


def _balanced_subset(
    idx: np.ndarray, labels: np.ndarray, size: int, seed: int, num_classes: int
) -> np.ndarray:
    if size > len(idx):
        raise ResnetlabError(
            f"data.subset={size} exceeds the {len(idx)} training images left after the split"
        )
    # The first `size % num_classes` classes get one extra image, so the total is exactly `size`.
    quota = [size // num_classes + (c < size % num_classes) for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    chosen = []
    for c, q in enumerate(quota):
        members = idx[labels == c]
        if q > len(members):
            raise ResnetlabError(
                f"data.subset={size} needs {q} images of class {c}, only {len(members)} remain"
            )
        chosen.append(rng.permutation(members)[:q])
    return np.concatenate(chosen)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (ddof 0) of NHWC uint8 images, on the [0, 1] scale, rounded to
    6 decimals.

    Computed from exact integer sums of each channel's histogram: 0.4 s for the 45k training
    images, where a float64 copy of them (1.1 GB) took 8 s. The float64 formula is still the
    definition: where an exact value lies so close to a rounding halfway point that float64
    summation error could tip it, that formula decides, so the output never changes.
    """
    channels = images.shape[-1]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), 4096):  # bounded temporaries: a few MB per chunk
        pixels = images[start : start + 4096].reshape(-1, channels)
        for c in range(channels):
            hist[c] += np.bincount(pixels[:, c], minlength=256)
    values = np.arange(256, dtype=np.int64)
    n = images.size // channels
    mean, std = np.zeros(channels), np.zeros(channels)
    for c in range(channels):
        # Python ints: n * sum(x^2) reaches ~1e20 for CIFAR, beyond int64.
        s1, s2 = int(hist[c] @ values), int(hist[c] @ (values * values))
        mean[c] = s1 / (255 * n)
        std[c] = math.sqrt(n * s2 - s1 * s1) / (255 * n)
    # Float64 sums of n values err by at most ~n * 1.1e-16 relative; 1e-8 of a unit of the 6th
    # decimal's halfway point covers it for n up to ~1e8 values per channel.
    scaled = np.concatenate([mean, std]) * 1e6
    if np.any(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-2):
        return _float64_channel_stats(images)
    return tuple(mean.round(6).tolist()), tuple(std.round(6).tolist())


def _float64_channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(x.mean(0).round(6).tolist()), tuple(x.std(0).round(6).tolist())


def prepare(raw: Raw, val_size: int, subset: int, seed: int, dataset: str = DEFAULT) -> Prepared:
    """The stored splits of `raw`: its own validation split if it has one, else a stratified
    draw of `val_size` training images; then an optional class-balanced training subset."""
    n = len(raw.classes)
    if raw.val_images is None or raw.val_labels is None:
        train_idx, val_idx = split_indices(raw.train_labels, val_size, subset, seed, n)
        val_images, val_labels = raw.train_images[val_idx], raw.train_labels[val_idx]
    else:
        train_idx = np.arange(len(raw.train_labels))
        if subset:
            train_idx = np.sort(_balanced_subset(train_idx, raw.train_labels, subset, seed, n))
        val_images, val_labels = raw.val_images, raw.val_labels
    images = {"train": raw.train_images[train_idx], "val": val_images, "test": raw.test_images}
    labels = {"train": raw.train_labels[train_idx], "val": val_labels, "test": raw.test_labels}
    mean, std = channel_stats(images["train"])
    return Prepared(images, labels, raw.classes, mean, std, dataset)  # type: ignore[arg-type]


def save_prepared(prepared: Prepared, out_dir: Path) -> None:
    """Write the arrays and `meta.json` to `out_dir` as one set: a stop part-way (SIGTERM, a full
    disk) leaves the previous set whole, never new arrays beside an old `meta.json`."""
    meta = {
        "dataset": prepared.dataset,
        "classes": list(prepared.classes),
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "counts": {s: len(prepared.labels[s]) for s in SPLITS},
        "class_counts": {
            s: np.bincount(prepared.labels[s], minlength=len(prepared.classes)).tolist()
            for s in SPLITS
        },
    }

    def write(folder: Path) -> None:
        for split in SPLITS:
            np.save(folder / f"{split}_images.npy", prepared.images[split], allow_pickle=False)
            np.save(folder / f"{split}_labels.npy", prepared.labels[split], allow_pickle=False)
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    replace_folder(out_dir, PREPARED_FILES, write, then="run `dvc repro prepare` again")


def load_prepared(data_dir: Path, splits: Iterable[str] = SPLITS) -> Prepared:
    """Load the prepared arrays of `splits` (others are absent from the result).

    Everything is checked before an array is read: `meta.json` (a mapping whose `classes` are
    names and whose `mean`/`std` are three finite numbers, std > 0) and every `.npy` header
    (plain dtype, shape, and a file size that matches it: no pickles, truncated or oversized
    files); then the labels are checked to name a class. A bad file raises ResnetlabError in one
    line that names the file, what is wrong and `dvc repro -f prepare`."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.exists():
        raise ResnetlabError(f"{data_dir}: no prepared data (run `resnetlab prepare` first)")
    splits = tuple(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    classes, mean, std, dataset = _read_meta(meta_path)
    headers = {}
    shape = None  # every split's images share one shape: square, RGB
    for split in splits:  # every header first: nothing is allocated for a bad folder
        image_path, label_path = data_dir / f"{split}_images.npy", data_dir / f"{split}_labels.npy"
        n_images, *inner = _npy_header(image_path, IMAGE_DTYPE, 4)
        expected = shape or (inner[0], inner[0], CHANNELS)
        if tuple(inner) != expected or not is_image_side(inner[0]):
            raise _bad(image_path, f"images of shape {tuple(inner)}, expected {expected}")
        shape = expected
        (n_labels,) = _npy_header(label_path, LABEL_DTYPE, 1)
        if n_images != n_labels:
            raise _bad(label_path, f"{n_labels} labels for the {n_images} images of {split}")
        headers[split] = image_path, label_path
    images, labels = {}, {}
    for split, (image_path, label_path) in headers.items():
        labels[split] = _read_npy(label_path)
        y = labels[split]
        if y.size and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise _bad(
                label_path,
                f"labels range over {int(y.min())}..{int(y.max())}, expected 0..{len(classes) - 1} "
                f"(one per class in meta.json)",
            )
        images[split] = _read_npy(image_path)
    return Prepared(images, labels, classes, mean, std, dataset)  # type: ignore[arg-type]


def split_size(data_dir: Path, split: str) -> int:
    """The number of images in `split` of the prepared data in `data_dir`, from its labels'
    `.npy` header (checked as `load_prepared` checks it), without reading an array."""
    (count,) = _npy_header(Path(data_dir) / f"{split}_labels.npy", LABEL_DTYPE, 1)
    return int(count)


IMAGE_DTYPE = np.dtype(np.uint8)
LABEL_DTYPE = np.dtype(np.int64)
MAX_META_BYTES = 1 << 20  # a meta.json of ours is well under 2 KB
MAX_NPY_HEADER = 10_000  # numpy's own default bound on a .npy header


def _bad(path: Path, problem: str) -> ResnetlabError:
    return ResnetlabError(f"{path}: {problem}; re-run `dvc repro -f prepare`")


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _read_meta(path: Path) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], str]:
    """`meta.json`'s classes, mean, std and dataset key, checked (see `load_prepared`)."""
    try:
        meta = read_json(path, MAX_META_BYTES)
    except FileNotFoundError:
        raise _bad(path, "missing") from None
    except UnreadableJson as exc:
        raise _bad(path, str(exc)) from None
    if not isinstance(meta, dict):
        raise _bad(path, f"expected a JSON object, got {type(meta).__name__}")
    for key in ("classes", "mean", "std"):
        if key not in meta:
            raise _bad(path, f"missing key {key!r}")
    classes = meta["classes"]
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise _bad(path, f"'classes' is {_short(classes)}, expected a list of distinct names")
    for key in ("mean", "std"):
        value = meta[key]
        if not isinstance(value, list) or len(value) != 3 or not all(map(_is_number, value)):
            raise _bad(path, f"{key!r} is {_short(value)}, expected 3 finite numbers")
    if not all(s > 0 for s in meta["std"]):
        raise _bad(path, f"'std' is {_short(meta['std'])}, expected 3 numbers > 0")
    # Prepared folders written before the registry are CIFAR-10's, the default dataset.
    dataset = meta.get("dataset", DEFAULT)
    if not isinstance(dataset, str) or not dataset:
        raise _bad(path, f"'dataset' is {_short(dataset)}, expected a dataset's key")
    return tuple(classes), tuple(map(float, meta["mean"])), tuple(map(float, meta["std"])), dataset


def _short(value: object, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, list | dict) or len(value) < 100 else "..."
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _npy_header(path: Path, dtype: np.dtype, ndim: int) -> tuple[int, ...]:
    """The shape declared in the `.npy` header at `path`, after checking
    that the header is one numpy writes for a plain `dtype` array of `ndim` dimensions and that
    the file holds exactly the bytes that header declares."""
    import stat

    from numpy.lib import format as npy

    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise _bad(path, "missing") from None
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc.strerror or exc})") from None
    with fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _bad(path, "not a regular file")
        try:
            version = npy.read_magic(fh)
            if version == (1, 0):
                shape, _, found = npy.read_array_header_1_0(fh, max_header_size=MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, _, found = npy.read_array_header_2_0(fh, max_header_size=MAX_NPY_HEADER)
            else:
                raise ValueError(f".npy format version {version}")
        except (ValueError, OSError, SyntaxError, EOFError) as exc:
            raise _bad(path, f"not a .npy array file ({first_line(exc)[:120]})") from None
        offset = fh.tell()
    if found != dtype:
        raise _bad(path, f"dtype {found}, expected {dtype}")
    if len(shape) != ndim:
        raise _bad(path, f"shape {shape}, expected {ndim} dimension(s)")
    size = offset + math.prod(shape) * dtype.itemsize
    if info.st_size != size:
        raise _bad(
            path,
            f"{info.st_size} bytes where its header declares {size}"
            + (" (truncated)" if info.st_size < size else ""),
        )
    return shape


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:  # changed since its header was checked
        raise _bad(path, f"cannot be read ({first_line(exc)[:120]})") from None

"""Read the CIFAR-10 python archive safely, split it, and store compact arrays.

The batches are pickles. A pickle can name any importable callable, so unpickling a tampered
archive with `pickle.load` could run code; `_CifarUnpickler` admits only what a CIFAR batch holds
(dicts, lists, strings/bytes, ints and numpy's array reconstruction) and refuses everything else.

Prepared layout (`data/prepared/`): `{train,val,test}_images.npy` (uint8, N x 32 x 32 x 3, NHWC),
`{train,val,test}_labels.npy` (int64) and `meta.json` (class names, the train split's per-channel
mean/std on the [0, 1] scale, counts). Plain `.npy` files load in a fraction of a second and are
byte-identical for identical inputs (an `.npz` zip would embed timestamps).
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)  # stored NHWC: one uint8 per channel
SPLITS = ("train", "val", "test")


class UnsafePickleError(ResnetlabError):
    """A batch file names a Python object a CIFAR batch never contains."""


def _reconstruct(*args: Any) -> Any:
    # numpy moved the helper from numpy.core to numpy._core in 2.0; the archive names the old path.
    from numpy._core.multiarray import _reconstruct as impl

    return impl(*args)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists, "
                "strings, ints and numpy arrays (the archive may have been tampered with)"
            ) from None


def safe_unpickle(blob: bytes, source: str) -> Any:
    """Unpickle a CIFAR batch, admitting only the types such a batch holds."""
    try:
        return _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or garbled pickle
        raise ResnetlabError(f"{source}: not a readable CIFAR batch ({exc})") from None


@dataclass(frozen=True)
class Cifar10:
    """The raw dataset as read from the archive, NHWC uint8."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def read_archive(archive: Path) -> Cifar10:
    """Read and validate every batch of a `cifar-10-python.tar.gz` without extracting it."""
    archive = Path(archive)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(_gunzip(archive)))  # noqa: SIM115 - `with` below
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise ResnetlabError(f"{archive}: not a readable .tar.gz archive ({exc})") from None
    with tar:

        def load(name: str) -> Any:
            member = f"{BATCH_DIR}/{name}"
            try:
                fh = tar.extractfile(member)
            except KeyError:
                raise ResnetlabError(f"{archive}: missing {member}") from None
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ResnetlabError(f"{archive}: cannot read {member} ({exc})") from None
            if fh is None:
                raise ResnetlabError(f"{archive}: {member} is not a regular file")
            try:
                blob = fh.read()
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ResnetlabError(f"{archive}: cannot read {member} ({exc})") from None
            return safe_unpickle(blob, member)

        meta = load(META)
        classes = _class_names(meta, f"{BATCH_DIR}/{META}")
        train = [_batch_arrays(load(n), f"{BATCH_DIR}/{n}") for n in TRAIN_BATCHES]
        test_images, test_labels = _batch_arrays(load(TEST_BATCH), f"{BATCH_DIR}/{TEST_BATCH}")
    train_images = np.concatenate([x for x, _ in train])
    train_labels = np.concatenate([y for _, y in train])
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(train_labels).tolist()))
    if missing:
        raise ResnetlabError(f"{archive}: the training batches have no images of classes {missing}")
    return Cifar10(train_images, train_labels, test_images, test_labels, classes)


# The real archive holds 184 MB; a bigger one is refused before it can fill the memory.
MAX_TAR_BYTES = 1 << 30


def _gunzip(archive: Path) -> bytes:
    """The archive's tar bytes, decompressed in one call: twice as fast as tarfile's gzip stream,
    which inflates in 43,000 small reads and inflates again on every backward seek."""
    blob = archive.read_bytes()
    parts: list[bytes] = []
    size = 0
    while blob:  # one gzip member after another, as gzip itself reads them
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        parts.append(inflate.decompress(blob, MAX_TAR_BYTES - size + 1))
        size += len(parts[-1])
        if size > MAX_TAR_BYTES or inflate.unconsumed_tail:
            raise ResnetlabError(
                f"{archive}: decompresses to more than {MAX_TAR_BYTES:,} bytes; the CIFAR-10 "
                "archive holds about 184 MB"
            )
        if not inflate.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        blob = inflate.unused_data.lstrip(b"\0")  # gzip allows zero padding between members
    return b"".join(parts)


def _get(d: Any, key: str, source: str) -> Any:
    if not isinstance(d, dict):
        raise ResnetlabError(f"{source}: expected a dict, found {type(d).__name__}")
    for k in (key.encode(), key):  # Python 2 pickles have bytes keys
        if k in d:
            return d[k]
    raise ResnetlabError(f"{source}: no {key!r} entry")


def _class_names(meta: Any, source: str) -> tuple[str, ...]:
    names = _get(meta, "label_names", source)
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise ResnetlabError(f"{source}: label_names must list {NUM_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _batch_arrays(batch: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    data = _get(batch, "data", source)
    labels = _get(batch, "labels", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ResnetlabError(f"{source}: data must be an N x 3072 uint8 array, got {shape} {dtype}")
    if data.shape[1] != 3072:
        raise ResnetlabError(f"{source}: data rows hold {data.shape[1]} values, expected 3072")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ResnetlabError(f"{source}: labels must be a list of integers")
    if len(labels) != len(data):
        raise ResnetlabError(f"{source}: {len(labels)} labels for {len(data)} images")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise ResnetlabError(f"{source}: label {int(bad[0])} is outside 0..{NUM_CLASSES - 1}")
    # Rows are R, G, B planes of 32x32, row-major: reshape to NCHW, then transpose to NHWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class Prepared:
    """Prepared arrays; splits not loaded are None (training never loads the test set)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, on the [0, 1] scale, train split only
    std: tuple[float, float, float]


def split_indices(
    labels: np.ndarray, val_size: int, subset: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val split of `labels`, then an optional class-balanced train subset.

    Returns sorted index arrays (train, val), so the stored order follows the archive's.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ResnetlabError(f"data.val_size={val_size} must be between 1 and {n - 1}")
    if val_size < NUM_CLASSES:
        raise ResnetlabError(
            f"data.val_size={val_size} must be at least {NUM_CLASSES} (one image per class)"
        )
    from sklearn.model_selection import train_test_split  # 1 s to import; only prepare needs it

    train_idx, val_idx = train_test_split(
        np.arange(n), test_size=val_size, stratify=labels, random_state=seed, shuffle=True
    )
    if subset:
        train_idx = _balanced_subset(train_idx, labels[train_idx], subset, seed)
    return np.sort(train_idx), np.sort(val_idx)


def _balanced_subset(idx: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size > len(idx):
        raise ResnetlabError(
            f"data.subset={size} exceeds the {len(idx)} training images left after the split"
        )
    # The first `size % 10` classes get one extra image, so the total is exactly `size`.
    quota = [size // NUM_CLASSES + (c < size % NUM_CLASSES) for c in range(NUM_CLASSES)]
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


def prepare(raw: Cifar10, val_size: int, subset: int, seed: int) -> Prepared:
    train_idx, val_idx = split_indices(raw.train_labels, val_size, subset, seed)
    images = {
        "train": raw.train_images[train_idx],
        "val": raw.train_images[val_idx],
        "test": raw.test_images,
    }
    labels = {
        "train": raw.train_labels[train_idx],
        "val": raw.train_labels[val_idx],
        "test": raw.test_labels,
    }
    mean, std = channel_stats(images["train"])
    return Prepared(images, labels, raw.classes, mean, std)  # type: ignore[arg-type]


def save_prepared(prepared: Prepared, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        np.save(out_dir / f"{split}_images.npy", prepared.images[split], allow_pickle=False)
        np.save(out_dir / f"{split}_labels.npy", prepared.labels[split], allow_pickle=False)
    meta = {
        "classes": list(prepared.classes),
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "counts": {s: len(prepared.labels[s]) for s in SPLITS},
        "class_counts": {
            s: np.bincount(prepared.labels[s], minlength=NUM_CLASSES).tolist() for s in SPLITS
        },
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_prepared(data_dir: Path, splits: Iterable[str] = SPLITS) -> Prepared:
    """Load the prepared arrays of `splits` (others are absent from the result)."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.exists():
        raise ResnetlabError(f"{data_dir}: no prepared data (run `resnetlab prepare` first)")
    meta = json.loads(meta_path.read_text())
    images, labels = {}, {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        images[split] = np.load(data_dir / f"{split}_images.npy", allow_pickle=False)
        labels[split] = np.load(data_dir / f"{split}_labels.npy", allow_pickle=False)
        if images[split].shape[1:] != IMAGE_SHAPE or len(images[split]) != len(labels[split]):
            raise ResnetlabError(f"{data_dir}: {split} arrays are inconsistent; re-run prepare")
    return Prepared(images, labels, tuple(meta["classes"]), tuple(meta["mean"]), tuple(meta["std"]))

"""Read a CIFAR python archive (CIFAR-10, CIFAR-100) safely, without extracting it.

The batches are pickles. A pickle can name any importable callable, so unpickling a tampered
archive with `pickle.load` could run code; `_CifarUnpickler` admits only what a CIFAR batch holds
(dicts, lists, strings/bytes, ints and numpy's array reconstruction) and refuses everything else.
"""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.datasets import CHANNELS, PickleArchive
from resnetlab.data.prepared import Raw

log = logging.getLogger(__name__)


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


def read_archive(archive: Path, dataset: PickleArchive) -> Raw:
    """Read and validate every batch of `dataset`'s archive without extracting it."""
    archive = Path(archive)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(_gunzip(archive)))  # noqa: SIM115 - `with` below
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise ResnetlabError(f"{archive}: not a readable .tar.gz archive ({exc})") from None
    with tar:

        def load(name: str) -> tuple[Any, str]:
            member = f"{dataset.member_dir}/{name}"
            try:
                fh = tar.extractfile(member)
            except KeyError:
                raise ResnetlabError(
                    f"{archive}: missing {member} (is this the {dataset.name} archive?)"
                ) from None
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ResnetlabError(f"{archive}: cannot read {member} ({exc})") from None
            if fh is None:
                raise ResnetlabError(f"{archive}: {member} is not a regular file")
            try:
                blob = fh.read()
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ResnetlabError(f"{archive}: cannot read {member} ({exc})") from None
            return safe_unpickle(blob, member), member

        classes = _class_names(*load(dataset.meta_member), dataset)
        train = [_batch_arrays(*load(n), dataset) for n in dataset.train_members]
        test_images, test_labels = _batch_arrays(*load(dataset.test_member), dataset)
    train_images = np.concatenate([x for x, _ in train])
    train_labels = np.concatenate([y for _, y in train])
    missing = sorted(set(range(dataset.num_classes)) - set(np.unique(train_labels).tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ResnetlabError(f"{archive}: the training batches have no images of classes {shown}")
    return Raw(train_images, train_labels, test_images, test_labels, classes)


# Each real archive holds about 184 MB of pixels (60,000 x 3,072 bytes); a bigger one is refused
# before it can fill the memory.
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
                f"{archive}: decompresses to more than {MAX_TAR_BYTES:,} bytes; each CIFAR "
                "archive holds under 200 MB"
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


def _class_names(meta: Any, source: str, dataset: PickleArchive) -> tuple[str, ...]:
    field, n = dataset.names_field, dataset.num_classes
    names = _get(meta, field, source)
    if not isinstance(names, list) or len(names) != n:
        raise ResnetlabError(f"{source}: {field} must list {n} names")
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(set(decoded)) != len(decoded) or not all(decoded):
        raise ResnetlabError(f"{source}: {field} must list distinct, non-empty names")
    return decoded


def _batch_arrays(batch: Any, source: str, dataset: PickleArchive) -> tuple[np.ndarray, np.ndarray]:
    side, n = dataset.image_size, dataset.num_classes
    row = CHANNELS * side * side
    data = _get(batch, "data", source)
    labels = _get(batch, dataset.labels_field, source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ResnetlabError(
            f"{source}: data must be an N x {row} uint8 array, got {shape} {dtype}"
        )
    if data.shape[1] != row:
        raise ResnetlabError(f"{source}: data rows hold {data.shape[1]} values, expected {row}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ResnetlabError(f"{source}: {dataset.labels_field} must be a list of integers")
    if len(labels) != len(data):
        raise ResnetlabError(f"{source}: {len(labels)} labels for {len(data)} images")
    bad = labels[(labels < 0) | (labels >= n)]
    if bad.size:
        raise ResnetlabError(f"{source}: label {int(bad[0])} is outside 0..{n - 1}")
    # Rows are R, G, B planes of side x side, row-major: reshape to NCHW, then transpose to NHWC.
    images = np.ascontiguousarray(data.reshape(-1, CHANNELS, side, side).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)

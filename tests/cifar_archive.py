"""Tiny CIFAR-10 and CIFAR-100 archives in the real layouts (python batches, protocol-2 pickles),
for tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np


class CreatesFile:
    """Unpickling this would call open(path, 'w'): a payload a tampered archive could carry."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_batch(n: int, rng: np.random.Generator) -> dict[bytes, Any]:
    # Every class present in every batch; each class gets a distinct mean colour, so a model can
    # learn the tiny set quickly (tests check that the loss falls).
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    base = (labels[:, None] * 25).astype(np.int16)
    noise = rng.integers(-20, 21, size=(n, 3072))
    data = np.clip(base + noise, 0, 255).astype(np.uint8)
    return {b"batch_label": b"batch", b"labels": labels.tolist(), b"data": data}


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(blob)
    info.mtime = 1244073600  # fixed, so the archive's md5 is stable
    tar.addfile(info, io.BytesIO(blob))


def make_archive(
    path: Path,
    per_batch: int = 60,
    test_size: int = 100,
    seed: int = 0,
    override: dict[str, bytes] | None = None,
) -> str:
    """Write a CIFAR-format .tar.gz at `path` (5 train batches of `per_batch` images and a test
    batch); `override` replaces members' bytes. Returns the archive's md5."""
    rng = np.random.default_rng(seed)
    members = {
        "batches.meta": pickle.dumps(
            {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, protocol=2
        )
    }
    for i in range(1, 6):
        members[f"data_batch_{i}"] = pickle.dumps(make_batch(per_batch, rng), protocol=2)
    members["test_batch"] = pickle.dumps(make_batch(test_size, rng), protocol=2)
    members.update(override or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, blob in members.items():
            _add(tar, name, blob)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return hashlib.md5(path.read_bytes()).hexdigest()


CIFAR100_COARSE = [f"super{c:02d}" for c in range(20)]
CIFAR100_FINE = [f"fine{c:03d}" for c in range(100)]


def make_cifar100_archive(
    path: Path,
    train_size: int = 1000,
    test_size: int = 200,
    override: dict[str, bytes] | None = None,
) -> str:
    """Write a CIFAR-100-format .tar.gz at `path` (`cifar-100-python/{meta,train,test}`, fine
    and coarse labels: fine class f belongs to superclass f // 5); returns its md5. Each fine
    class has its own mean colour, as in `make_batch`; `override` replaces members' bytes."""
    rng = np.random.default_rng(100)

    def split(n: int, name: bytes) -> bytes:
        fine = np.arange(n) % 100
        rng.shuffle(fine)
        base = np.stack([fine * 2, (fine % 10) * 25, (fine // 10) * 25], 1).astype(np.int16)
        pixels = np.repeat(base, 1024, axis=1) + rng.integers(-8, 9, size=(n, 3072))
        batch = {
            b"batch_label": name,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": np.clip(pixels, 0, 255).astype(np.uint8),
        }
        return pickle.dumps(batch, protocol=2)

    members = {
        "meta": pickle.dumps(
            {
                b"fine_label_names": [c.encode() for c in CIFAR100_FINE],
                b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE],
            },
            protocol=2,
        ),
        "train": split(train_size, b"training batch 1 of 1"),
        "test": split(test_size, b"testing batch 1 of 1"),
    }
    members.update(override or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            info.mtime = 1244073600
            tar.addfile(info, io.BytesIO(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return hashlib.md5(path.read_bytes()).hexdigest()

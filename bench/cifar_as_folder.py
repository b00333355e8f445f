"""Export one class-balanced selection of CIFAR-10 twice: as an image folder (`data.dataset:
folder`) and as a CIFAR-format archive of exactly the same images (`data.dataset: cifar10` with
`data.url`/`data.md5` pointing at it), so the two data paths can be compared on the same images.

    python bench/cifar_as_folder.py --archive cifar-10-python.tar.gz --out /tmp/c10 \\
        --train-per-class 500 --test-per-class 200 --val-size 500

takes the first `--train-per-class` images of each class from the training batches and the first
`--test-per-class` of each class from the test batch, and writes
`/tmp/c10/cifar-10-python.tar.gz`, those images class by class, and
`/tmp/c10/images/{train,val,test}/<class>/<n>.png`, whose `val/` holds exactly the images the
CIFAR path holds out with `data.val_size=<--val-size>` and `data.seed=0`. Both paths then
prepare the same arrays in the same order. It prepares both as the pipeline does and prints
whether they are identical, and last the archive's md5, for `-S data.md5=...`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.data.archive import read_archive
from resnetlab.data.datasets import CHANNELS, CIFAR10
from resnetlab.data.folder import read_folder
from resnetlab.data.prepared import prepare, split_indices


def first_per_class(labels: np.ndarray, per_class: int, classes: int) -> np.ndarray:
    """Indices of the first `per_class` images of each class, class by class (the order a
    folder's images are read in: by class, then file name)."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(classes)]
    if any(len(c) < per_class for c in chosen):
        sys.exit(f"fewer than {per_class} images in some class")
    return np.concatenate(chosen)


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def write_archive(path: Path, train: tuple, test: tuple, classes: tuple[str, ...]) -> str:
    """A CIFAR-10-format archive (the official layout and pickles) of these images."""

    def batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes
        blob = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": rows}
        return pickle.dumps(blob, protocol=2)

    meta = {b"label_names": [c.encode() for c in classes], b"num_vis": rows_of(CHANNELS)}
    members = {CIFAR10.meta_member: pickle.dumps(meta, protocol=2)}
    parts = np.array_split(np.arange(len(train[1])), len(CIFAR10.train_members))
    for name, part in zip(CIFAR10.train_members, parts, strict=True):
        members[name] = batch(train[0][part], train[1][part], name)
    members[CIFAR10.test_member] = batch(*test, CIFAR10.test_member)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{CIFAR10.member_dir}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return hashlib.md5(path.read_bytes()).hexdigest()


def rows_of(channels: int) -> int:
    return channels * CIFAR10.image_size**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", type=Path, required=True, help="the real cifar-10-python.tar.gz")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--val-size", type=int, default=500, help="as data.val_size")
    args = p.parse_args()

    raw = read_archive(args.archive, CIFAR10)
    n = len(raw.classes)
    train = first_per_class(raw.train_labels, args.train_per_class, n)
    test = first_per_class(raw.test_labels, args.test_per_class, n)
    train_set = (raw.train_images[train], raw.train_labels[train])
    test_set = (raw.test_images[test], raw.test_labels[test])
    args.out.mkdir(parents=True, exist_ok=True)
    md5 = write_archive(args.out / CIFAR10.archive_name, train_set, test_set, raw.classes)
    # The CIFAR path's own validation draw, on the archive just written: the folder's val/.
    fit, held = split_indices(train_set[1], args.val_size, 0, 0, n)
    images = args.out / "images"
    write_pngs(images / "train", train_set[0][fit], train_set[1][fit], raw.classes)
    write_pngs(images / "val", train_set[0][held], train_set[1][held], raw.classes)
    write_pngs(images / "test", *test_set, raw.classes)

    # Both paths, as `prepare` runs them.
    folder = read_folder(
        images, image_size=CIFAR10.image_size, val_fraction=0.1, test_fraction=0.2, seed=0
    )
    by_folder = prepare(folder, val_size=0, subset=0, seed=0, dataset="folder")
    archive = read_archive(args.out / CIFAR10.archive_name, CIFAR10)
    by_archive = prepare(archive, val_size=args.val_size, subset=0, seed=0)

    same = by_folder.classes == raw.classes
    print(f"classes: {' '.join(by_folder.classes)} (the archive's: {same})")
    for name, prep in (("folder", by_folder), ("archive", by_archive)):
        counts = ", ".join(f"{s} {len(y)}" for s, y in prep.labels.items())
        print(f"{name:8s} {counts}; train mean {prep.mean} std {prep.std}")
    for split in by_folder.images:
        same = np.array_equal(by_folder.images[split], by_archive.images[split]) and (
            np.array_equal(by_folder.labels[split], by_archive.labels[split])
        )
        print(f"{split}: the same images and labels in the same order: {same}")
    print(f"folder: {images}\narchive: {args.out / CIFAR10.archive_name}\nmd5: {md5}")


if __name__ == "__main__":
    main()

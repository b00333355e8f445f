"""A user's image folder read for `prepare` (`data/folder.py`): both layouts, the seeded stratified
split, the shared decoding with `resnetlab predict`, and every way a folder can be unusable
(refused in one line, before any image is decoded where it can be, leaving no output)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resnetlab.core.errors import ResnetlabError
from resnetlab.data import folder as folder_reader
from resnetlab.data.decode import MAX_PIXELS
from resnetlab.data.folder import MAX_PREPARED_BYTES, read_folder
from resnetlab.data.prepared import SPLITS, load_prepared
from resnetlab.evaluate.images import load_image
from resnetlab.pipeline import prepare as prepare_stage

# Each class its own dominant channel, so a label can be checked against its images' colour.
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}
SPLIT = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}


def write_images(folder: Path, colour: tuple[int, int, int], n: int, seed: int = 0) -> None:
    """`n` noisy images of `colour`, as a user's photos vary: PNG and JPEG (any case of the
    extension), RGB, RGBA and palette, 20 to 60 pixels a side, not square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(20, 61)), int(rng.integers(20, 61))
        noise = rng.integers(-30, 31, (h, w, 3))
        image = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
        kind = i % 4
        if kind == 0:
            image.save(folder / f"{i:03d}.png")
        elif kind == 1:
            image.save(folder / f"{i:03d}.JPG", quality=95)
        elif kind == 2:
            image.convert("RGBA").save(folder / f"img {i:03d}.png")
        else:
            image.convert("P").save(folder / f"{i:03d}.gif")


def make_flat(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        write_images(root / name, COLOURS[name], n, seed=len(name) + n)
    return root


def read(root: Path, image_size: int = 12, **overrides: float) -> object:
    return read_folder(root, image_size=image_size, **{**SPLIT, **overrides})


def class_counts(labels: np.ndarray, n: int = 3) -> list[int]:
    return np.bincount(labels, minlength=n).tolist()


def splits(raw) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of train, val and test."""
    return [(getattr(raw, f"{s}_images"), getattr(raw, f"{s}_labels")) for s in SPLITS]


def check_arrays(raw, size: int) -> None:
    """NHWC uint8 contiguous at `size`, int64 labels ordered by class, colours matching labels."""
    for images, labels in splits(raw):
        assert images.dtype == np.uint8 and images.flags.c_contiguous
        assert images.shape == (len(labels), size, size, 3)
        assert labels.dtype == np.int64 and np.all(np.diff(labels) >= 0)
        dominant = images.reshape(len(images), -1, 3).mean(1).argmax(1)
        expected = [int(np.argmax(COLOURS[raw.classes[y]])) for y in labels]
        assert dominant.tolist() == expected


# --- layouts and the split ---------------------------------------------------------------------


def test_flat_layout_is_split_per_class_by_seed(tmp_path, caplog):
    root = make_flat(tmp_path / "pics", {"eel": 5, "cat": 10, "dog": 7})
    (root / "cat" / "notes.txt").write_text("not an image\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored without a word
    (root / ".thumbnails").mkdir()
    with caplog.at_level(logging.INFO, logger="resnetlab.data.folder"):
        raw = read(root)
    assert raw.classes == ("cat", "dog", "eel")
    # Per class: test max(1, round(n * 0.2)), val max(1, round(n * 0.1)), train the rest.
    assert class_counts(raw.test_labels) == [2, 1, 1]
    assert class_counts(raw.val_labels) == [1, 1, 1]
    assert class_counts(raw.train_labels) == [7, 5, 3]
    check_arrays(raw, 12)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignored 1 file" in warnings[0] and "notes.txt" in warnings[0]
    assert any("train 15, val 3, test 4" in r.getMessage() for r in caplog.records)

    again = read(root)
    other = read(root, seed=1)
    for (x, y), (x_again, y_again) in zip(splits(raw), splits(again), strict=True):
        assert x.tobytes() == x_again.tobytes() and y.tobytes() == y_again.tobytes()
    assert class_counts(other.test_labels) == [2, 1, 1]  # the same shares, other images
    assert raw.test_images.tobytes() != other.test_images.tobytes()
    # Every image lands in exactly one split, whatever the seed.
    every = np.concatenate([raw.train_images, raw.val_images, raw.test_images])
    every_other = np.concatenate([other.train_images, other.val_images, other.test_images])
    assert sorted(x.tobytes() for x in every) == sorted(x.tobytes() for x in every_other)


def test_split_layout_takes_the_given_splits(tmp_path):
    root = tmp_path / "pics"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for name in ("dog", "cat"):
            write_images(root / split / name, COLOURS[name], n, seed=n)
    (root / "README.md").write_text("my photos\n")  # beside the splits: not a class
    raw = read(root, image_size=20)
    assert raw.classes == ("cat", "dog")
    assert class_counts(raw.train_labels, 2) == [6, 6]
    assert class_counts(raw.val_labels, 2) == [2, 2]
    assert class_counts(raw.test_labels, 2) == [3, 3]
    check_arrays(raw, 20)
    # Nothing is drawn, so the seed changes nothing.
    assert read(root, image_size=20, seed=5).train_images.tobytes() == raw.train_images.tobytes()


@pytest.mark.parametrize(
    ("given", "train", "val", "test"),
    [
        (("train",), [7, 5], [1, 1], [2, 1]),  # both drawn
        (("train", "val"), [8, 6], [4, 4], [2, 1]),  # test drawn, val as given
        (("train", "test"), [9, 6], [1, 1], [4, 4]),  # val drawn, test as given
    ],
)
def test_absent_splits_are_drawn_from_train(tmp_path, given, train, val, test):
    root = tmp_path / "pics"
    write_images(root / "train" / "cat", COLOURS["cat"], 10)
    write_images(root / "train" / "dog", COLOURS["dog"], 7)
    for split in given[1:]:
        for name in ("cat", "dog"):
            write_images(root / split / name, COLOURS[name], 4, seed=9)
    raw = read(root)
    assert class_counts(raw.val_labels, 2) == val
    assert class_counts(raw.test_labels, 2) == test
    assert class_counts(raw.train_labels, 2) == train
    check_arrays(raw, 12)


def test_prepared_pixels_are_what_predict_sees(tmp_path):
    """An image prepared is round(255 * x) of what `load_image` gives `resnetlab predict`:
    exactly its 8-bit values for an 8-bit image, whatever its mode and size."""
    rng = np.random.default_rng(3)
    root = tmp_path / "pics"
    files = []
    for split in ("train", "val", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
    a = root / "train" / "a"
    rgb = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(a / "1 rgb.png")
    Image.fromarray(rgb).save(a / "2 rgb.jpeg", quality=90)
    Image.fromarray(rng.integers(0, 256, (50, 31), dtype=np.uint8)).save(a / "3 grey.bmp")
    Image.fromarray(rng.integers(0, 256, (20, 70, 4), dtype=np.uint8)).save(a / "4 rgba.png")
    Image.fromarray(rgb).convert("P").save(a / "5 palette.png")
    Image.fromarray(rng.integers(0, 2, (33, 33), dtype=np.uint8) * 255).convert("1").save(
        a / "6 bits.tif"
    )
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(a / "7 grey16.png")
    assert Image.open(a / "7 grey16.png").mode == "I;16"
    files += sorted(a.iterdir())
    for folder in ("train/b", "val/a", "val/b", "test/a", "test/b"):
        path = root / folder / "x.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        if folder == "train/b":
            files.append(path)
    raw = read(root, image_size=32)
    assert len(raw.train_images) == len(files) == 8
    for image, path in zip(raw.train_images, files, strict=True):
        expected = np.rint(load_image(path, size=32).transpose(1, 2, 0) * 255).astype(np.uint8)
        np.testing.assert_array_equal(image, expected, err_msg=str(path))
    # A 32 x 32 8-bit image is not resampled: prepared, it is the file's own pixels.
    own = np.asarray(Image.open(root / "val" / "a" / "x.png"))
    np.testing.assert_array_equal(raw.val_images[0], own)


def test_sixteen_bit_greyscale_keeps_its_grey(tmp_path):
    root = tmp_path / "pics"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((30, 20), 32768, np.uint16)).save(root / name / f"{i}.png")
    raw = read(root)
    assert np.all(raw.train_images == round(32768 / 65535 * 255))  # 128, not clipped to 255


# --- hostile folders ---------------------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _missing(root: Path) -> str:
    return f"{root}: no such folder"


def _a_file(root: Path) -> str:
    root.write_text("x")
    return f"{root}: is a file, not a folder"


def _no_classes(root: Path) -> str:
    root.mkdir()
    (root / "photo.txt").write_text("x")
    return f"{root}: no class folders"


def _one_class(root: Path) -> str:
    write_images(root / "cat", COLOURS["cat"], 5)
    return f"{root}: only one class folder (cat/)"


def _empty_class(root: Path) -> str:
    make_flat(root, {"cat": 5, "dog": 5})
    (root / "eel").mkdir()
    (root / "eel" / "readme.txt").write_text("x")
    return f"{root / 'eel'}: a class folder without images"


def _too_few(root: Path) -> str:
    make_flat(root, {"cat": 5, "dog": 2})
    return f"{root / 'dog'}: 2 image(s), too few to split: at least 3 needed"


def _splits_differ(root: Path) -> str:
    for name in ("cat", "dog"):
        write_images(root / "train" / name, COLOURS[name], 5)
    for name in ("cat", "eel"):
        write_images(root / "val" / name, COLOURS[name], 2)
    return f"{root / 'val'}: lacks dog; has eel that train/ lacks"


def _empty_given_split_class(root: Path) -> str:
    for name in ("cat", "dog"):
        write_images(root / "train" / name, COLOURS[name], 5)
        (root / "test" / name).mkdir(parents=True)
    write_images(root / "test" / "dog", COLOURS["dog"], 1)
    return f"{root / 'test' / 'cat'}: a class folder without images"


def _beside_train(root: Path) -> str:
    for split in ("train", "validation"):
        for name in ("cat", "dog"):
            write_images(root / split / name, COLOURS[name], 5)
    return f"{root}: has train/ and also validation/"


def _no_train(root: Path) -> str:
    for split in ("training", "val"):
        for name in ("cat", "dog"):
            write_images(root / split / name, COLOURS[name], 5)
    return f"{root / 'val'}: holds class folders, but {root} has no train/"


def _nested(root: Path) -> str:
    make_flat(root, {"cat": 5, "dog": 5})
    write_images(root / "dog" / "puppies", COLOURS["dog"], 2)
    return f"{root / 'dog' / 'puppies'}: a folder inside the class folder dog/"


def _too_large(root: Path, monkeypatch) -> str:
    make_flat(root, {"cat": 5, "dog": 5})
    monkeypatch.setattr(folder_reader, "MAX_PREPARED_BYTES", 16 * 16 * 3 * 9)
    return f"{root}: 10 images at data.image_size=16 take "


CHECKED_FIRST = [
    _missing,
    _a_file,
    _no_classes,
    _one_class,
    _empty_class,
    _too_few,
    _splits_differ,
    _empty_given_split_class,
    _beside_train,
    _no_train,
    _nested,
    _too_large,
]


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The files `read_folder` decodes, in order."""
    seen: list[Path] = []
    real = folder_reader.decode_uint8

    def spy(path, size, name=None):
        seen.append(path)
        return real(path, size, name)

    monkeypatch.setattr(folder_reader, "decode_uint8", spy)
    return seen


@pytest.mark.parametrize("make", CHECKED_FIRST, ids=lambda f: f.__name__.strip("_"))
def test_unusable_folder_is_refused_in_one_line_before_decoding(
    tmp_path, make, decodes, monkeypatch
):
    root = tmp_path / "pics"
    args = (root, monkeypatch) if make is _too_large else (root,)
    expected = make(*args)
    with pytest.raises(ResnetlabError) as err:
        read(root, image_size=16)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected), message
    assert decodes == []  # refused before the first image was decoded


def test_too_large_says_how_many_how_much_and_what_to_do(tmp_path, monkeypatch):
    root = make_flat(tmp_path / "pics", {"cat": 5, "dog": 5})
    monkeypatch.setattr(folder_reader, "MAX_PREPARED_BYTES", 1 << 20)
    with pytest.raises(ResnetlabError) as err:
        read(root, image_size=512)
    assert str(err.value) == (
        f"{root}: 10 images at data.image_size=512 take 7.5 MiB as uint8, above the limit of "
        "1.0 MiB held in memory; lower data.image_size or use fewer images"
    )
    assert MAX_PREPARED_BYTES == 4 << 30  # the real limit: at most 5,461 images at 512 px


def _corrupt(path: Path) -> str:
    good = path.with_name("good.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(good)
    path.write_bytes(good.read_bytes()[:-40])  # truncated inside the pixel data
    good.unlink()
    return f"{path}: not an image ("


def _text(path: Path) -> str:
    path.write_text("remember to buy milk\n")
    return f"{path}: not an image (unknown or unsupported format); replace or remove the file"


def _huge(path: Path) -> str:
    png_header_only(path, 10_000, 8_000)
    return (
        f"{path}: 10000 x 8000 pixels, above the budget of {MAX_PIXELS / 1e6:g} megapixels; "
        "not decoded (shrink it first: the network sees 16 x 16 pixels)"
    )


@pytest.mark.parametrize(
    ("make", "from_header"),
    [(_corrupt, False), (_text, True), (_huge, True)],
    ids=["corrupt", "text", "huge"],
)
def test_unreadable_image_is_refused_naming_it(tmp_path, make, from_header, decodes):
    root = make_flat(tmp_path / "pics", {"cat": 5, "dog": 5})
    bad = root / "dog" / "bad.png"
    expected = make(bad)
    start = time.monotonic()
    with pytest.raises(ResnetlabError) as err:
        read(root, image_size=16)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and message.startswith(expected), message
    # Files Pillow cannot identify and oversized headers are found before any decoding; a
    # file corrupt past its header, only when decoding reaches it.
    assert decodes == [] if from_header else decodes[-1] == bad


# --- the prepare stage -------------------------------------------------------------------------


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run_stage(tmp_path: Path, root: Path, out: Path, **data: object) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"data": {"dataset": "folder", "path": str(root), "image_size": 16, **data}})
    )
    prepare_stage.run(argparse.Namespace(params=params, raw=tmp_path / "raw", out=out))


def test_prepare_stage_reads_a_folder_and_a_bad_file_changes_nothing(tmp_path):
    root = make_flat(tmp_path / "my pics", {"cat": 10, "dog": 7, "eel": 5})
    out = tmp_path / "prepared"
    run_stage(tmp_path, root, out)
    prepared = load_prepared(out)
    assert prepared.classes == ("cat", "dog", "eel") and prepared.dataset == "folder"
    assert prepared.image_size == 16
    counts = {s: class_counts(y) for s, y in prepared.labels.items()}
    assert counts == {"train": [7, 5, 3], "val": [1, 1, 1], "test": [2, 1, 1]}
    for split, images in prepared.images.items():
        assert images.shape == (len(prepared.labels[split]), 16, 16, 3)
    before = digest(out)

    # The same folder again: byte-identical files.
    again = tmp_path / "again"
    run_stage(tmp_path, root, again)
    assert digest(again) == before

    # A corrupt image, found while decoding: the previous arrays stay, byte for byte.
    (root / "eel" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ResnetlabError, match=r"eel/zz\.png: not an image") as err:
        run_stage(tmp_path, root, out)
    assert "\n" not in str(err.value)
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # A folder refused before decoding leaves it as well.
    shutil.rmtree(root / "eel")
    (root / "eel").mkdir()
    with pytest.raises(ResnetlabError, match="a class folder without images"):
        run_stage(tmp_path, root, out)
    assert digest(out) == before

"""The prepare stage: safe unpickling, validation, stratified split, subset, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cifar_archive import CreatesFile, make_archive
from conftest import SHARED_CIFAR

from resnetlab.cli import main
from resnetlab.core.errors import ResnetlabError
from resnetlab.data import archive as archive_reader
from resnetlab.data.archive import UnsafePickleError, read_archive, safe_unpickle
from resnetlab.data.datasets import CIFAR10
from resnetlab.data.prepared import channel_stats, load_prepared, prepare, split_indices


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    victim = tmp_path / "pwned.txt"
    payload = pickle.dumps({b"data": CreatesFile(str(victim)), b"labels": []}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to load io\.open"):
        safe_unpickle(payload, "data_batch_1")
    assert not victim.exists()

    # The same payload inside an archive, through the CLI: exit 1, a clear message, no file.
    raw = tmp_path / "raw"
    make_archive(raw / "cifar-10-python.tar.gz", override={"data_batch_3": payload})
    params = tmp_path / "params.yaml"
    params.write_text("data: {val_size: 50}\n")
    code = main(
        ["prepare", "--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "p")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cifar-10-batches-py/data_batch_3" in err and "refusing" in err
    assert not victim.exists()
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, "3072"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0, 1, 2, 3]}, "uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, "3 labels for 4 images"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "label 10"),
        ({b"labels": [0]}, "no 'data' entry"),
    ],
)
def test_malformed_batch_names_the_file_and_the_problem(tmp_path, batch, message):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive, override={"data_batch_2": pickle.dumps(batch, protocol=2)})
    with pytest.raises(ResnetlabError, match="data_batch_2") as info:
        read_archive(archive, CIFAR10)
    assert message in str(info.value)


def test_not_an_archive(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ResnetlabError, match=r"not a readable \.tar\.gz"):
        read_archive(bad, CIFAR10)


def test_truncated_padded_and_oversized_archives(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive)
    blob = archive.read_bytes()
    reference = read_archive(archive, CIFAR10)

    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ResnetlabError, match=r"not a readable \.tar\.gz .*end-of-stream"):
        read_archive(archive, CIFAR10)
    archive.write_bytes(blob[:-4])  # the gzip trailer's size field is missing
    with pytest.raises(ResnetlabError, match=r"not a readable \.tar\.gz"):
        read_archive(archive, CIFAR10)
    archive.write_bytes(blob[:-8] + b"\0" * 8)  # wrong CRC
    with pytest.raises(ResnetlabError, match=r"not a readable \.tar\.gz"):
        read_archive(archive, CIFAR10)

    archive.write_bytes(blob + b"\0" * 100)  # zero padding after the member, as gzip allows
    assert np.array_equal(read_archive(archive, CIFAR10).train_images, reference.train_images)

    archive.write_bytes(blob)
    monkeypatch.setattr(
        archive_reader, "MAX_TAR_BYTES", 100_000
    )  # the tiny archive inflates to ~1 MB
    with pytest.raises(ResnetlabError, match="decompresses to more than 100,000 bytes"):
        read_archive(archive, CIFAR10)


def test_channel_stats_equal_the_float64_formula():
    # The exact integer path must round exactly as mean/std over a float64 copy did (the
    # prepared meta.json may not change). Random small sets cross rounding halfway points often.
    rng = np.random.default_rng(0)
    cases = [
        rng.integers(lo, 256, size=(*rng.integers(1, [40, 6, 6]), 3), dtype=np.uint8)
        for lo in rng.integers(0, 255, 600)
    ]
    # Exact halfway ties (128 pixels: channel 2's mean is exactly 0.4515625 and 0.5078125):
    # only the float64 formula's own rounding noise decides these.
    for seed in (734, 96194):
        tie = np.random.default_rng(seed)
        cases.append(
            tie.integers(0, 256, size=(int(tie.integers(1, 400)), 1, 1, 3), dtype=np.uint8)
        )
    for images in cases:
        x = images.reshape(-1, 3).astype(np.float64) / 255
        expected = (tuple(x.mean(0).round(6).tolist()), tuple(x.std(0).round(6).tolist()))
        assert channel_stats(images) == expected, images.shape


def test_read_archive_layout(tiny_archive):
    raw = read_archive(tiny_archive[0], CIFAR10)
    assert raw.train_images.shape == (300, 32, 32, 3) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (100, 32, 32, 3)
    assert raw.train_labels.dtype == np.int64 and set(raw.train_labels) == set(range(10))
    assert raw.classes[0] == "airplane" and len(raw.classes) == 10


def test_pixels_are_decoded_as_rgb_planes(tmp_path):
    # Row = 1024 R values, then 1024 G, then 1024 B, each plane row-major.
    data = np.zeros((10, 3072), np.uint8)
    data[:, 0] = 11  # R of pixel (0, 0)
    data[:, 1024 + 33] = 22  # G of pixel (1, 1)
    data[:, 2048 + 1023] = 33  # B of pixel (31, 31)
    batch = pickle.dumps({b"data": data, b"labels": list(range(10))}, protocol=2)
    archive = tmp_path / "a.tar.gz"
    make_archive(archive, override={"data_batch_1": batch})
    img = read_archive(archive, CIFAR10).train_images[0]
    assert img[0, 0, 0] == 11 and img[1, 1, 1] == 22 and img[31, 31, 2] == 33


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    train, val = split_indices(labels, val_size=200, subset=0, seed=0, num_classes=10)
    assert len(train) == 800 and len(val) == 200
    assert not set(train) & set(val)
    assert np.bincount(labels[val], minlength=10).tolist() == [20] * 10
    again = split_indices(labels, val_size=200, subset=0, seed=0, num_classes=10)
    other = split_indices(labels, val_size=200, subset=0, seed=1, num_classes=10)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, other[1])


def test_subset_is_class_balanced_and_exact():
    labels = np.repeat(np.arange(10), 100)
    train, val = split_indices(labels, val_size=100, subset=205, seed=3, num_classes=10)
    assert len(train) == 205 and len(val) == 100
    counts = np.bincount(labels[train], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert not set(train) & set(val)
    with pytest.raises(ResnetlabError, match=r"data\.subset=5000 exceeds"):
        split_indices(labels, val_size=100, subset=5000, seed=3, num_classes=10)


def test_test_set_is_stored_untouched(tiny_archive):
    raw = read_archive(tiny_archive[0], CIFAR10)
    prepared = prepare(raw, val_size=50, subset=100, seed=0)
    assert np.array_equal(prepared.images["test"], raw.test_images)
    assert np.array_equal(prepared.labels["test"], raw.test_labels)
    assert len(prepared.labels["train"]) == 100 and len(prepared.labels["val"]) == 50


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prepare_stage_outputs_are_deterministic(tiny_archive, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    os.symlink(tiny_archive[0], raw / "cifar-10-python.tar.gz")
    params = tmp_path / "params.yaml"
    params.write_text("data: {val_size: 50, seed: 7}\n")
    outs = []
    for name in ("a", "b"):
        argv = [
            "prepare",
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / name),
        ]
        assert main(argv) == 0
        outs.append(_digest(tmp_path / name))
    assert outs[0] == outs[1]
    assert set(outs[0]) == {
        f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")
    } | {"meta.json"}

    loaded = load_prepared(tmp_path / "a", splits=("train", "val"))
    assert set(loaded.images) == {"train", "val"}  # the test set is not even loaded
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["counts"] == {"train": 250, "val": 50, "test": 100}
    assert meta["class_counts"]["val"] == [5] * 10
    x = loaded.images["train"].astype(np.float64) / 255
    assert np.allclose(meta["mean"], x.mean((0, 1, 2)), atol=1e-6)
    assert np.allclose(meta["std"], x.std((0, 1, 2)), atol=1e-6)


def test_load_prepared_without_prepare(tmp_path):
    with pytest.raises(ResnetlabError, match="run `resnetlab prepare` first"):
        load_prepared(tmp_path)


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data/cifar10 is absent")
def test_real_cifar10_smoke(tmp_path):
    """Real data: assemble the archive, download it through a mirror path, prepare, load."""
    archive = subprocess.run(
        [str(SHARED_CIFAR / "assemble.sh"), str(tmp_path / "mirror")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    md5 = (SHARED_CIFAR / "MD5").read_text().strip()
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  url: 'file://{archive}'\n  md5: '{md5}'\n")
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    assert main(["download", "--params", str(params), "--out", str(raw)]) == 0
    assert main(["prepare", "--params", str(params), "--raw", str(raw), "--out", str(out)]) == 0
    start = time.perf_counter()
    data = load_prepared(out)
    load_s = time.perf_counter() - start
    assert {s: len(y) for s, y in data.labels.items()} == {
        "train": 45000,
        "val": 5000,
        "test": 10000,
    }
    assert len(data.classes) == 10 and data.classes[-1] == "truck"
    assert np.bincount(data.labels["val"]).tolist() == [500] * 10
    assert np.bincount(data.labels["test"]).tolist() == [1000] * 10
    print(f"load_prepared on real CIFAR-10: {load_s:.3f} s")

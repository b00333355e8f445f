"""Bad files and values (issue 30, section 5): each is refused with one line naming the file or
key, what is wrong and what to re-run, before any work; nothing is lost."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.prepared import load_prepared

AGAIN = "; re-run `dvc repro -f prepare`"


# ---------------------------------------------------------------------------------------------
# data/prepared/


@pytest.fixture
def prepared(tiny_prepared, tmp_path) -> Path:
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    return data


def huge_header(path: Path) -> None:
    """A .npy whose header declares 10^10 images (28 TiB) followed by a few bytes."""
    with path.open("wb") as fh:
        npy.write_array_header_1_0(
            fh, {"descr": "|u1", "fortran_order": False, "shape": (10**10, 32, 32, 3)}
        )
        fh.write(b"\0" * 64)


def truncated(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def set_label(value: int):
    def change(path: Path) -> None:
        labels = np.load(path)
        labels[3] = value
        np.save(path, labels)

    return change


def meta_with(**changes):
    def change(path: Path) -> None:
        meta = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                del meta[key]
            else:
                meta[key] = value
        path.write_text(json.dumps(meta))

    return change


BAD_PREPARED = {
    "object-dtype": (
        "train_labels.npy",
        lambda p: np.save(p, np.array([1, "x"], dtype=object), allow_pickle=True),
        "dtype object, expected int64",
    ),
    "pickle": (
        "train_images.npy",
        lambda p: p.write_bytes(pickle.dumps({"x": 1})),
        "not a .npy array file (the magic string is not correct",
    ),
    "truncated": ("train_images.npy", truncated, "where its header declares"),
    "28-TiB-header": ("train_images.npy", huge_header, "bytes where its header declares"),
    "label-10": ("train_labels.npy", set_label(10), "labels range over 0..10, expected 0..9"),
    "label-negative": ("val_labels.npy", set_label(-1), "labels range over -1..9, expected 0..9"),
    "label-float": (
        "train_labels.npy",
        lambda p: np.save(p, np.load(p).astype(np.float64)),
        "dtype float64, expected int64",
    ),
    "images-shape": (
        "val_images.npy",
        lambda p: np.save(p, np.load(p)[:, :16]),
        "images of shape (16, 32, 3), expected (32, 32, 3)",
    ),
    "meta-invalid": ("meta.json", lambda p: p.write_text("{not json"), "not readable JSON"),
    "meta-fifo": ("meta.json", lambda p: (p.unlink(), os.mkfifo(p)), "is a FIFO, not a file"),
    "meta-folder": ("meta.json", lambda p: (p.unlink(), p.mkdir()), "is a folder, not a file"),
    "meta-list": (
        "meta.json",
        lambda p: p.write_text("[1, 2]"),
        "expected a JSON object, got list",
    ),
    "meta-no-std": ("meta.json", meta_with(std=None), "missing key 'std'"),
    "classes-int": ("meta.json", meta_with(classes=10), "'classes' is 10, expected a list"),
    "std-zero": ("meta.json", meta_with(std=[0.2, 0, 0.2]), "expected 3 numbers > 0"),
    "mean-two": ("meta.json", meta_with(mean=[0.5, 0.5]), "'mean' is [0.5, 0.5], expected 3"),
}


@pytest.mark.parametrize("case", BAD_PREPARED)
def test_bad_prepared_file_is_refused_in_one_line(prepared, case):
    name, spoil, problem = BAD_PREPARED[case]
    spoil(prepared / name)
    with pytest.raises(ResnetlabError) as err:
        load_prepared(prepared, splits=("train", "val"))
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"{prepared / name}: ") and message.endswith(AGAIN), message
    assert problem in message, message


def test_good_prepared_data_loads(tiny_prepared):
    data = load_prepared(tiny_prepared)
    assert data.images["train"].dtype == np.uint8 and data.labels["test"].dtype == np.int64
    assert len(data.classes) == 10 and min(data.std) > 0


def test_train_refuses_an_out_of_range_label_before_training(
    prepared, tmp_path, monkeypatch, capsys
):
    """Was: `IndexError: Target 10 is out of bounds` after ~30 s of training."""
    import yaml
    from test_train import make_params

    from resnetlab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    set_label(10)(prepared / "train_labels.npy")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(make_params()))
    argv = ["train", "--params", "params.yaml", "--variant", "tiny", "--data", str(prepared)]
    assert main([*argv, "--out", "models/tiny", "--metrics", "metrics/tiny"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"resnetlab train: error: {prepared / 'train_labels.npy'}: labels range over 0..10, "
        f"expected 0..9 (one per class in meta.json){AGAIN}"
    ]
    assert not (tmp_path / "models/tiny/checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("name", "spoil", "problem"),
    [
        ("test_labels.npy", set_label(255), "labels range over 0..255, expected 0..9"),
        ("meta.json", lambda p: p.write_text('["cat"]'), "expected a JSON object, got list"),
        ("meta.json", meta_with(classes=10), "'classes' is 10, expected a list"),
    ],
    ids=["label-255", "meta-list", "classes-int"],
)
def test_mistakes_page_shows_the_one_line(app_project, tmp_path, monkeypatch, name, spoil, problem):
    """Was: the page crashed (IndexError on label 255, TypeError/KeyError on such a meta.json)."""
    from app_project import mlflow_uri
    from test_webapp import open_page

    root = tmp_path / "project"
    shutil.copytree(app_project, root, ignore=shutil.ignore_patterns("mlruns", "*.pt"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri(root))
    path = root / "data" / "prepared" / name
    spoil(path)
    at = open_page("mistakes")
    assert not at.exception, at.exception
    (shown,) = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]  # as Markdown shows it
    assert "\n" not in shown and shown.startswith(f"{path}: ") and problem in shown
    assert shown.endswith(AGAIN)


# ---------------------------------------------------------------------------------------------
# Values in params.yaml and on the command line


def run_train(tmp_path: Path, params: dict, *extra: str) -> int:
    import yaml

    from resnetlab.cli import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["train", "--params", "params.yaml", "--variant", "tiny", "--data", "prepared"]
    return main([*argv, *extra, "--out", "models/tiny", "--metrics", "metrics/tiny"])


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"name": "resnet_v1", "depth": 6_000_000_002}, "resnet_v1.depth: 6000000002"),
        ({"name": "resnet_v2", "depth": 6_000_000_002}, "resnet_v2.depth: 6000000002"),
        ({"name": "plain", "depth": 1208}, "plain.depth: 1208"),
    ],
)
def test_a_depth_beyond_the_deepest_published_net_is_refused_at_once(
    tiny_prepared, tmp_path, monkeypatch, capsys, model, key
):
    """Was: 96 s of building, then `SystemError`."""
    import time

    from test_train import make_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shutil.copytree(tiny_prepared, tmp_path / "prepared")
    started = time.monotonic()
    assert run_train(tmp_path, make_params({"model": model})) == 1
    assert time.monotonic() - started < 30
    assert capsys.readouterr().err.splitlines() == [
        f"resnetlab train: error: {key} is not allowed; expected a depth of at most 1202 "
        "(ResNet-1202, the deepest published CIFAR net)"
    ]


def test_a_gradient_depth_beyond_the_bound_is_refused():
    from test_config import params

    from resnetlab.core.errors import ConfigError
    from resnetlab.core.params import parse_params

    with pytest.raises(ConfigError, match=r"^diagnose.gradient_depths\[0\]: 6000000002 is not"):
        parse_params({**params(), "diagnose": {"gradient_depths": [6_000_000_002]}})


def test_a_seed_torch_cannot_take_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """Was: `seeds: [2**70]` passed validation, then `Overflow when unpacking long` in
    `torch.manual_seed`; `--seed` took any integer too."""
    from test_train import make_params

    monkeypatch.chdir(tmp_path)
    rule = "expected an integer in 0..4294967295 (2**32 - 1)"
    assert run_train(tmp_path, {**make_params(), "seeds": [2**70]}) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"resnetlab train: error: seeds[0]: {2**70} is not allowed; {rule}"
    ]
    assert run_train(tmp_path, make_params(), "--seed", str(2**70)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"resnetlab train: error: seeds: {2**70} is not allowed; {rule}"
    ]
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------------------------------------
# model.json nested 200k deep: a record of the train stage (tests/test_records.py) and the
# program inside a logged model's pt2 archive


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: Path("/dev/zero"), "is a device, not a file"),
        (lambda tmp: _fifo(tmp / "params.yaml"), "is a FIFO, not a file"),
        (lambda tmp: tmp, "is a folder, not a file"),
        (lambda tmp: _write(tmp / "params.yaml", b"a" * (1 << 21)), "larger than 1048576 bytes"),
        (lambda tmp: _write(tmp / "params.yaml", b"seeds: [\xff]\n"), "not UTF-8 text"),
    ],
    ids=["dev-zero", "fifo", "folder", "2-MiB", "not-utf8"],
)
def test_a_params_file_that_is_not_one_is_refused_in_one_line(tmp_path, capsys, make, problem):
    """Was: MemoryError after reading /dev/zero without end, a FIFO waited on forever, an
    `IsADirectoryError` traceback. Only a regular file of at most 1 MiB is read."""
    import subprocess
    import sys

    params = make(tmp_path)
    argv = ["train", "--params", str(params), "--variant", "tiny", "--data", "prepared"]
    argv += ["--out", "models/tiny", "--metrics", "metrics/tiny"]
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,  # a FIFO would hang here before
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"resnetlab train: error: {params}: {problem}; expected a params.yaml\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["params.yaml"] if params.parent == tmp_path else []
    )


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def test_a_logged_model_whose_program_is_nested_200k_deep_is_refused(tmp_path, capsys):
    """Was: `RecursionError` from `json.loads` in the archive check."""
    import torch
    from model_files import ARCHIVE, rewrite_archive
    from PIL import Image

    from resnetlab.cli import main
    from resnetlab.data.datasets import CIFAR10_CLASSES as CLASSES
    from resnetlab.evaluate.classifier import Classifier
    from resnetlab.models import build_model
    from resnetlab.tracking import model_io

    torch.manual_seed(0)
    net = build_model("resnet_v1", depth=8, num_classes=10)
    clf = Classifier(net, (0.5,) * 3, (0.25,) * 3).eval()
    folder = tmp_path / "model"
    example = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    model_io.save_model_artifact(clf, folder, example, CLASSES)
    deep = b"[" * 200_000 + b"]" * 200_000
    rewrite_archive(folder, lambda name, _: deep if name == "models/model.json" else None)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)

    assert main(["predict", "--model-uri", str(folder), str(image)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"resnetlab predict: error: {folder / ARCHIVE}: record 'models/model.json' is nested "
        "too deeply; the model is not loaded"
    ]

"""Datasets beyond CIFAR-10: the registry (`data.dataset`), CIFAR-100 from its archive format, and
a user's image folder, through the real pipeline (`dvc repro`, `dvc exp run -S`), the model
files, MLflow's logged model served over HTTP (`resnetlab serve`, MLflow's scoring server),
`resnetlab predict` and the web app's pages."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cifar_archive import CIFAR100_COARSE, CIFAR100_FINE, CreatesFile, make_cifar100_archive
from dvc_project import DvcProject, tiny_params
from PIL import Image

from resnetlab.core.errors import ConfigError, ResnetlabError
from resnetlab.core.params import load_params
from resnetlab.core.records import ModelRecord
from resnetlab.data.archive import read_archive
from resnetlab.data.datasets import CIFAR10, CIFAR100, DATASETS
from resnetlab.data.datasets import CIFAR100_COARSE as COARSE
from resnetlab.data.prepared import load_prepared, prepare

# A folder's classes, deliberately none of CIFAR-10's.
FOLDER_CLASSES = ("fern", "lichen", "moss")
COLOURS = {"fern": (40, 160, 60), "lichen": (200, 200, 90), "moss": (60, 90, 40)}
VARIANTS = ("resnet8", "transfer")


@pytest.fixture(scope="module")
def cifar100_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("cifar100") / CIFAR100.archive_name
    return path, make_cifar100_archive(path)


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def make_folder(root: Path, per_class: int = 24) -> Path:
    """Images of `FOLDER_CLASSES`, each class its own colour: sizes, formats and modes vary as
    a user's photos do (PNG and JPEG; RGB, greyscale, RGBA; 20 to 64 pixels a side)."""
    rng = np.random.default_rng(7)
    for c, name in enumerate(FOLDER_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 65)), int(rng.integers(20, 65))
            base = np.array(COLOURS[name], dtype=np.int16)
            pixels = np.clip(base + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            kind = (i + c) % 3
            if kind == 0:
                image.save(folder / f"{i:03d}.png")
            elif kind == 1:
                image.save(folder / f"{i:03d}.JPG", quality=95)
            else:
                image.convert("RGBA").save(folder / f"img {i:03d}.png")
    return root


# --- the registry and the config ---------------------------------------------------------------


def test_the_registry_declares_each_dataset_once():
    assert list(DATASETS) == ["cifar10", "cifar100", "cifar100_coarse", "folder"]
    assert (CIFAR10.num_classes, CIFAR100.num_classes, COARSE.num_classes) == (10, 100, 20)
    assert CIFAR100.archive_name == COARSE.archive_name  # one archive, two label sets


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"dataset": "imagenet"},
            "data.dataset: 'imagenet' is not allowed; expected "
            "cifar10, cifar100, cifar100_coarse, folder",
        ),
        ({"url": "/mirror/c.tar.gz"}, "data.md5"),
        ({"dataset": "folder", "val_fraction": 0.5, "test_fraction": 0.5}, "data.test_fraction"),
        ({"dataset": "folder", "image_size": 4}, "data.image_size"),
    ],
)
def test_bad_data_params_are_refused_in_one_line_naming_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        load_params(write_params(tmp_path / "params.yaml", data))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_archive_dataset_defaults_to_its_official_archive(tmp_path):
    data = load_params(write_params(tmp_path / "p.yaml", {"dataset": "cifar100"})).data
    assert data.archive_source() == (CIFAR100.url, CIFAR100.md5)
    mirror = {"dataset": "cifar100", "url": "/m/x.tar.gz", "md5": "0" * 32}
    data = load_params(write_params(tmp_path / "p.yaml", mirror)).data
    assert data.archive_source() == ("/m/x.tar.gz", "0" * 32)


# --- CIFAR-100 -----------------------------------------------------------------------------------


def test_cifar100_reads_its_fine_or_its_coarse_labels(cifar100_archive):
    archive, _ = cifar100_archive
    fine = read_archive(archive, CIFAR100)
    coarse = read_archive(archive, COARSE)
    assert fine.classes == tuple(CIFAR100_FINE) and coarse.classes == tuple(CIFAR100_COARSE)
    assert fine.train_images.shape == (1000, 32, 32, 3) and fine.test_images.shape[0] == 200
    assert np.array_equal(fine.train_images, coarse.train_images)
    assert np.array_equal(coarse.train_labels, fine.train_labels // 5)
    prepared = prepare(fine, val_size=100, subset=300, seed=0, dataset="cifar100")
    assert np.bincount(prepared.labels["train"], minlength=100).tolist() == [3] * 100
    assert np.bincount(prepared.labels["val"], minlength=100).tolist() == [1] * 100


def test_an_archive_of_another_dataset_is_refused_in_one_line(cifar100_archive, tiny_archive):
    with pytest.raises(ResnetlabError) as err:
        read_archive(tiny_archive[0], CIFAR100)
    assert str(err.value) == (
        f"{tiny_archive[0]}: missing cifar-100-python/meta (is this the CIFAR-100 archive?)"
    )
    with pytest.raises(ResnetlabError, match="is this the CIFAR-10 archive"):
        read_archive(cifar100_archive[0], CIFAR10)


def test_a_tampered_cifar100_archive_runs_nothing_and_writes_nothing(tmp_path, capsys):
    from resnetlab.cli import main

    victim = tmp_path / "pwned.txt"
    payload = pickle.dumps({b"data": CreatesFile(str(victim)), b"fine_labels": []}, protocol=2)
    raw = tmp_path / "raw"
    make_cifar100_archive(raw / CIFAR100.archive_name, override={"train": payload})
    params = write_params(tmp_path / "params.yaml", {"dataset": "cifar100", "val_size": 100})
    out = tmp_path / "prepared"
    assert main(["prepare", "--params", str(params), "--raw", str(raw), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cifar-100-python/train: refusing to load io.open" in err and err.count("\n") == 1
    assert not victim.exists() and not out.exists()


@pytest.mark.parametrize(
    ("member", "batch", "message"),
    [
        ("train", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, "label 100"),
        ("train", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, "'fine_labels'"),
        ("meta", {b"fine_label_names": [b"a"] * 100}, "fine_label_names must list distinct"),
        ("meta", {b"coarse_label_names": []}, "no 'fine_label_names' entry"),
    ],
)
def test_a_malformed_cifar100_member_is_named_with_its_problem(tmp_path, member, batch, message):
    archive = tmp_path / CIFAR100.archive_name
    make_cifar100_archive(archive, override={member: pickle.dumps(batch, protocol=2)})
    with pytest.raises(ResnetlabError) as err:
        read_archive(archive, CIFAR100)
    assert f"cifar-100-python/{member}: " in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_folder_dataset_downloads_nothing(tmp_path, caplog):
    from resnetlab.pipeline import download

    params = write_params(tmp_path / "params.yaml", {"dataset": "folder", "path": "pics"})
    out = tmp_path / "raw"
    download.run(argparse.Namespace(params=params, out=out))
    assert out.is_dir() and not any(out.iterdir())


# --- the pipeline, end to end ------------------------------------------------------------------


def serve_and_ask(project: DvcProject, uri: str, batches: list[np.ndarray]) -> list[dict]:
    """Start `resnetlab serve` on `uri` in `project`, POST each batch to /invocations, stop it;
    each answer's JSON, or {"status": <HTTP status>, "message": ...} for a refusal."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "resnetlab", "serve", "--model-uri", uri, "--port", str(port)]
    log = project.root / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(cmd, cwd=project.root, env=project.env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/invocations"

    def ask(batch: np.ndarray) -> dict:
        body = json.dumps({"inputs": batch.tolist()}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "message": json.loads(exc.read()).get("message", "")}

    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                first = ask(batches[0])
                break
            except OSError:  # not listening yet
                time.sleep(0.3)
        else:
            pytest.fail(f"`resnetlab serve` did not answer:\n{log.read_text()[-3000:]}")
        return [first, *(ask(b) for b in batches[1:])]
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_a_folder_and_cifar100_through_the_pipeline_app_and_serving(
    cifar100_archive, tiny_archive, tmp_path, monkeypatch, capsys
):
    """`dvc repro` on a user's image folder (outside the repository), then the folder's class
    names everywhere: model file, per-class metrics, `resnetlab predict`, the registered model
    served over HTTP and the app's pages; adding an image re-runs prepare and what follows,
    nothing else; then `dvc exp run -S data.dataset=cifar100` on the same project."""
    folder = make_folder(tmp_path / "my images")
    params = tiny_params(*tiny_archive)
    params["data"].update(dataset="folder", path=str(folder), image_size=16)
    # ImageNet transfer's network too, its 1000-way head replaced by one output per folder class
    # (the pretrained weights need a download, so random ones here, frozen: a linear probe, whose
    # BatchNorm keeps its statistics, where training 50 random layers on 51 images diverges).
    params["variants"]["transfer"] = {
        "model": {
            "name": "resnet50_imagenet",
            "pretrained": False,
            "freeze_backbone": True,
            "input_size": 32,
        },
        "epochs": 1,
    }
    params["run_variants"] = ["resnet8", "transfer"]
    params["train"]["batch_size"] = 16  # a few batches of the 51 training images
    project = DvcProject(tmp_path / "proj", params)
    root = project.root

    ran = project.repro()
    assert set(ran) >= {"download", "prepare", "train@resnet8-0", "evaluate@resnet8-0", "compare"}
    assert not any((root / "data/raw").iterdir())  # nothing fetched
    prepared = load_prepared(root / "data/prepared")
    assert prepared.classes == FOLDER_CLASSES and prepared.dataset == "folder"
    assert prepared.images["train"].shape[1:] == (16, 16, 3)
    counts = {s: np.bincount(y, minlength=3).tolist() for s, y in prepared.labels.items()}
    # 24 per class: 5 test (20%), 2 val (10%), the rest to train.
    assert counts == {"train": [17] * 3, "val": [2] * 3, "test": [5] * 3}
    for variant in ("resnet8", "transfer"):
        per_class = pd.read_csv(root / f"metrics/{variant}/seed0/per_class.csv")
        assert list(per_class.iloc[:3, 0]) == list(FOLDER_CLASSES)
        record = ModelRecord.read(root / f"models/{variant}/seed0/model.pt")
        assert record.classes == FOLDER_CLASSES and record.image_size == 16
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["dataset"] == "folder" and meta["class_counts"]["test"] == [5, 5, 5]
    project.commit("the folder, trained")

    # `resnetlab predict` on one of the folder's images answers with the folder's classes.
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.env["MLFLOW_TRACKING_URI"])
    from resnetlab.cli import main

    sample = sorted((folder / "moss").iterdir())[0]
    assert main(["predict", "--variant", "resnet8", "--top-k", "3", str(sample)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{sample}: ") and all(c in line for c in FOLDER_CLASSES)

    # The registered model served over HTTP (`resnetlab serve`, MLflow's scoring server): the
    # folder's class names, 16 px input; a 32 px one is refused by the recorded signature.
    good = np.random.default_rng(0).random((2, 3, 16, 16)).round(4)
    answers = serve_and_ask(
        project, "models:/resnetlab-resnet8/1", [good, np.zeros((1, 3, 32, 32))]
    )
    rows = answers[0]["predictions"]
    assert [list(row) for row in rows] == [["class", "probability", *FOLDER_CLASSES]] * 2
    assert {row["class"] for row in rows} <= set(FOLDER_CLASSES)
    assert answers[1]["status"] == 400 and "(-1, 3, 16, 16)" in answers[1]["message"]

    # The app's pages on this project: Classify answers with a folder class; the others render.
    from streamlit.testing.v1 import AppTest

    from resnetlab.tools import app as app_stage

    at = AppTest.from_file(str(app_stage.APP_SCRIPT), default_timeout=120).run()
    assert not at.exception, at.exception
    at.file_uploader[0].set_value([(sample.name, sample.read_bytes(), "image/png")])
    at.run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if m.value.startswith(sample.stem)]  # "001\\.png: ..."
    everything = [m.value for m in at.markdown] + [e.value for e in at.error]
    assert len(shown) == 1 and any(f"**{c}**" in shown[0] for c in FOLDER_CLASSES), everything
    for page in ("mistakes", "compare"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)
    monkeypatch.chdir(tmp_path)

    # One more image: prepare and what follows it re-run; download and diagnose do not.
    Image.new("RGB", (30, 30), COLOURS["moss"]).save(folder / "moss" / "new.png")
    assert sorted(project.repro()) == sorted(
        ["prepare", "compare"] + [f"{s}@{v}-0" for s in ("train", "evaluate") for v in VARIANTS]
    )
    project.commit("one more image")

    # The same project on CIFAR-100, as an experiment.
    archive, md5 = cifar100_archive
    project.dvc(
        "exp", "run", "-n", "c100", "-S", "data.dataset=cifar100", "-S", f"data.url={archive}",
        "-S", f"data.md5={md5}", "-S", "data.val_size=100", "-S", "run_variants=[resnet8]",
    )  # fmt: skip
    prepared = load_prepared(root / "data/prepared", splits=())
    assert prepared.dataset == "cifar100" and prepared.classes == tuple(CIFAR100_FINE)
    per_class = pd.read_csv(root / "metrics/resnet8/seed0/per_class.csv")
    assert list(per_class.iloc[:100, 0]) == CIFAR100_FINE
    assert (root / "data/raw" / CIFAR100.archive_name).is_file()
    shown = project.dvc("exp", "show", "--csv", "--keep", "data.dataset").stdout
    assert "c100" in shown and "cifar100" in shown and "folder" in shown

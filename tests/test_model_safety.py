"""`resnetlab predict --model-uri` on tampered MLflow model folders: refused, nothing of them runs.

Each tampered folder starts as a real copy of what the train stage logs (`tracking.
save_model_artifact`) and carries a payload that touches a sentinel file when it runs: a pickle
in the pickle format's `data/model.pth`, a `code/` folder MLflow would put first on `sys.path`, or
records inside the pt2 archive that `torch.export.load` would unpickle, sympify or exec.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model_files import ARCHIVE, predict_uri, program_edit, random_image, rewrite_archive

from resnetlab.cli import main
from resnetlab.data.datasets import CIFAR10_CLASSES
from resnetlab.evaluate.classifier import Classifier
from resnetlab.models import build_model
from resnetlab.tracking import logged_model, model_io


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Classifier]:
    """A model folder exactly as the train stage logs it, and the eager model it came from."""
    torch.manual_seed(0)
    net = build_model("resnet_v1", depth=8, num_classes=10)
    clf = Classifier(net, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    folder = tmp_path_factory.mktemp("logged") / "model"
    # Batch of 4: torch.export makes the batch dimension dynamic only when the example's is > 1.
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    model_io.save_model_artifact(clf, folder, example, CIFAR10_CLASSES)
    return folder, clf.eval()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_image(tmp_path_factory.mktemp("images"))


class _Touch:
    """Unpickling this touches `path`: what a hostile pickle would do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _copy(exported: tuple[Path, Classifier], tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    return folder


def test_the_logged_format_loads_and_predicts_like_the_eager_model(exported, image, capsys):
    folder, clf = exported
    model, classes, _ = logged_model.load(folder)
    assert classes == list(CIFAR10_CLASSES)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), clf(x), atol=1e-5)
    rc = main(["predict", "--model-uri", str(folder), str(image)])
    assert rc == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_pickle_format_is_refused_without_unpickling(exported, image, tmp_path, capsys):
    folder = _copy(exported, tmp_path)
    sentinel = tmp_path / "unpickled"
    (folder / ARCHIVE).unlink()  # what save_model(serialization_format="pickle") leaves
    (folder / "data" / "model.pth").write_bytes(pickle.dumps(_Touch(sentinel)))
    (folder / "data" / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")

    rc, err = predict_uri(capsys, folder, image)
    assert rc == 1
    assert err == (
        f"resnetlab predict: error: {folder / 'data' / 'model.pth'}: the model is saved in the "
        "pickle format, which can run code when loaded; only the pt2 format (torch.export) is "
        "loaded\n"
    )
    assert not sentinel.exists()


def test_model_code_is_refused_and_never_imported(exported, image, tmp_path):
    """In a fresh process, so that a `code/` folder put on sys.path would really shadow PIL
    (imported after the model loads) and sympy (imported while torch.export loads)."""
    folder = _copy(exported, tmp_path)
    sentinel = tmp_path / "imported"
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    spec["flavors"]["pytorch"]["code"] = "code"
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))
    for module in ("PIL", "sympy"):
        (folder / "code" / module).mkdir(parents=True)
        (folder / "code" / module / "__init__.py").write_text(
            f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
        )

    cmd = [sys.executable, "-m", "resnetlab", "predict", "--model-uri", str(folder), str(image)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stdout == ""
    assert res.stderr == (
        f"resnetlab predict: error: {folder / 'MLmodel'}: flavor pytorch declares code paths "
        "('code'); a model that brings its own Python code is not loaded\n"
    )
    assert not sentinel.exists()


def _pickled_weight(sentinel: Path) -> Callable[[str, bytes], bytes | None]:
    def edit(name: str, content: bytes) -> bytes | None:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(content)
            entry = next(e for e in config["config"].values() if e["path_name"] == "weight_0")
            entry["use_pickle"] = True  # torch.export.load: torch.load(weights_only=False)
            return json.dumps(config).encode()
        return pickle.dumps(_Touch(sentinel)) if name == "data/weights/weight_0" else None

    return edit


def _guard(sentinel: Path) -> Callable[[str, bytes], bytes | None]:
    # exec'd by ExportedProgram.module() into the guard function run on every call.
    code = f"L['images'].size()[0] >= 0 and __import__('pathlib').Path({str(sentinel)!r}).touch()"
    return program_edit(lambda p: p.update(guards_code=[code]))


def _shape_expression(sentinel: Path) -> Callable[[str, bytes], bytes | None]:
    # sympify()'d, i.e. eval'd, while the program is deserialised.
    payload = f"__import__('pathlib').Path({str(sentinel)!r}).touch() or Symbol('s0')"
    return program_edit(lambda p: _first_with(p, "expr_str").update(expr_str=payload))


def _first_with(node: object, key: str) -> dict:
    """The first JSON object below `node` (depth first) that has `key`."""
    if isinstance(node, dict):
        if key in node:
            return node
        children = list(node.values())
    else:
        children = list(node) if isinstance(node, list) else []
    for child in children:
        try:
            return _first_with(child, key)
        except LookupError:
            pass
    raise LookupError(key)


def _foreign_call(sentinel: Path) -> Callable[[str, bytes], bytes | None]:
    def change(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"

    return program_edit(change)


def _odd_text(sentinel: Path) -> Callable[[str, bytes], bytes | None]:
    return lambda name, content: content + b"\0" if name == "archive_format" else None


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_pickled_weight, "record 'data/weights/model_weights_config.json' stores"),
        (_guard, "record 'models/model.json' has a guard outside what export writes"),
        (_shape_expression, "has a shape expression outside what export writes"),
        (_foreign_call, "calls 'torch.hub.load', an operator none of the project's networks"),
        (_odd_text, "record 'archive_format' has unexpected content"),
    ],
    ids=["pickled-weight", "guard-code", "shape-expression", "foreign-call", "odd-record"],
)
def test_tampered_pt2_archive_is_refused(exported, image, tmp_path, capsys, tamper, message):
    folder = _copy(exported, tmp_path)
    sentinel = tmp_path / "ran"
    rewrite_archive(folder, tamper(sentinel))
    rc, err = predict_uri(capsys, folder, image)
    assert rc == 1
    assert err.startswith(f"resnetlab predict: error: {folder / ARCHIVE}: ")
    assert message in err and err.endswith("; the model is not loaded\n")
    assert len(err.splitlines()) == 1
    assert not sentinel.exists()


def test_an_added_record_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    with zipfile.ZipFile(folder / ARCHIVE, "a") as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{top}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(logged_model.UnsafeModelError, match="is not part of the format we write"):
        logged_model.load(folder)


def test_a_network_outside_the_operator_table_fails_when_it_is_logged(tmp_path: Path):
    """save_model_artifact runs the loaders' checks on its own export: a layer whose operator
    the table lacks (GELU here) is found when the model is trained and logged, in one line
    naming the operator, not later when predict or serving refuse it."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False),
        torch.nn.GELU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(10),
    )
    clf = Classifier(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    clf(torch.from_numpy(example))  # materialise the lazy layer
    with pytest.raises(logged_model.UnsafeModelError) as info:
        model_io.save_model_artifact(clf, tmp_path / "model", example, CIFAR10_CLASSES)
    message = str(info.value)
    assert "torch.ops.aten.gelu.default" in message and "\n" not in message

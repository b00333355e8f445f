"""`resnetlab predict`: a real (untrained) 8-layer model file, real image files, and the same model
logged to a real MLflow store and loaded back by URI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.core.params import parse_params
from resnetlab.core.records import ModelRecord
from resnetlab.data.datasets import CIFAR10_CLASSES
from resnetlab.evaluate.classifier import load_classifier
from resnetlab.evaluate.images import load_image
from resnetlab.models import build_model
from resnetlab.tracking import training_run

# One result line: `<path>: <class> <p>%, <class> <p>%, ...`
LINE = re.compile(r"^(?P<path>.+?): (?P<pairs>\w+ \d+\.\d%(?:, \w+ \d+\.\d%)*)$")
PAIR = re.compile(r"(\w+) (\d+\.\d)%")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp>/models/tiny/seed0/model.pt`, saved the way the train stage saves it."""
    torch.manual_seed(0)
    net = build_model("resnet_v1", depth=8, num_classes=10)
    # An untrained net's softmax is nearly uniform (all classes ~10%), so the order of the top
    # classes would hinge on float noise; a larger last layer spreads the probabilities.
    with torch.no_grad():
        net.fc.weight.mul_(30.0)
    config = parse_params({"variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}}}})
    record = ModelRecord(
        state_dict=net.state_dict(),
        variant=config.variant("tiny"),
        classes=CIFAR10_CLASSES,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        parameters=0,
        best_epoch=0,
        best_val_accuracy=0.0,
    )
    root = tmp_path_factory.mktemp("predict") / "models"
    record.write(root / "tiny" / "seed0" / "model.pt")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    png = folder / "wide.png"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "RGB").save(png)
    jpg = folder / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (100, 100), dtype=np.uint8), "L").save(jpg)
    text = folder / "notes.png"  # an image's name, not an image
    text.write_text("remember to buy milk\n")
    return {"png": png, "jpg": jpg, "text": text, "missing": folder / "gone.jpg"}


def _good(images: dict[str, Path]) -> list[Path]:
    return [images["png"], images["jpg"]]


def parse_lines(stdout: str) -> dict[str, list[tuple[str, float]]]:
    results = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        assert m, f"not a result line: {line!r}"
        results[m["path"]] = [(c, float(p)) for c, p in PAIR.findall(m["pairs"])]
    return results


def check_top(top: list[tuple[str, float]], k: int) -> None:
    assert len(top) == k
    assert all(c in CIFAR10_CLASSES for c, _ in top)
    assert len({c for c, _ in top}) == k
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True)
    # Each shown value is rounded to 0.1, so the k of them may overshoot 100 by k * 0.05.
    assert 0 < sum(probs) <= 100 + 0.05 * k


def predict_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["predict", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_load_image_converts_and_resizes(images) -> None:
    png = load_image(images["png"], size=32)
    assert png.shape == (3, 32, 32) and png.dtype == np.float32
    assert png.min() >= 0.0 and png.max() <= 1.0
    grey = load_image(images["jpg"], size=32)
    assert grey.shape == (3, 32, 32)
    # A greyscale image becomes RGB with three equal channels.
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])


def test_load_image_rgba_and_palette(tmp_path: Path) -> None:
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(rgba)
    pal = tmp_path / "pal.gif"
    Image.new("RGB", (10, 10), (0, 0, 255)).convert("P").save(pal)
    assert np.allclose(load_image(rgba, size=32)[:, 0, 0], [1.0, 0.0, 0.0])
    assert np.allclose(load_image(pal, size=32)[:, 5, 5], [0.0, 0.0, 1.0])


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: stored upside down (rotate 180 to view)
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    upright = load_image(path, size=32)
    assert upright[2, 16, 2] > 0.9 and upright[0, 16, 2] < 0.1  # blue now on the left
    assert upright[0, 16, 29] > 0.9 and upright[2, 16, 29] < 0.1


def test_predict_variant(models_dir, images, capsys) -> None:
    rc, out, err = predict_cli(
        capsys, "--variant", "tiny", "--models-dir", str(models_dir), *map(str, _good(images))
    )
    assert rc == 0, err
    results = parse_lines(out)
    assert list(results) == [str(images["png"]), str(images["jpg"])]  # input order
    for top in results.values():
        check_top(top, 3)

    # The printed classes are the model's top classes on the same preprocessing.
    clf, _ = load_classifier(models_dir / "tiny" / "seed0" / "model.pt")
    with torch.no_grad():
        logits = clf(torch.from_numpy(np.stack([load_image(p, size=32) for p in _good(images)])))
    expected = logits.topk(3, dim=1).indices.tolist()
    for top, idx in zip(results.values(), expected, strict=True):
        assert [c for c, _ in top] == [CIFAR10_CLASSES[i] for i in idx]


def test_predict_reports_bad_files_and_classifies_the_rest(models_dir, images, capsys) -> None:
    argv = [images["png"], images["text"], images["jpg"], images["missing"]]
    rc, out, err = predict_cli(
        capsys, "--variant", "tiny", "--models-dir", str(models_dir), *map(str, argv)
    )
    assert rc == 1
    assert list(parse_lines(out)) == [str(images["png"]), str(images["jpg"])]
    err_lines = err.splitlines()
    assert err_lines[0].startswith(f"error: {images['text']}: not an image (")
    assert err_lines[1] == f"error: {images['missing']}: not an image (no such file)"
    assert err_lines[-1] == (
        f"resnetlab predict: error: 2 of 4 files could not be classified: "
        f"{images['text']}, {images['missing']}"
    )
    assert "Traceback" not in err


def test_predict_only_bad_files(models_dir, images, capsys) -> None:
    rc, out, err = predict_cli(
        capsys, "--variant", "tiny", "--models-dir", str(models_dir), str(images["text"])
    )
    assert rc == 1 and out == ""
    assert "1 of 1 files could not be classified" in err


def test_predict_json(models_dir, images, capsys) -> None:
    argv = [*map(str, _good(images)), str(images["text"])]
    rc, out, _ = predict_cli(
        capsys,
        "--variant",
        "tiny",
        "--models-dir",
        str(models_dir),
        "--top-k",
        "10",
        "--json",
        *argv,
    )
    assert rc == 1
    entries = json.loads(out)
    assert [e["image"] for e in entries] == argv
    for entry in entries[:2]:
        probs = [t["probability"] for t in entry["top"]]
        assert sorted(t["class"] for t in entry["top"]) == sorted(CIFAR10_CLASSES)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)  # all ten classes
    assert entries[2]["error"].startswith(f"{images['text']}: not an image")


@pytest.mark.parametrize("k", ["0", "11", "three"])
def test_top_k_out_of_range_is_rejected(models_dir, images, capsys, k) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--variant", "tiny", "--top-k", k, str(images["png"])])
    assert exc.value.code == 2
    assert "--top-k" in capsys.readouterr().err


def test_top_k_one_and_ten(models_dir, images, capsys) -> None:
    for k in (1, 10):
        rc, out, err = predict_cli(
            capsys, "--variant", "tiny", "--models-dir", str(models_dir), "--top-k", str(k),
            str(images["png"]),
        )  # fmt: skip
        assert rc == 0, err
        (top,) = parse_lines(out).values()
        check_top(top, k)


def test_exactly_one_model_source(images, capsys) -> None:
    for argv in (
        ["predict", str(images["png"])],
        ["predict", "--variant", "tiny", "--model-uri", "runs:/x/model", str(images["png"])],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_missing_variant_is_one_line(models_dir, images, capsys) -> None:
    rc, out, err = predict_cli(
        capsys, "--variant", "nope", "--models-dir", str(models_dir), str(images["png"])
    )
    assert rc == 1 and out == ""
    assert err.startswith("resnetlab predict: error: ") and "no trained model" in err
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The model as the train stage logs it to MLflow


@pytest.fixture(scope="module")
def logged(models_dir, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking URI, model URI) of the tiny model logged with `training_run.TrainingRun`."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    clf, record = load_classifier(models_dir / "tiny" / "seed0" / "model.pt")
    # Batch of 4: MLflow exports the model with torch.export, which makes the batch dimension
    # dynamic only when the example's is > 1 (as in the train stage).
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    before = dict(os.environ)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # the default artifact root is relative to the working directory
        with training_run.TrainingRun("predict-test", "tiny", {"variant": "tiny"}, {}) as run:
            run.log_model(clf, example, record.classes)
            run.log_table(pd.DataFrame({"epoch": [1], "val_accuracy": [0.1]}), "history.json")
        # Tracking goes through an explicit client: no MLflow variable is left behind. Torch's
        # inductor exports its cache folder the first time it looks it up (here in the model's
        # pt2 export; in a whole test session often earlier): torch's own, not the tracking's.
        exempt = {"MLFLOW_TRACKING_URI", "TORCHINDUCTOR_CACHE_DIR"}
        assert {k: v for k, v in os.environ.items() if k not in exempt} == {
            k: v for k, v in before.items() if k not in exempt
        }
    return uri, f"runs:/{run.run_id}/tiny"  # the logged model is named after its variant


def test_predict_model_uri_matches_variant(models_dir, images, logged, monkeypatch, capsys):
    uri, model_uri = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    files = [*map(str, _good(images)), str(images["png"])]  # 3 images: any batch size works
    rc, by_uri, err = predict_cli(capsys, "--model-uri", model_uri, *files)
    assert rc == 0, err
    assert "Downloading artifacts" not in err  # no progress bar around the results
    _, by_variant, _ = predict_cli(
        capsys, "--variant", "tiny", "--models-dir", str(models_dir), *files
    )
    assert len(by_uri.splitlines()) == 3
    uri_results, variant_results = parse_lines(by_uri), parse_lines(by_variant)
    assert list(uri_results) == files[:2]  # the repeated path is one key
    for path, top in uri_results.items():
        check_top(top, 3)
        # The exported graph may round differently from the eager module, never by much.
        assert [c for c, _ in top] == [c for c, _ in variant_results[path]]
        assert [p for _, p in top] == pytest.approx([p for _, p in variant_results[path]], abs=0.1)

    # One image: a batch of 1 through the exported model.
    rc, one, _ = predict_cli(capsys, "--model-uri", model_uri, str(images["jpg"]))
    assert rc == 0
    assert [c for c, _ in parse_lines(one)[files[1]]] == [c for c, _ in uri_results[files[1]]]


def test_predict_bad_model_uri(images, logged, monkeypatch, capsys) -> None:
    uri, _ = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    bad = "runs:/0123456789abcdef0123456789abcdef/tiny"
    rc, out, err = predict_cli(capsys, "--model-uri", bad, str(images["png"]))
    assert rc == 1 and out == ""
    assert err.startswith(f"resnetlab predict: error: cannot load the MLflow model {bad} ")
    assert "Traceback" not in err


SERVER = (
    " (a model on a tracking server is reached with MLFLOW_TRACKING_URI set to the server and "
    "its runs:/ or models:/ URI)"
)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        (
            "http://127.0.0.1:9/model",
            "http://127.0.0.1:9/model: a web address, not a model URI" + SERVER,
        ),
        (
            "https://example.invalid/m",
            "https://example.invalid/m: a web address, not a model URI" + SERVER,
        ),
        (
            "runs:/0123456789abcdef",
            "runs:/0123456789abcdef: a runs:/ URI names the run and the model",
        ),
        ("models:/", "models:/: a models:/ URI names the model"),
        (" ", "no model URI given"),
    ],
)
def test_what_cannot_be_a_model_uri_is_one_line(images, logged, monkeypatch, capsys, uri, problem):
    """Was: `not enough values to unpack (expected 2, got 1)` for a web address, MLflow's own
    words for the rest; nothing is contacted for any of them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged[0])
    rc, out, err = predict_cli(capsys, "--model-uri", uri, str(images["png"]))
    assert (rc, out) == (1, "")
    assert err == (
        f"resnetlab predict: error: {problem}; expected runs:/<run id>/<variant>, "
        "models:/<name>/<version> or a local folder\n"
    )


def test_pyfunc_predicts_batches(models_dir, logged, monkeypatch) -> None:
    """What `mlflow models predict` and `mlflow models serve` call."""
    import mlflow.artifacts
    import mlflow.pyfunc

    uri, model_uri = logged
    # MLflow resolves `runs:/<run>/<logged model name>` with the tracking URI of the environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=uri)
    model = mlflow.pyfunc.load_model(local)
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    out = model.predict(x)
    clf, record = load_classifier(models_dir / "tiny" / "seed0" / "model.pt")
    # Class names and probabilities (the softmax of the network's logits), not logits.
    assert list(out.columns) == ["class", "probability", *record.classes] and len(out) == 2
    with torch.no_grad():
        probabilities = torch.softmax(clf(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(out[list(record.classes)].to_numpy(), probabilities, atol=1e-5)
    assert list(out["class"]) == [record.classes[i] for i in probabilities.argmax(1)]


@pytest.mark.slow
def test_mlflow_models_predict_cli(logged, tmp_path: Path, monkeypatch) -> None:
    uri, model_uri = logged
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"inputs": x.tolist()}))
    result = tmp_path / "output.json"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "models", "predict", "-m", model_uri, "-i", str(request)]
    cmd += ["-t", "json", "-o", str(result), "--env-manager", "local"]
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    res = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(result.read_text())["predictions"]
    assert len(rows) == 3 and all(set(row) >= {"class", "probability"} for row in rows)


def test_default_models_dir_is_dvc_yamls() -> None:
    import yaml

    from resnetlab.cli import build_parser

    repo = Path(__file__).resolve().parents[1]
    (dvc_vars,) = yaml.safe_load((repo / "dvc.yaml").read_text())["vars"]
    args = build_parser("predict").parse_args(["predict", "--variant", "v", "x.png"])
    assert args.models_dir == Path(dvc_vars["models"])


def test_version_is_the_installed_distributions(capsys) -> None:
    from importlib.metadata import version

    from resnetlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"resnetlab {version('resnetlab')}\n"

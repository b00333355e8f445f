"""`resnetlab serve`: a registered model is served by MLflow's scoring server only after its files
match the digest recorded when it was logged and pass the format checks; tampered models are
refused with one line and nothing of them runs.

Real files, a real SQLite store, real processes on loopback. The model is logged once the way
the train stage logs it (`TrainingRun.log_model`); more versions are registered from copies of
its folder with `ModelUpload` (as training does), then changed in the artifact store. Payloads
touch a sentinel file when they run; one plain-MLflow process (`mlflow.pyfunc.load_model`, what
`mlflow models serve` calls) shows that the same payloads do run there.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from resnetlab.cli import main
from resnetlab.data.datasets import CIFAR10_CLASSES as CLASSES
from resnetlab.evaluate.classifier import Classifier
from resnetlab.models import build_model
from resnetlab.tracking import model_digest, model_io, training_run
from resnetlab.tracking.store import client

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120  # the longest any process here may take (a loaded 2-core machine)


@dataclass
class Store:
    root: Path
    uri: str  # MLFLOW_TRACKING_URI
    run_id: str

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return {**env, "MLFLOW_TRACKING_URI": self.uri, "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A SQLite store holding `resnetlab-tiny` version 1, logged as the train stage logs it."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    net = build_model("resnet_v1", depth=8, num_classes=10)
    clf = Classifier(net, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    # Batch of 4: torch.export makes the batch dimension dynamic only when the example's is > 1.
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # the default artifact root is relative to the working directory
        with training_run.TrainingRun("serve-test", "tiny", {"variant": "tiny"}, {}) as run:
            run.log_model(clf.eval(), example, CLASSES)
        yield Store(root, uri, run.run_id)


@pytest.fixture
def tracked(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.chdir(store.root)
    return store


def _serve_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["serve", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tampering ----------------------------------------------------------------------------------


class _Touch:
    """Unpickling this touches `path`: what a hostile pickle would do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _edit_mlmodel(folder: Path, change: Callable[[dict], None]) -> None:
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    change(spec)
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))


def _own_loader(folder: Path, sentinel: Path) -> None:
    """`loader_module: evilmod` with `code: code`: MLflow puts code/ on sys.path, imports it."""

    def change(spec: dict) -> None:
        spec["flavors"]["python_function"].update(loader_module="evilmod", code="code")

    _edit_mlmodel(folder, change)
    (folder / "code").mkdir()
    (folder / "code" / "evilmod.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
        "def _load_pyfunc(path, model_config=None):\n    raise RuntimeError('payload ran')\n"
    )


def _pickled_model(folder: Path, sentinel: Path) -> None:
    """`loader_module: mlflow.pytorch` with a pickled `data/model.pth`: MLflow unpickles it."""

    def change(spec: dict) -> None:
        spec["flavors"]["python_function"]["loader_module"] = "mlflow.pytorch"

    _edit_mlmodel(folder, change)
    (folder / "data" / "model.pt2").unlink()
    (folder / "data" / "model.pth").write_bytes(pickle.dumps(_Touch(sentinel)))
    (folder / "data" / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")


def _relabelled(folder: Path, sentinel: Path) -> None:
    """A file changed and still in the format: the class names `cat` and `dog` swapped."""

    def change(spec: dict) -> None:
        classes = spec["metadata"]["classes"]
        i, j = classes.index("cat"), classes.index("dog")
        classes[i], classes[j] = classes[j], classes[i]

    _edit_mlmodel(folder, change)


def _other_loader(folder: Path, sentinel: Path) -> None:
    """Only the loader changed (to MLflow's own, on the intact pt2 folder)."""

    def change(spec: dict) -> None:
        spec["flavors"]["python_function"]["loader_module"] = "mlflow.pytorch"

    _edit_mlmodel(folder, change)


TAMPER = {
    "own_loader": _own_loader,
    "pickled_model": _pickled_model,
    "relabelled": _relabelled,
    "other_loader": _other_loader,
}


def _other_run(store: Store) -> str:
    """A new run beside the store's one, whose `runs:/<run>/tiny` stays version 1."""
    c = client()
    return c.create_run(c.get_run(store.run_id).info.experiment_id).info.run_id


def _register_copy(store: Store, staged: Path) -> str:
    """Register a copy of version 1's folder as a new version, as training does; its URI."""
    shutil.copytree(model_io.model_folder("models:/resnetlab-tiny/1"), staged)
    upload = model_io.ModelUpload()
    upload(staged, _other_run(store), "tiny", {}, client())
    return f"models:/resnetlab-tiny/{upload.model_version}"


@dataclass
class Refusal:
    folder: Path  # the model folder served (in the artifact store, or a local one)
    uri: str
    sentinel: Path
    result: subprocess.CompletedProcess[str] | None = None


# Registered versions changed after registration, and local folders served with
# --trust-unrecorded-path (no digest: the format checks alone must refuse them).
REGISTERED = ("own_loader", "pickled_model", "relabelled")
LOCAL = ("own_loader", "pickled_model", "other_loader")


# What `mlflow models serve` does with a model folder at start: `mlflow.pyfunc.load_model`.
PLAIN_MLFLOW = """
import sys, mlflow.pyfunc
for path in sys.argv[1:]:
    try:
        mlflow.pyfunc.load_model(path)
    except BaseException as exc:  # the payload has run by then, or not at all
        print(path, exc)
"""


@pytest.fixture(scope="module")
def refusals(store: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """Every tampered model given to `resnetlab serve` in its own process, all at once (with
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true, the most trusting setting), beside one process
    that loads the same payloads with plain MLflow (`control_*` sentinels)."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases: dict[str, Refusal] = {}
    control: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store.uri)
        mp.chdir(store.root)
        clean = model_io.model_folder("models:/resnetlab-tiny/1")
        for name in REGISTERED:
            uri = _register_copy(store, tmp / f"staged_{name}")
            folder = model_io.model_folder(uri)
            cases[f"registered_{name}"] = Refusal(folder, uri, tmp / f"ran_registered_{name}")
        for name in LOCAL:
            folder = tmp / f"local_{name}"
            shutil.copytree(clean, folder)
            cases[f"local_{name}"] = Refusal(folder, str(folder), tmp / f"ran_local_{name}")
        for name in ("own_loader", "pickled_model"):
            shutil.copytree(clean, tmp / f"control_{name}")
            TAMPER[name](tmp / f"control_{name}", tmp / f"control_{name}.ran")
            control.append(str(tmp / f"control_{name}"))
    for key, case in cases.items():
        TAMPER[key.split("_", 1)[1]](case.folder, case.sentinel)

    env = {**store.env, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    started: dict[str, subprocess.Popen[str]] = {}
    for key, case in cases.items():
        cmd = [sys.executable, "-m", "resnetlab", "serve", "--model-uri", case.uri]
        cmd += ["--port", str(_free_port())]
        if key.startswith("local_"):
            cmd.append("--trust-unrecorded-path")
        started[key] = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    started["control"] = subprocess.Popen(
        [sys.executable, "-c", PLAIN_MLFLOW, *control], cwd=tmp, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for key, process in started.items():
            out, err = process.communicate(timeout=WAIT_S)
            result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
            if key == "control":
                cases["control"] = Refusal(tmp, "", tmp, result)
            else:
                cases[key].result = result
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return cases


def _digest_line(case: Refusal) -> str:
    found = model_digest.folder_digest(case.folder)
    version = case.uri.removeprefix("models:/")
    recorded = client().get_model_version(*version.split("/")).tags[model_digest.DIGEST_TAG]
    return (
        f"{case.uri}: the files in {case.folder} are not the ones logged (digest "
        f"{found[7:19]}..., the registered version {version} records {recorded[7:19]}...): "
        "changed after it was logged, not served; log and register the model again "
        "(`resnetlab relog --variant <variant>`, or retrain)"
    )


def _expected(key: str, case: Refusal) -> str:
    if key.startswith("registered_"):
        return _digest_line(case)
    return {
        "local_own_loader": (
            f"{case.folder / 'MLmodel'}: flavor python_function declares code paths ('code'); "
            "a model that brings its own Python code is not loaded"
        ),
        "local_pickled_model": (
            f"{case.folder / 'data' / 'model.pth'}: the model is saved in the pickle format, "
            "which can run code when loaded; only the pt2 format (torch.export) is loaded"
        ),
        "local_other_loader": (
            f"{case.folder / 'MLmodel'}: python_function loader_module is 'mlflow.pytorch', "
            "not resnetlab.tracking.serving; only resnetlab's loader is served"
        ),
    }[key]


@pytest.mark.parametrize(
    "key", [f"registered_{n}" for n in REGISTERED] + [f"local_{n}" for n in LOCAL]
)
def test_a_tampered_model_is_refused_in_one_line_and_nothing_of_it_runs(
    refusals, tracked, key
) -> None:
    case = refusals[key]
    assert case.result is not None
    assert case.result.returncode == 1, case.result.stderr[-3000:]
    assert case.result.stdout == ""
    assert case.result.stderr == f"resnetlab serve: error: {_expected(key, case)}\n"
    assert not case.sentinel.exists()


def test_plain_mlflow_runs_the_same_payloads(refusals) -> None:
    """What `resnetlab serve` guards against: `mlflow.pyfunc.load_model`, which `mlflow models
    serve` calls, imports the MLmodel's loader from its code/ and unpickles model.pth."""
    control = refusals["control"]
    assert control.result is not None and control.result.returncode == 0, control.result.stderr
    for name in ("own_loader", "pickled_model"):
        assert (control.folder / f"control_{name}.ran").exists(), control.result.stdout


# --- in-process checks --------------------------------------------------------------------------


def test_training_records_the_digest_of_the_logged_files(tracked, capsys) -> None:
    version = client().get_model_version("resnetlab-tiny", "1")
    folder = model_io.model_folder("models:/resnetlab-tiny/1")
    digest = model_digest.folder_digest(folder)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert version.tags[model_digest.DIGEST_TAG] == digest
    model_id = version.source.removeprefix("models:/")
    assert client().get_logged_model(model_id).tags[model_digest.DIGEST_TAG] == digest
    for uri in ("models:/resnetlab-tiny/1", f"runs:/{tracked.run_id}/tiny", f"models:/{model_id}"):
        assert set(model_digest.recorded(uri)[1].values()) == {digest}
        rc, out, err = _serve_cli(capsys, "--model-uri", uri, "--check")
        assert (rc, out, err) == (0, f"{uri}: verified, {digest}\n", "")


def test_the_digest_covers_every_path_and_byte() -> None:
    base = {"MLmodel": b"a", "data/model.pt2": b"bc"}
    digests = {
        model_digest.digest(files)
        for files in (
            base,
            {"MLmodel": b"a", "data/model.pt2": b"bd"},
            {"MLmodel": b"a", "data/model.pt3": b"bc"},
            {"MLmodel": b"ab", "data/model.pt2": b"c"},  # bytes moved across the boundary
            {**base, "code/x.py": b""},
        )
    }
    assert len(digests) == 5
    assert model_digest.digest(dict(reversed(base.items()))) == model_digest.digest(base)


def test_a_local_folder_needs_trust_unrecorded_path(tracked, capsys) -> None:
    folder = model_io.model_folder("models:/resnetlab-tiny/1")
    rc, out, err = _serve_cli(capsys, "--model-uri", str(folder), "--check")
    assert (rc, out) == (1, "")
    assert err == (
        f"resnetlab serve: error: {folder}: a local folder has no digest recorded in the tracking "
        "store; serve its registered version (models:/<name>/<version>) or "
        "runs:/<run id>/<variant>, or pass --trust-unrecorded-path to serve the folder on the "
        "format checks alone\n"
    )
    rc, out, err = _serve_cli(
        capsys, "--model-uri", str(folder), "--check", "--trust-unrecorded-path"
    )
    assert (rc, err) == (0, "")
    assert out == f"{folder}: verified, {model_digest.folder_digest(folder)}\n"


def test_a_version_without_a_recorded_digest_is_refused(tracked, tmp_path, capsys) -> None:
    """A model registered before digests were recorded: logged model and version untagged."""
    c = client()
    staged = tmp_path / "model"
    shutil.copytree(model_io.model_folder("models:/resnetlab-tiny/1"), staged)
    run_id = _other_run(tracked)
    logged = c.create_logged_model(
        c.get_run(run_id).info.experiment_id, name="tiny", source_run_id=run_id
    )
    c.log_model_artifacts(logged.model_id, str(staged))
    c.finalize_logged_model(logged.model_id, "READY")
    version = c.create_model_version(
        "resnetlab-tiny", f"models:/{logged.model_id}", run_id=run_id,
        model_id=logged.model_id, await_creation_for=0,
    )  # fmt: skip
    uri = f"models:/resnetlab-tiny/{version.version}"
    rc, out, err = _serve_cli(capsys, "--model-uri", uri, "--check")
    assert (rc, out) == (1, "")
    assert err == (
        f"resnetlab serve: error: {uri}: the tracking store records no digest of this model's "
        "files (it was logged before resnetlab recorded one); log and register it again to "
        "serve it: `resnetlab relog --variant <variant>` in its project, or retrain\n"
    )


def test_pyfunc_settings_the_train_stage_never_writes_are_refused(tracked, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_io.model_folder("models:/resnetlab-tiny/1"), folder)

    def change(spec: dict) -> None:
        spec["flavors"]["python_function"]["predict_fn"] = "__init__"

    _edit_mlmodel(folder, change)
    rc, out, err = _serve_cli(
        capsys, "--model-uri", str(folder), "--check", "--trust-unrecorded-path"
    )
    assert (rc, out) == (1, "")
    assert err == (
        f"resnetlab serve: error: {folder / 'MLmodel'}: python_function sets predict_fn, which "
        "the train stage never writes; not served\n"
    )


def test_a_link_in_the_folder_is_refused(tracked, tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_io.model_folder("models:/resnetlab-tiny/1"), folder)
    (folder / "requirements.txt").unlink()
    (folder / "requirements.txt").symlink_to("/dev/zero")
    rc, out, err = _serve_cli(
        capsys, "--model-uri", str(folder), "--check", "--trust-unrecorded-path"
    )
    assert (rc, out) == (1, "")
    assert err == (
        f"resnetlab serve: error: {folder / 'requirements.txt'}: not a regular file (MLflow "
        "writes no links, FIFOs or devices)\n"
    )


@pytest.mark.slow
def test_a_model_in_a_remote_store_is_checked_the_same_way(store, tmp_path, monkeypatch, capsys):
    """Over a real tracking server (REST, proxied artifacts): the tags come back over HTTP and
    the folder is a fresh download each time."""
    from tracking_server import TrackingServer

    from resnetlab.tracking.store import experiment_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    staged = tmp_path / "staged"
    shutil.copytree(model_io.model_folder("models:/resnetlab-tiny/1"), staged)
    digest = model_digest.folder_digest(staged)
    with TrackingServer(tmp_path / "server") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        c = client()
        run_id = c.create_run(experiment_id(c, "remote")).info.run_id
        upload = model_io.ModelUpload()
        upload(staged, run_id, "tiny", {}, c)
        uri = f"models:/resnetlab-tiny/{upload.model_version}"
        assert _serve_cli(capsys, "--model-uri", uri, "--check") == (
            0, f"{uri}: verified, {digest}\n", ""
        )  # fmt: skip
        # Changed where the server keeps it.
        (stored,) = (tmp_path / "server" / "artifacts").rglob("MLmodel")
        _relabelled(stored.parent, tmp_path / "unused")
        rc, out, err = _serve_cli(capsys, "--model-uri", uri, "--check")
    assert (rc, out) == (1, "")
    assert err.startswith(f"resnetlab serve: error: {uri}: the files in ")
    assert "are not the ones logged" in err and err.count("\n") == 1


# --- serving ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_registered_model_is_served_and_stops_on_sigterm(store, tmp_path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "resnetlab", "serve", "--model-uri", "models:/resnetlab-tiny/1"]
    cmd += ["--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=store.env, stdout=log, stderr=log)
    images = np.random.default_rng(0).random((3, 3, 32, 32)).round(4)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    answer = None
    try:
        deadline = time.monotonic() + WAIT_S
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # The server's processes have ended: nothing listens, the port can be listened on again
    # (SO_REUSEADDR, as servers bind, past the closed connection's TIME_WAIT).
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 5):
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))

    rows = answer["predictions"]
    assert len(rows) == 3
    model = _network(store)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images.astype(np.float32))), 1).numpy()
    for row, probabilities in zip(rows, expected, strict=True):
        assert list(row) == ["class", "probability", *CLASSES]
        assert [row[c] for c in CLASSES] == pytest.approx(list(probabilities), abs=1e-5)
        assert row["class"] == CLASSES[int(probabilities.argmax())]
        assert row["probability"] == max(row[c] for c in CLASSES)
    url = f"http://127.0.0.1:{port}/invocations"
    assert (
        f"resnetlab serve: {url} (models:/resnetlab-tiny/1)\n"
        in (tmp_path / "serve.log").read_text()
    )


def _network(store: Store) -> torch.nn.Module:
    """Version 1's network, loaded in this process as `resnetlab predict` loads it."""
    from resnetlab.tracking import logged_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store.uri)
        return logged_model.load(model_io.model_folder("models:/resnetlab-tiny/1")).network


def test_the_command_imports_nothing_heavy_until_it_runs() -> None:
    from test_import_cost import loaded_after

    marks = loaded_after("import resnetlab.cli, resnetlab.tools.serve\nmark('imported')\n")
    assert marks["imported"] == []


def test_models_logged_before_the_package_move_still_find_their_loader():
    """Their MLmodel names `resnetlab.serving` as the pyfunc loader_module; MLflow imports that
    name, which must give the loader new models name (`resnetlab.tracking.serving`)."""
    import importlib

    from resnetlab.tracking import model_io, serving

    legacy = importlib.import_module("resnetlab.serving")
    assert legacy._load_pyfunc is serving._load_pyfunc
    assert model_io.PYFUNC_LOADER == "resnetlab.tracking.serving"


# --- bounded requests ---------------------------------------------------------------------------


def _post(port: int, body: bytes, length: int | None = None) -> tuple[int, dict]:
    """POST `body` to /invocations; `length` declares another Content-Length (the body is then
    cut short: the server must answer from the header alone)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body) if length is None else length))
        connection.endheaders()
        connection.send(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _refusal(port: int, body: bytes, length: int | None = None) -> tuple[int, dict]:
    """The status and MLflow's error fields (code and message) of a refused request."""
    status, answer = _post(port, body, length)
    return status, {k: answer.get(k) for k in ("error_code", "message")}


def _images(count: int, value: float = 0.5) -> bytes:
    return json.dumps({"inputs": np.full((count, 3, 32, 32), value).tolist()}).encode()


@pytest.mark.slow
def test_bad_and_oversized_requests_are_refused_in_one_line(store, tmp_path) -> None:
    """NaN, infinite and out-of-range pixels, too many images, a body over the limit and deeply
    nested JSON each get a 4xx with a one-line message; the server then still answers."""
    from resnetlab.tracking.serving import MAX_IMAGES
    from resnetlab.tracking.serving_app import MAX_BODY_BYTES, MAX_JSON_DEPTH

    port = _free_port()
    cmd = [sys.executable, "-m", "resnetlab", "serve", "--model-uri", "models:/resnetlab-tiny/1"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=tmp_path, env=store.env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()[-3000:]
            try:
                status, answer = _post(port, _images(2))
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200 and len(answer["predictions"]) == 2

        refusal = "image {} (of 2) has a pixel that is NaN, infinite or outside [0, 1]; expected "
        refusal += "N x 3 x 32 x 32 images in [0, 1]"
        for value in ("NaN", "Infinity", "-Infinity", "1.5", "-0.1"):
            body = _images(2).replace(b"0.5]", f"{value}]".encode(), 1)  # in image 0
            assert _refusal(port, body) == (
                400, {"error_code": "INVALID_PARAMETER_VALUE", "message": refusal.format(0)}
            ), value  # fmt: skip
        body = _images(2).replace(b"0.5]", b"NaN]")  # in every image: the first is named
        assert _refusal(port, body)[1]["message"] == refusal.format(0)

        count = MAX_IMAGES + 1
        body = json.dumps({"inputs": np.zeros((count, 3, 32, 32), np.int8).tolist()}).encode()
        assert _refusal(port, body) == (400, {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": f"{count} images in one request; at most {MAX_IMAGES}: send them as "
            "several requests",
        })  # fmt: skip

        length = MAX_BODY_BYTES + 1
        assert _refusal(port, b"{" * 65536, length=length) == (413, {
            "error_code": "REQUEST_LIMIT_EXCEEDED",
            "message": f"the request body is {length} bytes; at most {MAX_BODY_BYTES} (64 MiB): "
            "send fewer images per request",
        })  # fmt: skip

        deep = b"[" * 100_000 + b"]" * 100_000
        assert _refusal(port, b'{"inputs": ' + deep + b"}") == (400, {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": f"the request body nests 100001 levels deep; at most {MAX_JSON_DEPTH} "
            "(images are N x 3 x S x S lists under 'inputs')",
        })  # fmt: skip

        status, answer = _post(port, _images(3))  # still serving
        assert status == 200 and len(answer["predictions"]) == 3
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def test_json_depth_counts_brackets_and_braces() -> None:
    from resnetlab.tracking.serving_app import json_depth

    assert json_depth(b"") == 0
    assert json_depth(b'{"inputs": [[[[0.5]]]]}') == 5
    assert json_depth(b"[[]][[[]]]") == 3

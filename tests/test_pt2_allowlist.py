"""Model files that cannot touch the machine (issue 30, section 1), with real files throughout.

- Every model of the registry, exported the way the train stage logs it, calls exactly the
  operators of `tracking.pt2_ops.ALLOWED_OPS` (both ways: no model needs more, the table holds
  nothing no model uses).
- A real exported ResNet with `aten.from_file` nodes added, which without the table overwrote or
  leaked a file of the user's (`resnetlab predict` exited 0), is refused with one line, the file
  untouched, and a watched FIFO shows the secret was never even opened.
- `data/model.pt2` or `MLmodel` as a link to `/dev/zero`, a FIFO, a link out of the folder, and
  an archive of 1 MB that unpacks to 1 GB are refused at once with one line, nothing read.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import ARCHIVE, predict_uri, program_edit, random_image, rewrite_archive

from resnetlab.data.datasets import CIFAR10_CLASSES
from resnetlab.evaluate.classifier import Classifier
from resnetlab.models import build_model, list_models
from resnetlab.tracking import logged_model, model_io, pt2_ops

# Per model, the cheapest arguments for each code path that changes the exported graph (option
# A's zero-padding shortcut, bottleneck blocks, the up-sampling below input_size 32...).
EXPORTS: dict[str, list[dict]] = {
    "plain": [{"depth": 8}],
    "resnet_v1": [{"depth": 8, "shortcut": "A"}, {"depth": 8, "shortcut": "B"}],
    "resnet_v2": [{"depth": 8, "block": "basic"}, {"depth": 11, "block": "bottleneck"}],
    "resnet18": [{"width": 0.125}],
    "plain18": [{"width": 0.125}],
    "resnet34": [{"width": 0.125}],
    "resnet50": [{"width": 0.125}],
    "resnet50_imagenet": [{"input_size": 32}, {"input_size": 64, "freeze_backbone": True}],
}
BASE = "resnet_v1(depth=8, shortcut='A')"  # the export the attacks below start from


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each EXPORTS entry saved by `model_io.save_model_artifact`, as the train stage logs it:
    name(arguments) -> model folder."""
    root = tmp_path_factory.mktemp("exports")
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    folders = {}
    for name, variants in EXPORTS.items():
        for args in variants:
            torch.manual_seed(0)
            net = build_model(name, num_classes=len(CIFAR10_CLASSES), **args)
            clf = Classifier(net, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)).eval()
            key = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
            folders[key] = root / str(len(folders))
            model_io.save_model_artifact(clf, folders[key], example, CIFAR10_CLASSES)
    return folders


def _program(folder: Path) -> dict:
    with zipfile.ZipFile(folder / ARCHIVE) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/models/model.json")]
        return json.loads(archive.read(name))


def test_the_exports_cover_every_model_of_the_registry():
    assert sorted(EXPORTS) == list_models()


def test_every_model_exports_to_exactly_the_allowed_operators(exports):
    found: dict[str, dict[str, set[str]]] = {}
    for folder in exports.values():
        for target, args in pt2_ops.ops_of(_program(folder)).items():
            for arg, kinds in args.items():
                found.setdefault(target, {}).setdefault(arg, set()).update(kinds)
        logged_model.check_archive((folder / ARCHIVE).read_bytes(), folder / ARCHIVE)  # loads
    allowed = {t: {a: {k} for a, k in args.items()} for t, args in pt2_ops.ALLOWED_OPS.items()}
    table = "\n".join(
        f"    {t!r}: {{{', '.join(f'{a!r}: {sorted(k)}' for a, k in args.items())}}},"
        for t, args in sorted(found.items())
    )
    assert found == allowed, f"pt2_ops.ALLOWED_OPS is out of step; the models export to:\n{table}"


def _node(target: str, *inputs: tuple, outputs: list | None = None) -> dict:
    """A program node; `inputs` are (name, argument) or, for a keyword argument, (name,
    argument, 2)."""
    return {
        "target": target,
        "inputs": [{"name": i[0], "arg": i[1], "kind": (*i, 1)[2]} for i in inputs],
        "outputs": [{"as_tensor": {"name": "out"}}] if outputs is None else outputs,
        "metadata": {},
    }


X = ("self", {"as_tensor": {"name": "x"}})


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            _node("torch.ops.aten.from_file.default", ("filename", {"as_string": "/etc/passwd"})),
            "calls 'torch.ops.aten.from_file.default', an operator none of the project's "
            "networks exports to",
        ),
        (
            _node("torch.ops.aten.pad.default", X, ("mode", {"as_string": "reflect"})),
            "passes 'mode' to torch.ops.aten.pad.default, an argument the project's networks "
            "never set",
        ),
        (
            _node("torch.ops.aten.pad.default", X, ("pad", {"as_string": "/etc/passwd"})),
            "passes 'pad' to torch.ops.aten.pad.default as a string, not as the as_ints export "
            "writes",
        ),
        (
            _node("torch.ops.aten.relu.default", ("self", {"as_operator": "torch.ops.aten.x"})),
            "passes 'self' to torch.ops.aten.relu.default as an operator, not as the as_tensor",
        ),
        (
            _node("torch.ops.aten.pad.default", X, ("pad", {"as_ints": [0, "1"]})),
            "passes 'pad' to torch.ops.aten.pad.default as a malformed as_ints",
        ),
        (
            _node("torch.ops.aten.relu.default", X, outputs=[{"as_tensors": []}]),
            "has a torch.ops.aten.relu.default node with an output that is not one tensor",
        ),
        (
            _node("torch.ops.higher_order.cond", X),
            "calls 'torch.ops.higher_order.cond', an operator none of the project's networks",
        ),
    ],
    ids=["from_file", "extra-argument", "string", "operator", "malformed", "outputs", "hop"],
)
def test_a_node_outside_the_table_is_refused_with_one_line(node, message):
    program = {"graph_module": {"graph": {"nodes": [node]}}}
    with pytest.raises(pt2_ops.RefusedOperator) as refused:
        pt2_ops.check_nodes(program)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# --- the from_file attack of the issue, on a real export -----------------------------------------


def _meta(dtype: int, size: int) -> dict:
    return {
        "dtype": dtype, "sizes": [{"as_int": size}], "requires_grad": False,
        "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0}, "layout": 7,
    }  # fmt: skip


def _t(name: str) -> dict:
    return {"as_tensor": {"name": name}}


def _from_file(path: Path, write: bool) -> Callable[[dict], None]:
    """Nodes that fold 10 bytes of `path` into the logits: mapped shared, overwritten with "A"
    and multiplied by 0 (`write`: the file changes, the prediction does not), or read and added
    (the logits carry the bytes). Without the table, both ran under `resnetlab predict`."""
    aten = "torch.ops.aten."
    file_args = [("filename", {"as_string": str(path)}), ("shared", {"as_bool": write})]
    file_args += [("size", {"as_int": 10}), ("dtype", {"as_scalar_type": 1}, 2)]  # uint8
    nodes = [_node(aten + "from_file.default", *file_args, outputs=[_t("mapped")])]
    if write:
        fill = [("self", _t("mapped")), ("value", {"as_int": 65})]
        nodes.append(_node(aten + "fill_.Scalar", *fill, outputs=[_t("filled")]))
        zero = [("self", _t("filled")), ("other", {"as_int": 0})]
        nodes.append(_node(aten + "mul.Scalar", *zero, outputs=[_t("payload")]))
    else:
        nodes[0]["outputs"] = [_t("payload")]

    def change(program: dict) -> None:
        graph = program["graph_module"]["graph"]
        (logits,) = [out["as_tensor"]["name"] for out in graph["outputs"]]
        add = [("self", _t(logits)), ("other", _t("payload"))]
        graph["nodes"] += [*nodes, _node(aten + "add.Tensor", *add, outputs=[_t("y")])]
        for name in ("mapped", "filled", "payload"):
            graph["tensor_values"][name] = _meta(1, 10)
        graph["tensor_values"]["y"] = graph["tensor_values"][logits]
        graph["outputs"] = [_t("y")]
        signature = program["graph_module"]["signature"]
        signature["output_specs"] = [{"user_output": {"arg": _t("y")}}]

    return change


def _copy(exports: dict[str, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(exports[BASE], folder)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_image(tmp_path_factory.mktemp("images"))


class _WatchedFifo:
    """A FIFO with a thread blocked opening it for writing until something opens it for
    reading: `opened` tells whether anything did. Offers `data` to that reader."""

    def __init__(self, path: Path, data: bytes = b"s3cr3t-k3y!"):
        os.mkfifo(path)
        self.path, self.data, self.opened = path, data, threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        try:
            os.write(fd, self.data)
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer
        self.opened.wait(5)
        os.close(reader)
        self.thread.join(5)


def test_from_file_write_is_refused_and_the_file_untouched(exports, image, tmp_path, capsys):
    folder = _copy(exports, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"ORIGINAL CONTENT")
    before = victim.stat().st_mtime_ns
    rewrite_archive(folder, program_edit(_from_file(victim, write=True)))

    rc, err = predict_uri(capsys, folder, image)
    assert rc == 1
    assert err == (
        f"resnetlab predict: error: {folder / ARCHIVE}: record 'models/model.json' calls "
        "'torch.ops.aten.from_file.default', an operator none of the project's networks exports "
        "to; the model is not loaded\n"
    )
    assert victim.read_bytes() == b"ORIGINAL CONTENT"
    assert victim.stat().st_mtime_ns == before


def test_from_file_read_is_refused_and_the_secret_never_opened(exports, image, tmp_path, capsys):
    folder = _copy(exports, tmp_path)
    secret = _WatchedFifo(tmp_path / "secret")
    try:
        rewrite_archive(folder, program_edit(_from_file(secret.path, write=False)))
        rc, err = predict_uri(capsys, folder, image)
        assert not secret.opened.is_set()
    finally:
        secret.close()
    assert rc == 1
    assert err.endswith(
        "record 'models/model.json' calls 'torch.ops.aten.from_file.default', an operator none "
        "of the project's networks exports to; the model is not loaded\n"
    )
    assert len(err.splitlines()) == 1


# --- files that are not regular, and archives that unpack to more than they are ------------------


_LOAD = """import sys
from resnetlab.tracking import logged_model
try:
    logged_model.load(sys.argv[1])
except logged_model.UnsafeModelError as exc:
    sys.exit(f"refused: {exc}")
"""


@pytest.mark.parametrize("name", ["data/model.pt2", "MLmodel"])
def test_a_link_to_dev_zero_is_refused_at_once(exports, image, tmp_path, name):
    """In a process of its own with a bounded address space: read without end (as before), it
    would fail there rather than take the machine's memory. The archive through `predict`, the
    MLmodel through `logged_model.load` (what `mlflow models serve` calls: `predict` and the app
    find no MLmodel file there first)."""
    folder = _copy(exports, tmp_path)
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    if name == "MLmodel":
        cmd, prefix = [sys.executable, "-c", _LOAD, str(folder)], "refused"
    else:
        cmd = [sys.executable, "-m", "resnetlab", "predict", "--model-uri", str(folder), str(image)]
        prefix = "resnetlab predict: error"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
        preexec_fn=bounded,
    )  # fmt: skip
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (
        f"{prefix}: {folder / name}: is a symbolic link, not a regular file (MLflow writes no "
        "links, FIFOs or devices)\n"
    )


@pytest.mark.parametrize("name", ["data/model.pt2", "MLmodel"])
def test_a_fifo_is_refused_at_once_and_never_opened(exports, tmp_path, name):
    folder = _copy(exports, tmp_path)
    (folder / name).unlink()
    fifo = _WatchedFifo(folder / name)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            logged_model.load(folder)
        except BaseException as exc:
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    try:
        loader.start()
        loader.join(60)
        assert not loader.is_alive(), "loading blocked on the FIFO"
        assert not fifo.opened.is_set()
    finally:
        fifo.close()
    assert [str(exc) for exc in outcome] == [
        f"{folder / name}: is a FIFO, not a regular file (MLflow writes no links, FIFOs or devices)"
    ]


def test_links_out_of_the_folder_are_refused(exports, tmp_path):
    """Even to a good archive: a model folder holds what MLflow wrote there, nothing else."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(exports[BASE] / "data", elsewhere)
    folder = _copy(exports, tmp_path)
    (folder / ARCHIVE).unlink()
    (folder / ARCHIVE).symlink_to(elsewhere / "model.pt2")
    with pytest.raises(logged_model.UnsafeModelError) as refused:
        logged_model.load(folder)
    assert str(refused.value) == (
        f"{folder / ARCHIVE}: is a symbolic link, not a regular file (MLflow writes no links, "
        "FIFOs or devices)"
    )
    shutil.rmtree(folder / "data")
    (folder / "data").symlink_to(elsewhere)
    with pytest.raises(logged_model.UnsafeModelError) as refused:
        logged_model.load(folder)
    assert str(refused.value) == (
        f"{folder / 'data'}: is a symbolic link, not a folder (MLflow writes no links, FIFOs or "
        "devices)"
    )


def test_an_archive_that_unpacks_to_a_gigabyte_is_refused_unread(exports, image, tmp_path, capsys):
    """1 GB of zeros deflated to 1 MB as a weight record (torch.export.save compresses nothing):
    before, accepted and unpacked (60 s, 2.65 GB); now refused by the zip directory alone."""
    folder = _copy(exports, tmp_path)
    zeros = bytes(1 << 24)
    bomb = [zeros] * (10**9 // len(zeros)) + [bytes(10**9 % len(zeros))]
    rewrite_archive(
        folder,
        lambda name, content: bomb if name == "data/weights/weight_0" else None,
        compress_type=zipfile.ZIP_DEFLATED,
    )
    assert (folder / ARCHIVE).stat().st_size < 2 << 20
    start = time.monotonic()
    rc, err = predict_uri(capsys, folder, image)
    assert time.monotonic() - start < 10
    assert rc == 1
    top = zipfile.ZipFile(folder / ARCHIVE).namelist()[0].split("/")[0]
    assert err == (
        f"resnetlab predict: error: {folder / ARCHIVE}: record '{top}/data/weights/weight_0' is "
        "compressed; torch.export.save stores records as is; the model is not loaded\n"
    )


def test_a_record_that_holds_less_than_its_entry_declares_is_refused(exports, tmp_path):
    """A stored record whose directory entry claims 1 GB: refused once reading it falls short,
    not loaded by torch (which sizes its buffers by the directory)."""
    folder = _copy(exports, tmp_path)
    blob = bytearray((folder / ARCHIVE).read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as archive:
        (name,) = [n.encode() for n in archive.namelist() if n.endswith("/weights/weight_0")]
        entry = archive.start_dir  # the central directory: one entry per record
    while blob[entry + 46 : entry + 46 + len(name)] != name:
        entry = blob.index(b"PK\x01\x02", entry + 4)
    claimed = (10**9).to_bytes(4, "little")
    blob[entry + 20 : entry + 28] = claimed + claimed  # compressed and uncompressed size
    (folder / ARCHIVE).write_bytes(bytes(blob))
    with pytest.raises(logged_model.UnsafeModelError) as refused:
        logged_model.load(folder)
    assert str(refused.value) == (
        f"{folder / ARCHIVE}: record 'data/weights/weight_0' does not hold the 1000000000 bytes "
        "it declares; the model is not loaded"
    )

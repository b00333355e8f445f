"""Loading the model the train stage logs to MLflow, without running anything the model brings.

`mlflow.pytorch.load_model` unpickles `data/model.pth` when a model was saved in the pickle format
and puts the model's `code/` folder first on `sys.path`; `torch.export.load` itself unpickles the
weights, constants and example inputs of a `.pt2` archive with `weights_only=False`, `sympify`s
(evaluates) the symbolic shape expressions, and `.module()` `exec`s the archive's guard code on
the first call. A tampered model folder could run code through any of these.

So only the format `model_io.save_model_artifact` writes is accepted, and checked before torch
reads a byte of it: an MLmodel with the pytorch flavor, no code paths, `data/model.pt2` (never
`model.pth`); in the archive only the records `torch.export.save` writes for one program, every
tensor stored raw (`use_pickle: false`), example inputs that load with `weights_only=True`, graph
nodes that call only the operators our networks export to, with the arguments they pass
(`pt2_ops`: ATen as a whole can map files), and shape expressions and guards made of symbols,
numbers, arithmetic and comparisons. Anything else is refused with one line naming the file and
the record. The archive is read once into memory and loaded from those checked bytes.

Files are read as MLflow writes them: regular files, no links anywhere below the model folder (a
link to `/dev/zero` or a FIFO would be read without end or block), at most the size declared
when opened (plus one byte, to see a file that grows) and never more than a fixed cap; every
record of the archive is stored as is (torch.export.save compresses nothing, so a small archive
cannot unpack to gigabytes), the records together under the cap, each read back and checked
(CRC) at its declared size.

About 400 lines on purpose: every check a model folder passes before torch reads a byte of it is
here, so that the whole defence can be audited in one file (the operator table is `pt2_ops`).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.data.datasets import (
    CIFAR10_CLASSES,
    LEGACY_IMAGE_SIZE,
    MAX_IMAGE_SIDE,
    is_image_side,
)
from resnetlab.tracking import pt2_ops

if TYPE_CHECKING:
    import torch

MAX_MLMODEL_BYTES = 1 << 20
MAX_ARCHIVE_BYTES = 1 << 30  # file and records alike; ResNet-50 exports to 95 MB
MODEL_FILE = "data/model.pt2"

# Records of a `torch.export.save` archive of one program named "model", below its top folder.
_TEXT_RECORDS = {
    "archive_format": re.compile(r"pt2"),
    "archive_version": re.compile(r"\d{1,4}"),
    "byteorder": re.compile(r"little|big"),
    ".data/version": re.compile(r"\d{1,4}\n?"),
    ".data/serialization_id": re.compile(r"\d{1,64}"),
}
_PROGRAM = "models/model.json"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_RAW_RECORD = re.compile(r"data/(weights/weight|constants/tensor)_\d{1,9}")
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Shape expressions are written by `sympy.srepr` (`Symbol('s0', positive=True, integer=True)`,
# `Mul(Integer(2), ...)`); guards are Python over the inputs (`L['images'].size()[0] >= 2`).
_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
_NUMBER = re.compile(r"-?\d{1,30}(\.\d{0,30})?(e-?\d{1,3})?")
_FUNCTIONS = frozenset(
    {
        *("Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs"),
        *("Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan"),
        *("GreaterThan", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "floor"),
        *("ceiling", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv"),
        *("CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "TruncToFloat", "TruncToInt"),
        *("IsNonOverlappingAndDenseIndicator", "RoundToInt", "RoundDecimal", "ToFloat"),
        *("FloatPow", "PowByNatural", "IntTrueDiv", "FloatTrueDiv", "Identity"),
    }
)
_NAMES = frozenset({"true", "false", "oo", "zoo", "nan"})
_KEYWORDS = frozenset(
    {
        *("positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite"),
        *("zero", "nonzero", "even", "odd", "rational", "precision"),
    }
)
_GUARD_NAMES = frozenset({"L", "math", "inf"})
_GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "isnan", "inf"})
_EXPRESSION_NODES = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.Name,
    ast.Call, ast.Attribute, ast.Subscript, ast.Load, ast.And, ast.Or, ast.Add, ast.Sub,
    ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.Eq,
    ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.keyword,
)  # fmt: skip


class UnsafeModelError(ResnetlabError):
    """The model folder is not in the one format we load; nothing of it was run."""


class LoadedModel(NamedTuple):
    """A logged model's network ([0, 1] N x 3 x S x S images in, logits out), its class names
    (None when its metadata has none) and S, the side of the images it takes."""

    network: torch.nn.Module
    classes: list[str] | None
    image_size: int


def load(folder: Path) -> LoadedModel:
    """The network in the MLflow model `folder` (as `model_io.save_model_artifact` saved it),
    with its class names and input size from its metadata."""
    folder = Path(folder)
    meta = check_mlmodel(folder)
    blob = _read_archive(folder)
    check_archive(blob, folder / MODEL_FILE)
    import torch

    try:
        program = torch.export.load(io.BytesIO(blob))
        # check_guards=False: no guard function is generated (exec'd) from the archive; the
        # input checks the program's range constraints imply still run as a forward pre-hook.
        return LoadedModel(program.module(check_guards=False), meta.classes, meta.image_size)
    except Exception as exc:
        first = first_line(exc, 200)
        raise ResnetlabError(
            f"{folder / MODEL_FILE}: not a loadable exported model ({first})"
        ) from None


class ModelMetadata(NamedTuple):
    classes: list[str] | None
    image_size: int


def check_mlmodel(folder: Path) -> ModelMetadata:
    """Refuse anything but a pt2-format pytorch model without code; returns its metadata: class
    names, and the input's side (models logged before it was recorded are CIFAR-10's)."""
    path = folder / "MLmodel"
    try:
        spec = yaml.safe_load(read_regular(folder, "MLmodel", MAX_MLMODEL_BYTES).decode())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"{path}: not a readable MLmodel file ({exc})") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or not isinstance(flavors.get("pytorch"), dict):
        raise UnsafeModelError(f"{path}: no pytorch flavor; only PyTorch models are loaded")
    for name, flavor in flavors.items():
        if isinstance(flavor, dict) and flavor.get("code"):
            raise UnsafeModelError(
                f"{path}: flavor {name} declares code paths ({flavor['code']!r}); a model "
                "that brings its own Python code is not loaded"
            )
    if os.path.lexists(folder / "code"):
        raise UnsafeModelError(f"{folder / 'code'}: a model that brings Python code is not loaded")
    if flavors["pytorch"].get("model_data") != "data":
        raise UnsafeModelError(f"{path}: pytorch model_data is not 'data'")
    if os.path.lexists(folder / "data" / "model.pth"):
        raise UnsafeModelError(
            f"{folder / 'data' / 'model.pth'}: the model is saved in the pickle format, which "
            "can run code when loaded; only the pt2 format (torch.export) is loaded"
        )
    classes = (spec.get("metadata") or {}).get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) and len(c) < 200 for c in classes)
    ):
        raise UnsafeModelError(f"{path}: metadata.classes is not a list of names")
    size = (spec.get("metadata") or {}).get("image_size", LEGACY_IMAGE_SIZE)
    if not is_image_side(size):
        raise UnsafeModelError(f"{path}: metadata.image_size is not a side in 1..{MAX_IMAGE_SIDE}")
    return ModelMetadata(classes, size)


def read_regular(folder: Path, name: str, limit: int) -> bytes:
    """The regular file `name` ("data/model.pt2") below `folder`, of at most `limit` bytes.
    Refuses a link below the folder (the folder itself may be one: the user named it), a FIFO or
    device (seen by lstat, never opened, so nothing blocks) and a file that changes while read:
    reads the size it has once opened, plus one byte to see it grow."""
    fd, where = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), folder
    try:
        parts = name.split("/")
        for i, part in enumerate(parts):
            where, last = where / part, i == len(parts) - 1
            found = os.stat(part, dir_fd=fd, follow_symlinks=False)
            kind = next((k for test, k in _KINDS if test(found.st_mode)), "a socket")
            wanted = "a regular file" if last else "a folder"
            if kind != wanted:
                raise UnsafeModelError(
                    f"{where}: is {kind}, not {wanted} (MLflow writes no links, FIFOs or devices)"
                )
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            opened = os.open(part, flags | (os.O_NONBLOCK if last else os.O_DIRECTORY), dir_fd=fd)
            os.close(fd)
            fd = opened
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev, now.st_mode) != (found.st_ino, found.st_dev, found.st_mode):
                raise UnsafeModelError(f"{where}: replaced while it was opened")
        if now.st_size > limit:
            raise UnsafeModelError(f"{where}: larger than {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            content = stream.read(now.st_size + 1)
        if len(content) != now.st_size:
            raise UnsafeModelError(f"{where}: changed size while it was read")
        return content
    finally:
        os.close(fd)


_KINDS = (
    (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
)  # fmt: skip


def _read_archive(folder: Path) -> bytes:
    path = folder / MODEL_FILE
    try:
        return read_regular(folder, MODEL_FILE, MAX_ARCHIVE_BYTES)
    except FileNotFoundError:
        raise UnsafeModelError(f"{path}: not found; only the pt2 format is loaded") from None
    except OSError as exc:
        raise UnsafeModelError(f"{path}: not readable ({exc})") from None


class _Refused(Exception):
    """A record of the archive is not what `torch.export.save` writes for our models."""

    def __init__(self, record: str, why: str):
        super().__init__(f"record {record!r} {why}")


def check_archive(blob: bytes, path: Path) -> None:
    """Refuse a `.pt2` archive holding anything but what `torch.export.save` writes for one
    program with raw tensors; see the module docstring."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            _check_records(archive, _records(archive))
    except (zipfile.BadZipFile, OSError) as exc:
        first = first_line(exc, 200)
        raise UnsafeModelError(f"{path}: not a pt2 archive ({first})") from None
    except _Refused as exc:
        raise UnsafeModelError(f"{path}: {exc}; the model is not loaded") from None


def _records(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Record name (below the archive's one top folder) -> entry; refuses duplicates, paths
    outside the folder, compressed or encrypted records and an archive too large once unpacked
    (by its directory; each record is then read at its declared size, see `_check_records`)."""
    infos = [info for info in archive.infolist() if not info.is_dir()]
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _Refused(info.filename, "is compressed; torch.export.save stores records as is")
        if info.flag_bits & 0x1:
            raise _Refused(info.filename, "is encrypted")
    if sum(info.file_size for info in infos) > MAX_ARCHIVE_BYTES:
        raise _Refused("*", f"unpack to more than {MAX_ARCHIVE_BYTES} bytes")
    prefixes = {info.filename.split("/", 1)[0] for info in infos}
    if len(prefixes) != 1 or not _PREFIX.fullmatch(next(iter(prefixes))):
        raise _Refused("/", f"holds {len(prefixes)} top folders, not the one of one program")
    records: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        # A second entry of the same name could be the one torch reads, not the one checked.
        if not name or name in records or ".." in name.split("/") or "\\" in name:
            raise _Refused(info.filename, "is duplicated or not a plain path")
        records[name] = info
    return records


def _check_records(archive: zipfile.ZipFile, records: dict[str, zipfile.ZipInfo]) -> None:
    for name in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS):
        if name not in records:
            raise _Refused(name, "is missing")

    def read(name: str) -> bytes:
        """The record, once, at its declared size (+1 byte to see more; the sizes add up to at
        most MAX_ARCHIVE_BYTES); zipfile checks its CRC once it has all of it."""
        info = records[name]
        try:
            with archive.open(info) as stream:
                content = stream.read(info.file_size + 1)
        except EOFError:
            content = b""
        if len(content) != info.file_size:
            raise _Refused(name, f"does not hold the {info.file_size} bytes it declares")
        return content

    def read_json(name: str) -> Any:
        try:
            return json.loads(read(name))
        except (UnicodeDecodeError, ValueError):
            raise _Refused(name, "is not JSON") from None
        except RecursionError:  # [[[[...]]]] nested 200k deep
            raise _Refused(name, "is nested too deeply") from None

    raw = _raw_records(read_json(_WEIGHTS_CONFIG), "weights")
    raw |= _raw_records(read_json(_CONSTANTS_CONFIG), "constants")
    for name in records:
        if name in _TEXT_RECORDS:
            text = read(name).decode("ascii", errors="replace")
            if not _TEXT_RECORDS[name].fullmatch(text):
                raise _Refused(name, "has unexpected content")
        elif _RAW_RECORD.fullmatch(name):
            if name not in raw:
                raise _Refused(name, "is not a raw tensor of the weights or constants config")
            read(name)  # its bytes are there, as declared (torch reads them by the directory)
        elif name == _PROGRAM:
            try:
                _check_program(read_json(name))
            except RecursionError:  # nested just within what json.loads parses
                raise _Refused(name, "is nested too deeply") from None
        elif name == _SAMPLE_INPUTS:
            _check_tensors_only(read(name))
        elif name not in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
            raise _Refused(name, "is not part of the format we write")


def _raw_records(config: Any, kind: str) -> set[str]:
    """The raw tensor records the `kind` ("weights" or "constants") payload config lists;
    refuses any entry stored pickled or as a custom object."""
    name = _WEIGHTS_CONFIG if kind == "weights" else _CONSTANTS_CONFIG
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _Refused(name, "has no config mapping")
    prefix = "weight_" if kind == "weights" else "tensor_"
    raw = set()
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise _Refused(name, f"stores {fqn!r} pickled, which can run code when loaded")
        path_name = str(entry.get("path_name"))
        record = f"data/{kind}/{path_name}"
        if not path_name.startswith(prefix) or not _RAW_RECORD.fullmatch(record):
            raise _Refused(name, f"stores {fqn!r} as {path_name!r}, not as a raw tensor")
        raw.add(record)
    return raw


def _check_tensors_only(content: bytes) -> None:
    """Example inputs must load with `weights_only=True`: torch retries a failed load with
    `weights_only=False`, i.e. unpickles anything."""
    if not content:
        return
    import torch

    try:
        torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception:
        raise _Refused(_SAMPLE_INPUTS, "holds more than tensors (a pickle)") from None


def _check_program(program: Any) -> None:
    if not isinstance(program, dict):
        raise _Refused(_PROGRAM, "is not a JSON object")
    try:
        pt2_ops.check_nodes(program)
    except pt2_ops.RefusedOperator as exc:
        raise _Refused(_PROGRAM, str(exc)) from None
    for key, value in _walk(program):
        # Nodes are checked above; an operator named anywhere else is refused all the same.
        if key == "as_operator" or (key == "target" and str(value) not in pt2_ops.ALLOWED_OPS):
            raise _Refused(_PROGRAM, f"names the operator {str(value)[:80]!r}")
        elif key == "expr_str":
            _check_expression(value, guard=False)
        elif key == "guards_code":
            if not isinstance(value, list):
                raise _Refused(_PROGRAM, "has guards_code that is not a list")
            for guard in value:
                _check_expression(guard, guard=True)


def _walk(node: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """(key, value) for every value in a JSON document, depth first; list items keep the key
    of their list."""
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _check_expression(text: Any, guard: bool) -> None:
    """Symbolic shape expressions (sympified) and guards (exec'd) may only be arithmetic and
    comparisons over shape symbols, numbers and a few named functions: no name that reaches
    Python's builtins, no attribute but `size()`/`stride()`, nothing private."""
    what = "guard" if guard else "shape expression"
    if not isinstance(text, str) or len(text) > 2000:
        raise _Refused(_PROGRAM, f"has a {what} that is not a short string")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise _Refused(_PROGRAM, f"has a {what} that is not an expression: {text[:80]!r}") from None
    if not all(_allowed(node, guard) for node in ast.walk(tree)):
        raise _Refused(_PROGRAM, f"has a {what} outside what export writes: {text[:80]!r}")


def _allowed(node: ast.AST, guard: bool) -> bool:
    if isinstance(node, ast.Name):
        return (
            bool(_SYMBOL.fullmatch(node.id))
            or node.id in _FUNCTIONS
            or node.id in _NAMES
            or (guard and node.id in _GUARD_NAMES)
        )
    if isinstance(node, ast.Attribute):
        return guard and node.attr in _GUARD_ATTRIBUTES
    if isinstance(node, ast.Subscript):
        return guard and isinstance(node.slice, ast.Constant)
    if isinstance(node, ast.Call):
        plain = isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
        return (plain or (guard and isinstance(node.func, ast.Attribute))) and all(
            k.arg in _KEYWORDS and isinstance(k.value, ast.Constant) for k in node.keywords
        )
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):  # a symbol's or an input's name, a Float's digits
            plain = bool(_SYMBOL.fullmatch(value) or _NUMBER.fullmatch(value))
            return plain or (guard and value.isidentifier() and "__" not in value)
        return isinstance(value, int | float | bool)
    return isinstance(node, _EXPRESSION_NODES)


def load_uri(model_uri: str) -> LoadedModel:
    """`load` of the MLflow model at `model_uri` (`runs:/<id>/<variant>`, `models:/<name>/<v>`, a
    local folder, ...): the one way `resnetlab predict` and the web app load a logged model. A
    model logged without class names in its metadata is taken to use CIFAR-10's label order
    (every model logged before the names were recorded is a CIFAR-10 model)."""
    from resnetlab.tracking import model_io

    network, classes, size = load(model_io.model_folder(model_uri))
    return LoadedModel(network, list(classes or CIFAR10_CLASSES), size)

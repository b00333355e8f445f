"""A digest of a logged model's files, recorded in the tracking store when the model is logged,
so that a model folder can be checked against what training wrote before anything serves it.

The digest is SHA-256 over every file of the folder (MLmodel included), in the order of their
relative paths, each framed as its path, a NUL byte, its length (8 bytes) and its bytes:
`sha256:<hex>`. Folders count only through the files in them. `ModelUpload` computes it on the
staged folder it uploads and records it as the tag `resnetlab.model_digest` of the logged model
(`runs:/<run>/<variant>`, `models:/<model id>`) and of the registered version
(`models:/resnetlab-<variant>/<n>`): tags live in the tracking store's database, which the
artifact store's files cannot change. `resnetlab serve` (tools/serve.py) reads the folder once
(`read_folder`), compares the digest of those bytes with the recorded one and serves a private
copy of exactly those bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.tracking.logged_model import MAX_ARCHIVE_BYTES, UnsafeModelError, read_regular

DIGEST_TAG = "resnetlab.model_digest"
MAX_FILES = 1000  # a logged model has about ten
MAX_DEPTH = 8  # below the model folder; MLflow writes data/ and nothing deeper
MAX_TOTAL_BYTES = MAX_ARCHIVE_BYTES + (64 << 20)  # the archive plus the small files around it


def digest(files: Mapping[str, bytes]) -> str:
    """`sha256:<hex>` of `files` (relative POSIX path -> content), see the module docstring."""
    h = hashlib.sha256()
    for name in sorted(files):
        path = name.encode()
        h.update(path + b"\0" + len(files[name]).to_bytes(8, "big"))
        h.update(files[name])
    return f"sha256:{h.hexdigest()}"


def folder_digest(folder: Path) -> str:
    return digest(read_folder(folder))


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative POSIX path -> content): regular files only (no links,
    FIFOs, sockets or devices; each read by `logged_model.read_regular`, bounded), at most
    MAX_FILES of them, MAX_DEPTH folders deep, MAX_TOTAL_BYTES in all."""
    folder = Path(folder)
    files: dict[str, bytes] = {}
    total = 0

    def walk(relative: str, depth: int) -> None:
        nonlocal total
        if depth > MAX_DEPTH:
            raise UnsafeModelError(f"{folder / relative}: folders nested deeper than {MAX_DEPTH}")
        with os.scandir(folder / relative if relative else folder) as entries:
            found = sorted((entry.name, entry.stat(follow_symlinks=False)) for entry in entries)
        for name, info in found:
            path = f"{relative}/{name}" if relative else name
            if stat.S_ISDIR(info.st_mode):
                walk(path, depth + 1)
                continue
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeModelError(
                    f"{folder / path}: not a regular file (MLflow writes no links, FIFOs or "
                    "devices)"
                )
            if len(files) >= MAX_FILES:
                raise UnsafeModelError(f"{folder}: more than {MAX_FILES} files")
            files[path] = read_regular(folder, path, MAX_TOTAL_BYTES - total)
            total += len(files[path])

    try:
        walk("", 0)
    except UnsafeModelError:
        raise
    except OSError as exc:
        raise ResnetlabError(
            f"{folder}: cannot read the model folder ({first_line(exc)})"
        ) from None
    return files


def recorded(model_uri: str) -> tuple[str, dict[str, str]]:
    """The model at `model_uri` (`runs:/<run>/<name>`, `models:/<name>/<version>`,
    `models:/<model id>`) as the URI to fetch it by, and the digests the tracking store records
    for it: where -> digest, e.g. {"registered version resnetlab-resnet56/3": "sha256:...",
    "logged model m-...": "sha256:..."}; none for a model logged before digests were. A
    `runs:/` URI becomes `models:/<model id>` of the logged model it names (the newest of that
    name, as `model_io.model_folder` picks), so that the files fetched are the ones whose digest
    was read. Bounded calls, as `model_io.model_folder`'s."""
    from resnetlab.tracking.store import CALL_S, Caller, tracking_uri

    parsed = urlparse(model_uri)
    if parsed.scheme not in ("runs", "models"):
        return model_uri, {}
    uri = tracking_uri()
    calls = Caller(uri)
    try:
        calls.probe()
        return calls(lambda: _recorded(model_uri), CALL_S)
    except Exception as exc:
        raise ResnetlabError(
            f"cannot read what the tracking store {uri} records for {model_uri}: {first_line(exc)}"
        ) from None


def _recorded(model_uri: str) -> tuple[str, dict[str, str]]:
    from resnetlab.tracking.store import client, quote

    c = client()
    found: dict[str, str] = {}
    model_ids: list[str] = []
    if model_uri.startswith("runs:/"):
        run_id, _, name = model_uri[len("runs:/") :].partition("/")
        run = c.get_run(run_id)
        for logged in c.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{quote(name)}'"
        ):
            if logged.source_run_id == run_id:
                model_ids.append(logged.model_id)
                model_uri = f"models:/{logged.model_id}"
                break
    else:
        name, _, version = model_uri[len("models:/") :].partition("/")
        if version:
            v = c.get_model_version(name, version)
            if v.tags.get(DIGEST_TAG):
                found[f"registered version {name}/{version}"] = v.tags[DIGEST_TAG]
            # Its logged model (as model_io.model_folder finds it: the version's source).
            source = v.model_id or (v.source if v.source.startswith("models:/") else "")
            if source:
                model_ids.append(source.removeprefix("models:/").strip("/"))
        else:
            model_ids.append(name.strip("/"))
    for model_id in model_ids:
        tags = c.get_logged_model(model_id).tags or {}
        if tags.get(DIGEST_TAG):
            found[f"logged model {model_id}"] = tags[DIGEST_TAG]
    return model_uri, found

"""`resnetlab serve --model-uri URI [--host HOST] [--port N] [--workers N]`: serve a logged model
with MLflow's scoring server (`POST /invocations`), after checking it.

Plain `mlflow models serve` trusts the model folder: it imports the `loader_module` its MLmodel
file names, after putting the folder's `code` paths first on `sys.path`, and that loader may
unpickle a pickled model, all before any check of ours runs. This command checks first, and
refuses with one line (exit status 1) when a check fails:

1. The model's files are the ones logged: the SHA-256 digest of every file of the folder equals
   the one the tracking store recorded when the train stage logged it (`tracking.model_digest`,
   a tag of the registered version and of the logged model). A `models:/` or `runs:/` model with
   no recorded digest (logged before digests were recorded) is refused: register it again. A
   local folder has no record: it is refused unless --trust-unrecorded-path, which serves it on
   the checks below alone.
2. The MLmodel's `python_function` flavor names resnetlab's loader (`resnetlab.tracking.serving`,
   or `resnetlab.serving` in models logged before the package move), no code paths, and only
   the settings the train stage writes.
3. `tracking.logged_model.load` accepts it: every check `resnetlab predict` and the app run (the
   pt2 format, nothing pickled, no code, the archive's records and operators), then the program
   loads.

The checked bytes (read once) are written to a private temporary folder, so that nothing can
swap the files between the check and the serve, and MLflow's scoring server serves that folder:
what `mlflow models serve -m <folder> --env-manager local` runs (uvicorn on
`mlflow.pyfunc.scoring_server`), here as this process's child, from an empty working folder.
It listens on 127.0.0.1 (this machine only) unless --host says otherwise. SIGTERM and SIGINT
(Ctrl-C) are passed on to the server, which gets 30 s to end before it is killed; the command
ends once the server has: status 0 after SIGTERM, 130 after SIGINT, 1 if the server stopped by
itself with an error. Killed outright, it takes the server with it (Linux; `tools.child`).
--check verifies the model, prints its digest and exits.

Requests are bounded: a body over 64 MiB is refused with 413, JSON nested over 32 levels with 400
(`tracking.serving_app`, in front of MLflow's app), more than 1024 images or a pixel that is NaN,
infinite or outside [0, 1] with 400 (`tracking.serving.ClassProbabilities.predict`); each with
a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

import yaml

from resnetlab.core.errors import ResnetlabError
from resnetlab.tools.child import STOP_SIGNALS, Child

log = logging.getLogger(__name__)

DEFAULT_PORT = 5001
MAX_WORKERS = 64
# The pyfunc loaders of the models the train stage logs (the second: before the package move).
LOADERS = ("resnetlab.tracking.serving", "resnetlab.serving")
# The python_function settings `model_io.save_model_artifact` writes (`code` only as null). Any
# other changes what MLflow runs: `predict_fn` names the method it calls, `streamable` another.
PYFUNC_KEYS = frozenset(
    {"loader_module", "data", "env", "python_version", "config", "pickle_module_name", "code"}
)
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_MLFLOW_APP = "mlflow.pyfunc.scoring_server.app:app"
_GUARDED_APP = "resnetlab.tracking.serving_app:app"
_STOP_GRACE_S = 30.0  # how long the server's processes get to end after the signal


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-uri",
        required=True,
        metavar="URI",
        help="a logged model: models:/resnetlab-resnet56/1, runs:/<run id>/resnet56, or a folder",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)",
    )
    p.add_argument(
        "--port",
        type=_bounded_int(1, 65535),
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--workers",
        type=_bounded_int(1, MAX_WORKERS),
        default=1,
        metavar="N",
        help="server processes, each with its own copy of the model (default 1)",
    )
    p.add_argument(
        "--trust-unrecorded-path",
        action="store_true",
        help="serve a local model folder, which no tracking store records a digest for, on the "
        "format checks alone",
    )
    p.add_argument(
        "--check", action="store_true", help="verify the model, print its digest and exit"
    )


def run(args: argparse.Namespace) -> None:
    stop: list[int] = []
    server: list[Child] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)
        if not server:  # still checking: stop here (the temporary folder is removed)
            raise KeyboardInterrupt
        server[0].forward(signum)

    # MLflow draws a progress bar on stderr for each download (a remote store's model folder,
    # the server's copy of ours); this command's stderr is its one line or the server's log.
    bar_set = _PROGRESS_BAR in os.environ  # the user's choice stands; ours is undone at the end
    os.environ.setdefault(_PROGRESS_BAR, "false")
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        if not args.check:
            _check_port_free(args.host, args.port)
        with tempfile.TemporaryDirectory(prefix="resnetlab-serve-") as tmp:
            folder, digest = verify(args.model_uri, Path(tmp), args.trust_unrecorded_path)
            if args.check:
                print(f"{args.model_uri}: verified, {digest}")
                return
            log.info("resnetlab serve: %s verified (%s)", args.model_uri, digest)
            code = _serve(folder, Path(tmp), args, server)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not bar_set:
            os.environ.pop(_PROGRESS_BAR, None)
    if stop and stop[0] == signal.SIGINT:
        raise KeyboardInterrupt
    if not stop and code != 0:
        raise ResnetlabError(
            f"MLflow's scoring server stopped with status {code}; its messages are above"
        )


def verify(model_uri: str, private: Path, trust_unrecorded_path: bool = False) -> tuple[Path, str]:
    """Check the model at `model_uri` (see the module docstring) and write the checked bytes to
    `private`/model; returns that folder and the digest. Raises a one-line ResnetlabError."""
    from resnetlab.tracking import logged_model, model_digest, model_io

    local = urlparse(model_uri).scheme in ("", "file")
    if local and not trust_unrecorded_path:
        raise ResnetlabError(
            f"{model_uri}: a local folder has no digest recorded in the tracking store; serve "
            "its registered version (models:/<name>/<version>) or runs:/<run id>/<variant>, or "
            "pass --trust-unrecorded-path to serve the folder on the format checks alone"
        )
    fetch, records = model_digest.recorded(model_uri)
    if not local and not records:
        raise ResnetlabError(
            f"{model_uri}: the tracking store records no digest of this model's files (it was "
            "logged before resnetlab recorded one); log and register it again to serve it: "
            "`resnetlab relog --variant <variant>` in its project, or retrain"
        )
    if len(set(records.values())) > 1:
        found = ", ".join(f"{d[7:19]}... for the {where}" for where, d in records.items())
        raise ResnetlabError(f"{model_uri}: the tracking store records different digests ({found})")
    source = model_io.model_folder(fetch)
    files = model_digest.read_folder(source)
    digest = model_digest.digest(files)
    for where, expected in records.items():
        if digest != expected:
            raise ResnetlabError(
                f"{model_uri}: the files in {source} are not the ones logged (digest "
                f"{digest[7:19]}..., the {where} records {expected[7:19]}...): changed after "
                "it was logged, not served; log and register the model again "
                "(`resnetlab relog --variant <variant>`, or retrain)"
            )

    folder = private / "model"
    _write_private(folder, files)
    try:
        logged_model.check_mlmodel(folder)
        check_pyfunc(folder)
        logged_model.load(folder)  # every check of the archive, then torch loads the program
    except ResnetlabError as exc:  # named after the user's folder, not the private copy
        raise type(exc)(str(exc).replace(str(folder), str(source))) from None
    return folder, digest


def check_pyfunc(folder: Path) -> None:
    """Refuse an MLmodel whose `python_function` flavor MLflow's scoring server would load with
    anything but resnetlab's loader, or with settings the train stage does not write."""
    from resnetlab.tracking.logged_model import MAX_MLMODEL_BYTES, UnsafeModelError, read_regular

    path = folder / "MLmodel"
    spec = yaml.safe_load(read_regular(folder, "MLmodel", MAX_MLMODEL_BYTES).decode())
    flavor = (spec.get("flavors") or {}).get("python_function")
    if not isinstance(flavor, dict):
        raise UnsafeModelError(f"{path}: no python_function flavor; nothing to serve")
    loader = flavor.get("loader_module")
    if loader not in LOADERS:
        raise UnsafeModelError(
            f"{path}: python_function loader_module is {str(loader)[:80]!r}, not "
            f"{LOADERS[0]}; only resnetlab's loader is served"
        )
    unknown = sorted(str(k)[:40] for k in set(flavor) - PYFUNC_KEYS)
    if unknown:
        raise UnsafeModelError(
            f"{path}: python_function sets {', '.join(unknown)}, which the train stage never "
            "writes; not served"
        )
    if flavor.get("code") is not None or flavor.get("data") != "data":
        raise UnsafeModelError(f"{path}: python_function must have data 'data' and no code")


def _write_private(folder: Path, files: dict[str, bytes]) -> None:
    """`files` below `folder`, a new folder only this user can enter (inside a mkdtemp one)."""
    folder.mkdir(mode=0o700)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(content)


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any work, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            s.bind(address)
    except OSError as exc:
        raise ResnetlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def server_command(
    folder: Path, host: str, port: int, workers: int, workdir: Path
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of MLflow's scoring server on `folder`: what
    `mlflow models serve -m <folder> --env-manager local` runs (`scoring_server.get_cmd`: uvicorn
    on `mlflow.pyfunc.scoring_server.app`), with this interpreter's uvicorn, and `workdir` as
    the one folder it adds to `sys.path`."""
    import shlex

    from mlflow.pyfunc import scoring_server

    command, env = scoring_server.get_cmd(str(folder), port, host, None, workers)
    argv = shlex.split(command)
    if argv[:1] != ["uvicorn"]:
        raise ResnetlabError(f"unexpected scoring server command from MLflow: {command[:200]}")
    if argv[-1:] != [_MLFLOW_APP]:
        raise ResnetlabError(f"unexpected scoring server app from MLflow: {command[:200]}")
    env.pop(scoring_server.SERVING_MODEL_CONFIG, None)  # our loader takes no settings
    # MLflow's app behind our bound on the request body (`tracking.serving_app`).
    argv[-1] = _GUARDED_APP
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(workdir), *argv[1:]], env


def _serve(folder: Path, tmp: Path, args: argparse.Namespace, server: list[Child]) -> int:
    """Run the scoring server on `folder` until it ends; returns its exit status."""
    workdir = tmp / "cwd"  # empty: the server's working folder and the one it puts on sys.path
    workdir.mkdir(mode=0o700)
    cmd, env = server_command(folder, args.host, args.port, args.workers, workdir)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"resnetlab serve: http://{host}:{args.port}/invocations ({args.model_uri})",
        file=sys.stderr,
        flush=True,
    )
    # Its own process group, so that the terminal's Ctrl-C reaches it only through us (once);
    # it ends with this process even when this one is killed (Linux).
    server.append(Child(cmd, grace_s=_STOP_GRACE_S, cwd=workdir, env=env))
    return server[0].wait()

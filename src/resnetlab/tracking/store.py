"""The MLflow tracking store, reached with bounded calls. Every other module of `tracking` goes
through here; no module outside `tracking` imports mlflow.

MLflow is reached through an explicit `MlflowClient` on `tracking_uri()`: `MLFLOW_TRACKING_URI`
when set, else the SQLite store `mlflow.db` (artifacts in `mlruns/`) at the project root (DVC's
DVC_ROOT, also for queued experiments in temporary copies; else the current directory), which
`mlflow ui` opens by default. Nothing here sets MLflow's global tracking URI or active
experiment, and nothing writes to `os.environ`, with one exception: `default_uri_as`, around
the one MLflow call that looks the store up on MLflow's global URI whatever its client's.

Every call to a network store is bounded in time. MLflow's REST client retries an unreachable
server for minutes (`MLFLOW_HTTP_REQUEST_TIMEOUT` x `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, read from
the environment, which is the user's to set; neither `MlflowClient` nor its REST store takes a
timeout or retry count of its own), so a stage first probes the server's `/health` with a short
timeout and runs each call on a worker thread that it waits for only so long (`Caller`). A local
store (SQLite, files) has nothing to hang on, only a busy machine to be slow on: its calls run
without a deadline, and it is never declared unreachable.

Output-neutral by design, as is the whole `tracking` package: what is recorded mirrors what the
stages write to disk; no DVC output depends on this code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from resnetlab.core.errors import ResnetlabError, first_line

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


log = logging.getLogger(__name__)

T = TypeVar("T")
_PROBE_TIMEOUT_S = 3.0  # a live server answers /health in milliseconds
CALL_S = 20.0  # one metadata call (params, metrics, tags, status, lookups)
UPLOAD_S = 120.0  # one artifact upload; the largest model is a few MB


def project_root() -> Path:
    """The project's root: DVC sets DVC_ROOT for every stage command, to the workspace's root even
    when the stage runs in a temporary copy (`dvc exp run --queue` / `--temp`), whose own
    mlflow.db and mlruns/ would vanish with it; else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def _artifact_location() -> str | None:
    """Where a new experiment keeps its artifacts: the project's mlruns/ for the default store
    (MLflow would pick the creating process's current directory, a temporary copy under a
    queued experiment); the server's or store's choice otherwise."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (project_root() / "mlruns").as_uri()


def client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if urlparse(uri).scheme != "sqlite" or uri in _SCHEMA_READY:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _SCHEMA_LOCK, machine_lock(f"schema {uri}"):
        # Opening the stores (the client does, and the registry's on first use) creates or
        # upgrades the schema: one process at a time.
        mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        mlflow_client.search_registered_models(max_results=1)
        _SCHEMA_READY.add(uri)
    return mlflow_client


# Each SQLite store a process has opened. MLflow creates and migrates a new database's schema
# when a process first opens it, and two processes doing so at once (two stages of a queue run
# with `-j 2` on a fresh project) fail: `Online migration expected to match one row ...`.
_SCHEMA_READY: set[str] = set()
_SCHEMA_LOCK = threading.Lock()


@contextlib.contextmanager
def machine_lock(key: str) -> Iterator[None]:
    """An exclusive `flock`, across processes, named by `key`; waits for it."""
    import fcntl
    import hashlib

    from resnetlab.core.lock import LOCK_DIR

    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    path = LOCK_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_DEFAULT_URI_LOCK = threading.Lock()


@contextlib.contextmanager
def default_uri_as(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI is `uri` within, where it resolves to another store.

    MLflow's SQL and file model-registry stores look a version's `models:/<model id>` source up
    with `MlflowClient()`, on MLflow's global tracking URI rather than on the URI of the client
    that creates the version (`mlflow/store/model_registry/sqlalchemy_store.py`,
    `create_model_version`: "TODO: Propagate tracking URI to file sqlalchemy directly, rather
    than relying on global URI"). With MLFLOW_TRACKING_URI unset that global is `./mlflow.db` in
    the current directory, not the project's store when DVC runs the stage in a temporary copy:
    the lookup fails (`Logged model with ID ... not found`) and leaves a stray mlflow.db there.
    MLflow takes the URI no other way, so around that call only, MLflow's own setter sets it
    (which also exports MLFLOW_TRACKING_URI) and unsets both after. Only where the variable is
    unset (the default store; a server's URI is the variable, which the global resolves to) and
    the global resolves elsewhere; otherwise nothing is set.
    """
    import mlflow

    with _DEFAULT_URI_LOCK:
        if os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri() == uri:
            yield
            return
        # Unset before (MLflow's setter sets the global and the variable together), unset after.
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None: unset, as MLflow does


_LOCAL_SCHEMES = ("", "file", "sqlite")


def is_local(uri: str) -> bool:
    """Whether the store at `uri` is on this machine (SQLite, files, a plain path): nothing in a
    call to it waits on a network, so it can be slow (a busy machine) but cannot hang."""
    if uri in ("databricks", "databricks-uc"):  # MLflow's names of a Databricks workspace
        return False
    scheme = urlparse(uri).scheme
    return scheme in _LOCAL_SCHEMES or len(scheme) == 1  # C:\... (a Windows drive)


class Unreachable(Exception):
    """The tracking server did not answer: its /health probe failed, or a call overran."""


class Caller:
    """Runs MLflow calls to a network store (HTTP, Databricks, a database server) one at a time
    on a daemon thread, waiting at most a deadline for each.

    A call that overruns is abandoned, not stopped: its thread runs on until MLflow gives up (a
    daemon thread never holds up the process's exit). The next call first waits for it, within
    its own deadline, so that two calls never overlap.

    Calls to a local store (`is_local`) run on the calling thread without a deadline: the first
    one imports MLflow's store layer and checks the database schema, which on a busy machine
    takes as long as the machine makes it, and a slow machine is not a dead store.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.local = is_local(uri)
        self._thread: threading.Thread | None = None

    def probe(self) -> None:
        """Raise `Unreachable` unless an HTTP(S) server answers /health; other stores (SQLite,
        files) have nothing to probe."""
        if urlparse(self.uri).scheme not in ("http", "https"):
            return
        try:
            url = self.uri.rstrip("/") + "/health"
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
                response.read(64)
        except (OSError, ValueError) as exc:  # URLError, timeouts, HTTP errors, bad URLs
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"unreachable ({first_line(reason)})") from None

    def __call__(self, fn: Callable[[], T], deadline_s: float) -> T:
        if self.local:
            return fn()
        end = time.monotonic() + deadline_s
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(max(0.0, end - time.monotonic()))
            if self._thread.is_alive():
                raise Unreachable("unreachable (an earlier call is still waiting for an answer)")
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc

        self._thread = threading.Thread(target=target, name="resnetlab-mlflow", daemon=True)
        self._thread.start()
        self._thread.join(max(0.0, end - time.monotonic()))
        if self._thread.is_alive():
            raise Unreachable(f"unreachable (no answer within {deadline_s:.0f} s)")
        if "error" in box:
            raise box["error"]
        return box["value"]


def is_missing(exc: BaseException) -> bool:
    """MLflow's 'no such run/experiment/model' (as opposed to an unreachable store)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def not_usable(uri: str, exc: BaseException) -> ResnetlabError:
    return ResnetlabError(
        f"MLflow tracking store {uri} is not usable: {first_line(exc)}. "
        "Start the server, fix MLFLOW_TRACKING_URI, or unset it to record into ./mlflow.db"
    )


def ensure_reachable(experiment: str) -> str:
    """Fail fast (before any work, in seconds) if the tracking store cannot be used; returns
    the id of `experiment`, created if missing."""
    uri = tracking_uri()
    calls = Caller(uri)
    try:
        calls.probe()
        return calls(lambda: experiment_id(client(), experiment), CALL_S)
    except Exception as exc:  # any failure: the message says which store and why
        raise not_usable(uri, exc) from None


def check_run(run_id: str, what: str, stage: str) -> None:
    """Fail fast if run `run_id` cannot be recorded into: the store is unreachable, or it does
    not hold that run (`what` says where the id came from; `stage`, the DVC stage that records
    a new one, e.g. `train@resnet20-0`)."""
    uri = tracking_uri()
    calls = Caller(uri)
    try:
        calls.probe()
        calls(lambda: client().get_run(run_id), CALL_S)
    except Exception as exc:
        if is_missing(exc):
            raise ResnetlabError(
                f"MLflow run {run_id} ({what}) not found in {uri}. Re-run its train stage "
                f"(dvc repro -f {stage}) to record a new one."
            ) from None
        raise not_usable(uri, exc) from None


# MLflow's tag for what an experiment holds: training runs, not GenAI traces. MLflow UIs that
# route by it open the experiment on its runs; 3.17's routes by a per-browser toggle instead
# (docs/mlflow.md gives the link).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing; either way it is marked as training runs
    (`EXPERIMENT_KIND`) unless someone chose another kind."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        ((key, kind),) = EXPERIMENT_KIND.items()
        if key not in found.tags:  # made by an older version, or by hand
            mlflow_client.set_experiment_tag(found.experiment_id, key, kind)
        return found.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(
            name, artifact_location=_artifact_location(), tags=EXPERIMENT_KIND
        )
    except MlflowException:  # created meanwhile by a concurrent stage
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def now_ms() -> int:
    return int(time.time() * 1000)

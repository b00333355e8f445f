"""A real MLflow tracking server on 127.0.0.1, for tests that need one to die and come back.

MLflow's own REST handlers (the Flask app `mlflow server` serves) over a SQLite store and a
proxied artifact folder, served by werkzeug in a subprocess: `mlflow server` itself (uvicorn,
job executor) takes 20-40 s to answer on a busy 2-core machine, this about half of that.
Run as a script: `python tracking_server.py PORT STORE_DIR`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """`with TrackingServer(store) as server:` starts it (waits for /health), `server.kill()`
    SIGKILLs it (no goodbye to clients), leaving the store for the next server on `port`."""

    def __init__(self, store: Path, port: int | None = None):
        self.store = Path(store)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TrackingServer:
        self.store.mkdir(parents=True, exist_ok=True)
        log = (self.store / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), str(self.store)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        tail = (self.store / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"MLflow server on {self.url} did not start:\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _serve(port: int, store: Path) -> None:
    backend = f"sqlite:///{store / 'mlflow.db'}"
    # What `mlflow server --backend-store-uri ... --artifacts-destination ...` hands its workers.
    os.environ["_MLFLOW_SERVER_FILE_STORE"] = backend
    os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = "mlflow-artifacts:/"
    os.environ["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
    os.environ["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = str(store / "artifacts")
    from mlflow.server import app
    from mlflow.server.handlers import initialize_backend_stores
    from werkzeug.serving import make_server

    initialize_backend_stores(backend, None, "mlflow-artifacts:/")
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))

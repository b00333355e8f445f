"""`resnetlab app [--port N] [--address HOST] [--project DIR]`: the web app, on Streamlit.

Three pages: Classify (upload images, see each one's top-5 classes from a trained variant or an
MLflow model), Mistakes (a variant's wrongly classified test images, filtered by true and
predicted class, most confident first) and Compare (the leaderboard, the figures, and the test
images one variant gets right and another wrong).

It reads the project folder's models/, metrics/, data/prepared/ and reports/ (the layout of
dvc.yaml) and the MLflow store the stages use (MLFLOW_TRACKING_URI, else ./mlflow.db); it never
trains or writes. Not a pipeline stage: nothing in dvc.yaml runs it.

SIGTERM (kill, systemd, docker stop) and SIGINT (Ctrl-C) stop it: they are passed on to
Streamlit, which gets STOP_GRACE_S seconds to end before it is killed, and the command ends once
it has (status 0 after SIGTERM, 130 after SIGINT), the port free again. Killed outright, it takes
Streamlit with it (Linux; `tools.child`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from resnetlab.core.errors import ResnetlabError
from resnetlab.tools.child import STOP_SIGNALS, Child

APP_SCRIPT = Path(__file__).resolve().parents[1] / "webapp" / "app.py"
DEFAULT_PORT = 8501
# Seconds Streamlit gets to end after SIGTERM/SIGINT: under docker stop's 10 before its SIGKILL.
STOP_GRACE_S = 5.0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1..65535")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--address",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)",
    )
    p.add_argument(
        "--project",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the project folder (with models/, metrics/, ...; default: the current one)",
    )


def url(address: str, port: int) -> str:
    # 0.0.0.0 / :: listen everywhere but are not addresses a browser can open.
    host = "localhost" if address in ("0.0.0.0", "::", "") else address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def streamlit_command(address: str, port: int) -> list[str]:
    """`streamlit run` of the app script with this interpreter; every setting on the command
    line, so no Streamlit config file on the machine changes what the app does."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        # A served app does not reload on source edits; watching files costs CPU.
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def run(args: argparse.Namespace) -> None:
    project = args.project.resolve()
    if not project.is_dir():
        raise ResnetlabError(f"{args.project}: no such project folder")
    print(f"resnetlab app: {url(args.address, args.port)} (project {project})", flush=True)
    # Run in the project folder: the app reads its folders and ./mlflow.db from there, as the
    # stages do when DVC runs them.
    stop: list[int] = []
    child: list[Child] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)
        if not child:  # Streamlit not started yet (or starting: it dies with this process)
            raise KeyboardInterrupt
        child[0].forward(signum)

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        child.append(
            Child(streamlit_command(args.address, args.port), grace_s=STOP_GRACE_S, cwd=project)
        )
        code = child[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop and stop[0] == signal.SIGINT:
        raise KeyboardInterrupt
    if not stop and code != 0:
        raise ResnetlabError(f"streamlit exited with status {code}")

"""A server run as this process's child (`resnetlab app`: Streamlit; `resnetlab serve`: MLflow's
scoring server) that never outlives this process.

`Child` starts the command in a process group of its own, so that the terminal's Ctrl-C reaches
it only through this process (once), and, on Linux, with PR_SET_PDEATHSIG: killed outright
(SIGKILL), this process takes the server with it. The command's SIGTERM and SIGINT handlers pass
the signal on (`Child.forward`); the server then gets `grace_s` seconds to end, its whole group
included, before the group is killed. `Child.wait` returns once the server and what it started
are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def parent_death_signal() -> Callable[[], None] | None:
    """For the child's process, before it starts (Linux): SIGTERM when its parent, this
    process, dies; it exits at once if the parent is already gone. libc is looked up here, not
    in the forked child."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6").prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # died before the call: no signal will come
            os._exit(1)

    return set_signal


class Child:
    """`cmd` running as this process's child, in a new session (its own process group)."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        grace_s: float,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.grace_s = grace_s
        self._deadline: float | None = None  # monotonic; set by the first forwarded signal
        self._killer: threading.Timer | None = None
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def forward(self, signum: int) -> None:
        """Pass `signum` to the child's main process (a server stops its own workers); from
        the first signal on, the group is killed if it has not ended within the grace period.
        Safe in a signal handler."""
        if self.process.returncode is None:  # not reaped yet: the pid is still the child's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)
        if self._killer is None:
            self._deadline = time.monotonic() + self.grace_s
            self._killer = threading.Timer(self.grace_s, self.kill)
            self._killer.daemon = True
            self._killer.start()

    def kill(self) -> None:
        """SIGKILL to whatever is left of the child's process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self) -> int:
        """Wait for the child to end (bounded once a signal was forwarded), then for the rest
        of its group, killed after the grace period; returns the child's exit status."""
        code = self.process.wait()
        deadline = self._deadline or time.monotonic() + self.grace_s
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._killer is not None:
            self._killer.cancel()
        if _group_alive(self.process.pid):
            self.kill()
        return code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the id
        return False
    return True

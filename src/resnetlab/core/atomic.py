"""Atomic file writes: a file either keeps its old content or gets the complete new one.

Bytes go to a hidden temporary file beside the target (`.<name>.XXXX.tmp`), are flushed to disk,
and the file is renamed into place only when the writer returns; if it raises, the temporary is
removed and the target is untouched. A process killed mid-write (kill -9 skips all cleanup) can
leave a temporary behind, never a half-written target: `remove_stale_temporaries` clears those.
SIGTERM (what `kill`, DVC and schedulers send) also skips all cleanup by default; inside
`cleanup_on_sigterm()` it unwinds like Ctrl-C, so a long write removes its temporary.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM exits with status 143 (128 + SIGTERM) by raising SystemExit, so
    `finally` clauses run (write_atomic removes its temporary) and no traceback is printed.

    Python's default for SIGTERM is to die at once. Signal handlers can only be set in the main
    thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries a killed `write_atomic` left in `folder`; they are never complete."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)

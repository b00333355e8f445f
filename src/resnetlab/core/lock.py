"""One writer per output folder: `folder_lock` holds an exclusive `flock` on a lock file for as
long as a stage writes to the folder, so a second run into the same folder (two `resnetlab train`
of one variant and seed outside DVC, which would both train and register two versions for one
seed) stops at once with one line naming the folder and the holder's pid.

The lock file lives in a machine-wide folder (`LOCK_DIR`), named after the output folder's
resolved path, not in the output folder: that folder holds exactly what the stage writes, which
DVC caches and `dvc pull` restores byte for byte. The lock is the kernel's, on the open file: it
ends with the process however it ends (kill -9 included), never goes stale, and the file, left
in place, holds only the last holder's pid.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resnetlab.core.errors import ResnetlabError

LOCK_DIR = Path(tempfile.gettempdir()) / "resnetlab-folder-locks"


def lock_path(folder: Path) -> Path:
    """The lock file of output folder `folder` (the same for every path that names it)."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return LOCK_DIR / f"{key}.lock"


@contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold `folder`'s lock in the block; raise a one-line ResnetlabError if another process
    holds it (`command` names what it runs, e.g. `resnetlab train`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    try:
        LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise ResnetlabError(f"cannot open {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ResnetlabError(f"cannot lock {path}: {exc.strerror}") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise ResnetlabError(
                f"{folder}: another {command} ({who}) is writing to this folder; wait for it "
                "to end, or give this one another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

"""Atomic file writes: a file either keeps its old content or gets the complete new one.

Bytes go to a hidden temporary file beside the target (`.<name>.XXXX.tmp`), are flushed to disk,
and the file is renamed into place only when the writer returns; if it raises, the temporary is
removed and the target is untouched. A process killed mid-write (kill -9 skips all cleanup) can
leave a temporary behind, never a half-written target: `remove_stale_temporaries` clears those.
SIGTERM (what `kill`, DVC and schedulers send) also skips all cleanup by default; inside
`cleanup_on_sigterm()` it unwinds like Ctrl-C, so a long write removes its temporary.
`replace_folder` does the same for a folder of files that belong together (`prepare`'s arrays and
their `meta.json`): the old set stays whole until the new one is complete.

A write the disk refuses (full, over quota, over the size limit, read-only) raises one
`ResnetlabError` line naming the file, the reason and the free space, instead of the chain of
tracebacks torch and numpy raise for it; the previous content is intact.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from resnetlab.core.errors import ResnetlabError

# What the disk, not the program, refused. EFBIG: the process's file size limit (ulimit -f).
_FULL = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
}
_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, *_FULL}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written$")


def write_atomic(path: Path, write: Callable[[BinaryIO], None], then: str = "run again") -> None:
    """Call `write` on a temporary file beside `path`, then rename it to `path`.

    `then` ends the message of a write the disk refuses: what the user does once there is room.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _refused(path, exc, then) or exc from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)  # before the free space is measured
        error = _refused(path, exc, then)
        if error is None:
            raise
        raise error from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def replace_folder(
    folder: Path, names: Collection[str], write: Callable[[Path], None], then: str = "run again"
) -> None:
    """Call `write` on a fresh hidden folder beside `folder`, then put it in `folder`'s place.

    Either every file is new or every file is old: a stop at any point (SIGTERM inside
    `cleanup_on_sigterm`, Ctrl-C, an error, a full disk) leaves the old folder whole. `names` are
    the files `write` creates; an existing `folder` holding anything else is refused rather than
    replaced, so pointing the output at a folder of other files loses none of them.
    """
    folder = Path(folder)
    check_replaceable(folder, names)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by kill -9
        shutil.rmtree(stale, ignore_errors=True)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        raise _refused(folder, exc, then) or exc from None
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old.tmp")
    try:
        write(tmp)
        for path in tmp.iterdir():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        # The two renames must not be parted by SIGTERM: blocked, it arrives after the swap.
        blocked = _block_sigterm()
        try:
            if folder.exists():
                folder.rename(old)
            try:
                tmp.rename(folder)
            except OSError:
                if old.exists():
                    old.rename(folder)
                raise
        finally:
            _unblock_sigterm(blocked)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # before the free space is measured
        error = _refused(folder, exc, then)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(folder: Path, names: Collection[str]) -> None:
    """Raise ResnetlabError unless `folder` is absent or holds only `names`: what
    `replace_folder` checks, for a command to call before its work."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ResnetlabError(f"{folder}: is a file, not a folder; give the output a folder")
    others = sorted(p.name for p in folder.iterdir() if p.name not in names)
    if others:
        raise ResnetlabError(
            f"{folder}: holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, "
            "which this command does not write; give it a folder of its own"
        )


def _block_sigterm() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    return True


def _unblock_sigterm(blocked: bool) -> None:
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _refused(path: Path, exc: BaseException, then: str) -> ResnetlabError | None:
    """One line for a write the disk refused, found anywhere in `exc`'s chain (torch raises a
    RuntimeError about zip positions while handling the OSError), else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and _SHORT_WRITE.match(str(cause)):
            # numpy's `tofile` reports a write the disk cut short without its errno; on a local
            # file only a full disk (or a size limit) does that.
            cause = OSError(errno.ENOSPC, str(cause))
        if isinstance(cause, OSError) and cause.errno in _REFUSED:
            kept = "its previous content is intact and nothing partial is left"
            if cause.errno not in _FULL:
                return ResnetlabError(
                    f"{path}: cannot write it ({os.strerror(cause.errno).lower()}); {kept}"
                )
            try:
                free = f"{_amount(shutil.disk_usage(path.parent).free)} free there"
            except OSError:
                free = "free space unknown"
            return ResnetlabError(
                f"{path}: {_FULL[cause.errno]} while writing it ({free}); {kept}: make room, "
                f"then {then}"
            )
        cause = cause.__cause__ or cause.__context__
    return None


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


def _amount(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 10 * 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.0f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError  # unreachable

"""Fetch a dataset's archive (CIFAR-10, CIFAR-100) from a URL, a mirror, or a local path, and
verify its md5.

torchvision's `download_url` writes straight into the destination file, so an interrupted or
corrupted download leaves a file that looks complete. Here the bytes go to a hidden temporary file
in the destination folder and are renamed into place only after the md5 matches. (torchvision is
not imported: it takes seconds.)

A source is never trusted to end: the bytes read are capped (the official archive's exact size
when data.md5 is the official one, else twice that size), a transfer that stalls or crawls below a
minimum rate is stopped, and so is one that runs past an overall deadline. Every such failure,
SIGTERM included, removes the temporary file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from resnetlab.core.atomic import cleanup_on_sigterm, remove_stale_temporaries, write_atomic
from resnetlab.core.errors import ResnetlabError
from resnetlab.data.datasets import PickleArchive

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # most bytes read per iteration
# A mirror may repack the archive, but nothing the dataset holds needs twice the official size:
# beyond that the source is endless (/dev/zero) or not the data set, and would fill the disk.
MIRROR_FACTOR = 2


@dataclass(frozen=True)
class Limits:
    """When a transfer is given up. The defaults are the production values; tests shrink them."""

    # None: the official archive's size for its md5, else MIRROR_FACTOR times that
    max_bytes: int | None = None
    deadline_s: float = 2 * 3600.0  # the whole transfer (the official archive at >= 24 KB/s)
    # The minimum rate is averaged over this long, and a read waits at most this long for data
    # (so the deadline is checked at least this often).
    window_s: float = 60.0
    min_rate: float = 10_000.0  # bytes/s averaged over `window_s`

    def cap(self, md5: str, dataset: PickleArchive) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return dataset.size if md5 == dataset.md5 else MIRROR_FACTOR * dataset.size

    def rule(self) -> str:
        """The minimum-progress rule, as error messages state it."""
        return f"at least {self.min_rate / 1000:g} KB/s averaged over {_duration(self.window_s)}"


DEFAULT_LIMITS = Limits()


def fetch_archive(
    url: str,
    md5: str,
    dest_dir: Path,
    dataset: PickleArchive,
    *,
    progress: bool | None = None,
    limits: Limits | None = None,
) -> Path:
    """Make `dest_dir/<dataset.archive_name>` hold the archive at `url` with checksum `md5`.

    `url` is an http(s):// or file:// URL or a plain path. Nothing is fetched when the file is
    already there with the right md5. `progress=None` shows a bar only on a terminal. `limits`
    (default `DEFAULT_LIMITS`) bound the size, duration and slowness of the transfer.
    """
    limits = limits or DEFAULT_LIMITS
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / dataset.archive_name
    remove_stale_temporaries(dest_dir)
    if dest.is_file() and _file_md5(dest) == md5:
        log.info("%s already present with md5 %s; nothing to fetch", dest, md5)
        return dest
    if progress is None:
        progress = sys.stderr.isatty()
    cap = limits.cap(md5, dataset)

    def fetch_verified(out: BinaryIO) -> None:
        # Raising here discards the temporary file: only a verified archive is renamed into place.
        actual = _copy_with_md5(url, md5, dataset, src, out, total, progress, limits)
        if actual != md5:
            raise ResnetlabError(
                f"md5 mismatch for {url}: expected {md5}, got {actual}. The file is corrupt or "
                "truncated, or data.md5 does not belong to this archive; nothing was kept."
            )

    try:
        with cleanup_on_sigterm(), _open_source(url, limits.window_s) as (src, total):
            if total is not None and total > cap:
                raise ResnetlabError(_too_large(url, f"has {total:,} bytes", cap, md5, dataset))
            log.info("fetching %s", url)
            size = total if total is not None else dataset.size
            need = f"{'' if total else 'about '}{size / 2**20:,.0f} MiB"
            write_atomic(dest, fetch_verified, then=f"run again (the archive needs {need})")
    except SystemExit:
        log.error("download of %s terminated; the partial file was removed", url)
        raise
    log.info("saved %s (md5 %s)", dest, md5)
    return dest


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _too_large(url: str, what: str, cap: int, md5: str, dataset: PickleArchive) -> str:
    if md5 == dataset.md5 and cap == dataset.size:
        why = f"the official archive (md5 {dataset.md5}) has exactly {dataset.size:,} bytes"
    else:
        twice = " (twice the official archive)" if cap == MIRROR_FACTOR * dataset.size else ""
        why = f"the limit for a mirror is {cap:,} bytes{twice}"
    return f"{url} {what}; {why}. It is not this archive; nothing was kept."


@contextmanager
def _open_source(url: str, timeout: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open `url` for reading; yields the stream and its size in bytes when known. A network
    read waits at most `timeout` seconds for data."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https", "file"):
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise ResnetlabError(
                f"HTTP error {exc.code} ({_printable(exc.reason)}) fetching {url}"
            ) from None
        except urllib.error.URLError as exc:
            reason = _printable(exc.reason)
            if scheme == "file":
                raise ResnetlabError(f"cannot read {url}: {reason}") from None
            raise ResnetlabError(
                f"cannot reach {url}: {reason}. Without internet, use a mirror or a local copy: "
                "set data.url to an http(s):// or file:// URL or a path, and data.md5 to its md5 "
                "(e.g. dvc exp run -S data.url=/path/to/the/archive.tar.gz -S data.md5=...)"
            ) from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise ResnetlabError(f"cannot reach {url}: {_reason(exc)}") from None
        with resp:
            length = resp.headers.get("Content-Length")
            # file:///dev/zero reports 0 (a device has no size): unknown, not empty.
            yield resp, int(length) if length and length.isdigit() and int(length) else None
        return
    if scheme:
        raise ResnetlabError(
            f"data.url: unsupported scheme {scheme!r} in {url}; use http(s)://, file:// or a path"
        )
    path = Path(url).expanduser()
    try:
        fh = path.open("rb")
        mode = path.stat().st_mode
    except OSError as exc:
        raise ResnetlabError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        # Only a regular file has a size; a device or pipe (/dev/zero) may never end.
        yield fh, path.stat().st_size if stat.S_ISREG(mode) else None


class _Pace:
    """Stops a transfer that runs past the deadline or falls below the minimum rate."""

    def __init__(self, url: str, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.limits = limits
        self.clock = clock
        self.start = self.window_start = clock()
        self.window_bytes = 0

    def check(self, got: int, done: int, total: int | None) -> None:
        """After a read that returned `got` bytes, `done` in all."""
        now = self.clock()
        lim = self.limits
        if now - self.start > lim.deadline_s:
            of = f" of {total:,}" if total else ""
            raise ResnetlabError(
                f"download of {self.url} did not finish within the {_duration(lim.deadline_s)} "
                f"deadline ({done:,}{of} bytes received); nothing was kept. Try again later or "
                "use a mirror (data.url)"
            )
        self.window_bytes += got
        elapsed = now - self.window_start
        if elapsed >= lim.window_s:
            if self.window_bytes < lim.min_rate * elapsed:
                raise ResnetlabError(
                    f"download of {self.url} too slow: {self.window_bytes:,} bytes in the last "
                    f"{_duration(elapsed)}, the minimum is {lim.rule()}; nothing was kept. Try "
                    "again later or use a mirror (data.url)"
                )
            self.window_start, self.window_bytes = now, 0


def _copy_with_md5(
    url: str,
    md5: str,
    dataset: PickleArchive,
    src: BinaryIO,
    out: BinaryIO,
    total: int | None,
    progress: bool,
    limits: Limits,
) -> str:
    cap = limits.cap(md5, dataset)
    digest = hashlib.md5(usedforsecurity=False)
    # read1 returns whatever has arrived: a plain read(CHUNK) on a socket would wait for the
    # whole chunk, so a trickling server would never let the pace be checked.
    read = getattr(src, "read1", src.read)
    pace = _Pace(url, limits)
    done = 0
    next_log = 0.25
    bar = tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, leave=False
    )
    with bar:
        while True:
            try:
                # One byte past the cap is enough to know the source is too large.
                chunk = read(min(CHUNK, cap + 1 - done))
            except TimeoutError:
                raise ResnetlabError(
                    f"download of {url} stalled: no data for {_duration(limits.window_s)} after "
                    f"{done:,} bytes, the minimum is {limits.rule()}; nothing was kept. Try again "
                    "later or use a mirror (data.url)"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                # Connection reset, truncated chunked body, ...: the server broke off.
                raise ResnetlabError(
                    f"download of {url} failed after {done:,} bytes: {_reason(exc)}; nothing was "
                    "kept. Try again"
                ) from None
            if not chunk:
                break
            done += len(chunk)
            if done > cap:
                raise ResnetlabError(
                    _too_large(url, f"has more than {cap:,} bytes", cap, md5, dataset)
                )
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
            pace.check(len(chunk), done, total)
            # Without a terminal: a plain line about every 25%, not a bar redrawn into a log file.
            if not progress and total and done / total >= next_log:
                log.info("  %3.0f%% of %.1f MiB", 100 * done / total, total / 2**20)
                next_log += 0.25
    if total is not None and done != total:
        raise ResnetlabError(f"download ended after {done} of {total} bytes; try again")
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """A one-line reason for a transfer error (an OSError's strerror, else the exception)."""
    if isinstance(exc, OSError) and exc.strerror:
        return _printable(exc.strerror)
    text = str(exc).strip() or type(exc).__name__
    return _printable(" ".join(text.split()))


def _printable(text: object) -> str:
    """`text`, which a server may have sent (a reason phrase, a status line), with every
    character a terminal would act on (ANSI escapes, bell, carriage return, newline, bidi
    controls) shown as '?': an error line prints what the server said, never runs it."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"

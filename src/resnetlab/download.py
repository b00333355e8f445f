"""Fetch the CIFAR-10 archive from a URL, a mirror, or a local path, and verify its md5.

torchvision's `download_url` writes straight into the destination file, so an interrupted or
corrupted download leaves a file that looks complete. Here the bytes go to a hidden temporary file
in the destination folder and are renamed into place only after the md5 matches. The existing-file
check reuses torchvision's `check_integrity`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

from resnetlab.atomic import remove_stale_temporaries, write_atomic
from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
CHUNK = 1 << 20  # bytes read per iteration


def fetch_archive(url: str, md5: str, dest_dir: Path, *, progress: bool | None = None) -> Path:
    """Make `dest_dir/cifar-10-python.tar.gz` hold the archive at `url` with checksum `md5`.

    `url` is an http(s):// or file:// URL or a plain path. Nothing is fetched when the file is
    already there with the right md5. `progress=None` shows a bar only on a terminal.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / ARCHIVE_NAME
    remove_stale_temporaries(dest_dir)
    if dest.exists() and check_integrity(str(dest), md5):
        log.info("%s already present with md5 %s; nothing to fetch", dest, md5)
        return dest
    if progress is None:
        progress = sys.stderr.isatty()

    def fetch_verified(out: BinaryIO) -> None:
        # Raising here discards the temporary file: only a verified archive is renamed into place.
        actual = _copy_with_md5(src, out, total, progress)
        if actual != md5:
            raise ResnetlabError(
                f"md5 mismatch for {url}: expected {md5}, got {actual}. The file is corrupt or "
                "truncated, or data.md5 does not belong to this archive; nothing was kept."
            )

    try:
        with _open_source(url) as (src, total):
            log.info("fetching %s", url)
            write_atomic(dest, fetch_verified)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(dest_dir).free
            raise ResnetlabError(
                f"disk full while writing {dest_dir} ({free / 2**20:.0f} MiB free); "
                "the archive needs about 163 MiB"
            ) from None
        raise
    log.info("saved %s (md5 %s)", dest, md5)
    return dest


@contextmanager
def _open_source(url: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open `url` for reading; yields the stream and its size in bytes when known."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https", "file"):
        try:
            resp = urllib.request.urlopen(url, timeout=60)
        except urllib.error.HTTPError as exc:
            raise ResnetlabError(f"HTTP error {exc.code} ({exc.reason}) fetching {url}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if scheme == "file":
                raise ResnetlabError(f"cannot read {url}: {reason}") from None
            raise ResnetlabError(
                f"cannot reach {url}: {reason}. Without internet, use a mirror or a local copy: "
                "set data.url to an http(s):// or file:// URL or a path, and data.md5 to its md5 "
                "(e.g. dvc exp run -S data.url=/path/to/cifar-10-python.tar.gz -S data.md5=...)"
            ) from None
        except (TimeoutError, OSError) as exc:
            raise ResnetlabError(f"cannot reach {url}: {exc}") from None
        with resp:
            length = resp.headers.get("Content-Length")
            yield resp, int(length) if length and length.isdigit() else None
        return
    if scheme:
        raise ResnetlabError(
            f"data.url: unsupported scheme {scheme!r} in {url}; use http(s)://, file:// or a path"
        )
    path = Path(url).expanduser()
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ResnetlabError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        yield fh, path.stat().st_size


def _copy_with_md5(src: BinaryIO, out: BinaryIO, total: int | None, progress: bool) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    done = 0
    next_log = 0.25
    bar = tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, leave=False
    )
    with bar:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            bar.update(len(chunk))
            # Without a terminal: a plain line about every 25%, not a bar redrawn into a log file.
            if not progress and total and done / total >= next_log:
                log.info("  %3.0f%% of %.1f MiB", 100 * done / total, total / 2**20)
                next_log += 0.25
    if total is not None and done != total:
        raise ResnetlabError(f"download ended after {done} of {total} bytes; try again")
    return digest.hexdigest()

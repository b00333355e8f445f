"""Reading a small file of ours (a JSON record, `params.yaml`), bounded: only a regular file is
read (a FIFO would block forever, `/dev/zero` never ends, a folder is a typo), at most `limit`
bytes of it (a huge file cannot fill the memory), and a JSON document nested too deeply for
Python's parser (`[[[[...]]]]` 200k deep) is refused like any other unreadable one. The caller
words the error for its file (which stage rewrites it)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from resnetlab.core.errors import first_line


class UnreadableFile(Exception):
    """The file cannot be read as a small regular file; `str()` is the problem in a few words."""


class UnreadableJson(UnreadableFile):
    """The file is not JSON `read_json` takes; `str()` is the problem in a few words."""


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device"}


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them (FileNotFoundError passes
    through, for the caller to word)."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; the type is checked before a read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableFile(f"not readable ({exc.strerror or first_line(exc)})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise UnreadableFile(f"is {kind}, not a file" if kind.startswith("a ") else kind)
    with os.fdopen(fd, "rb") as fh:
        try:
            blob = fh.read(limit + 1)
        except OSError as exc:
            raise UnreadableFile(f"not readable ({exc.strerror or first_line(exc)})") from None
    if len(blob) > limit:
        raise UnreadableFile(f"larger than {limit} bytes")
    return blob


def read_json(path: Path, limit: int) -> Any:
    """The JSON document at `path` (FileNotFoundError passes through, for the caller to word)."""
    try:
        blob = read_bounded(path, limit)
    except UnreadableFile as exc:
        raise UnreadableJson(str(exc)) from None
    try:
        return json.loads(blob.decode())
    except RecursionError:
        raise UnreadableJson("not readable JSON (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableJson(f"not readable JSON ({first_line(exc, 120)})") from None

"""Reading a JSON file of ours, bounded: at most `limit` bytes are read (a huge or endless file
cannot fill the memory), and a document nested too deeply for Python's parser (`[[[[...]]]]`
200k deep) is refused like any other unreadable one. The caller words the error
for its file (which stage rewrites it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnetlab.core.errors import first_line


class UnreadableJson(Exception):
    """The file is not JSON `read_json` takes; `str()` is the problem in a few words."""


def read_json(path: Path, limit: int) -> Any:
    """The JSON document at `path` (FileNotFoundError passes through, for the caller to word)."""
    try:
        with Path(path).open("rb") as fh:
            blob = fh.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableJson(f"not readable ({exc.strerror or first_line(exc)})") from None
    if len(blob) > limit:
        raise UnreadableJson(f"larger than {limit} bytes")
    try:
        return json.loads(blob.decode())
    except RecursionError:
        raise UnreadableJson("not readable JSON (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableJson(f"not readable JSON ({first_line(exc, 120)})") from None

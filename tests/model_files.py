"""Tampering with a logged model's pt2 archive, for the tests that prove such a model is refused."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.cli import main

ARCHIVE = Path("data") / "model.pt2"
Edit = Callable[[str, bytes], "bytes | list[bytes] | None"]


def rewrite_archive(folder: Path, change: Edit, **kwargs: object) -> None:
    """Rewrite the folder's pt2 archive: `change(record below the top folder, content)` gives the
    new content (bytes, or chunks to stream) or None to keep it; `kwargs` (compress_type...)
    apply to the changed records."""
    src = zipfile.ZipFile(io.BytesIO((folder / ARCHIVE).read_bytes()))
    with src, zipfile.ZipFile(folder / ARCHIVE, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            new = change(info.filename.split("/", 1)[1], content)
            if new is not None:
                info = zipfile.ZipInfo(info.filename, info.date_time)
                for key, value in kwargs.items():
                    setattr(info, key, value)
            with dst.open(info, "w") as out:
                for chunk in [new] if isinstance(new, bytes) else new or [content]:
                    out.write(chunk)


def program_edit(change: Callable[[dict], None]) -> Edit:
    """An archive edit that applies `change` to the program (`models/model.json`)."""

    def edit(name: str, content: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        program = json.loads(content)
        change(program)
        return json.dumps(program).encode()

    return edit


def random_image(folder: Path) -> Path:
    """`folder/img.png`: a 32 x 32 RGB image of seeded noise, the input the refused models get."""
    path = Path(folder) / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(path)
    return path


def predict_uri(capsys, folder: Path, image: Path) -> tuple[int, str]:
    """`resnetlab predict --model-uri <folder> <image>`: its exit status and stderr; a refused
    model prints nothing on stdout."""
    rc = main(["predict", "--model-uri", str(folder), str(image)])
    out, err = capsys.readouterr()
    assert out == ""
    return rc, err

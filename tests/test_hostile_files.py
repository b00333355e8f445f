"""Files that are not what they claim: unreadable checkpoints, wide-range and oversized images."""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import make_params, train

from resnetlab.core.errors import ResnetlabError
from resnetlab.evaluate.images import MAX_PIXELS, load_image
from resnetlab.train import checkpoint

# ---------------------------------------------------------------------------------------------
# checkpoint.pt


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """As in test_train: MLflow's SQLite store and artifacts land inside the test's folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def truncated_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "model": {"w": torch.ones(5000)}}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


UNREADABLE = {
    "empty": lambda: b"",
    "garbage": lambda: np.random.default_rng(0).bytes(4096),
    "truncated": truncated_checkpoint,
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_checkpoint_is_set_aside_and_training_starts_over(
    kind, tiny_prepared, workdir, caplog, capfd
):
    ckpt = workdir / "models/tiny/checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    blob = UNREADABLE[kind]()
    ckpt.write_bytes(blob)

    with caplog.at_level(logging.INFO):
        summary = train(make_params(epochs=1), tiny_prepared, workdir)

    assert summary["epochs"] == 1 and (workdir / "models/tiny/model.pt").is_file()
    (aside,) = ckpt.parent.glob("checkpoint.pt.unreadable-*")
    assert aside.read_bytes() == blob  # nothing lost
    (said,) = [r.getMessage() for r in caplog.records if "not a readable checkpoint" in r.message]
    assert "\n" not in said and aside.name in said and "training from scratch" in said
    # torch's advice to load with weights_only=False (i.e. run whatever the file holds) is
    # never relayed, neither in the log nor in a warning.
    out, err = capfd.readouterr()
    assert "weights_only" not in caplog.text + out + err
    # The new run wrote a proper checkpoint in its place.
    assert checkpoint.load(ckpt)["finished"] is True


def test_checkpoint_with_code_in_it_is_set_aside_without_running_it(tmp_path, caplog, capfd):
    import pickle

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "x": Payload()}, protocol=4))
    with caplog.at_level(logging.INFO):
        assert checkpoint.resumable(ckpt, "fingerprint") is None
    assert not marker.exists() and not ckpt.exists()
    assert len(list(tmp_path.glob("checkpoint.pt.unreadable-*"))) == 1
    out, err = capfd.readouterr()
    assert "weights_only" not in caplog.text + out + err


def test_checkpoint_of_the_wrong_shape_is_set_aside(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save(torch.zeros(3), ckpt)  # loads safely, but is no dict
    assert checkpoint.resumable(ckpt, "f") is None
    torch.save({"format": checkpoint.FORMAT, "fingerprint": "f"}, ckpt)  # no training state
    assert checkpoint.resumable(ckpt, "f") is None
    assert len(list(tmp_path.glob("checkpoint.pt.unreadable-*"))) == 2  # distinct names
    assert not ckpt.exists()


def test_checkpoint_whose_tensors_do_not_fit_is_set_aside_and_training_starts_over(
    tiny_prepared, workdir, caplog, capfd
):
    """Our format and fingerprint, tensors of other shapes. Was: a 115-line `load_state_dict`
    traceback, and the file stayed, so every re-run crashed the same way."""
    from resnetlab.core.params import parse_params
    from resnetlab.pipeline.train import CHECKPOINT_FILE
    from resnetlab.train.trainer import Trainer

    params = make_params(epochs=1)
    ckpt = workdir / "models/tiny" / CHECKPOINT_FILE
    ckpt.parent.mkdir(parents=True)
    variant = parse_params(params).variant("tiny")
    state = Trainer(variant, tiny_prepared, ckpt).state()  # unfinished, epoch 0: resumable
    state.model = {k: torch.zeros(2, *v.shape) for k, v in state.model.items()}
    state.save(ckpt)
    blob = ckpt.read_bytes()

    with caplog.at_level(logging.INFO):
        summary = train(params, tiny_prepared, workdir)

    assert summary["epochs"] == 1 and (workdir / "models/tiny/model.pt").is_file()
    (aside,) = ckpt.parent.glob(f"{CHECKPOINT_FILE}.unreadable-*")
    assert aside.read_bytes() == blob  # nothing lost
    (said,) = [r.getMessage() for r in caplog.records if "not a readable checkpoint" in r.message]
    assert "\n" not in said and len(said) < 400 and aside.name in said, said
    assert "its tensors do not fit the model: size mismatch for" in said
    assert "training from scratch" in said
    out, err = capfd.readouterr()
    assert "Traceback" not in caplog.text + out + err
    assert checkpoint.load(ckpt)["finished"] is True  # the re-run wrote a proper one


# ---------------------------------------------------------------------------------------------
# Images for `resnetlab predict`


def test_16_bit_greyscale_png_keeps_its_grey(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((48, 40), 32768, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"  # really stored with 16 bits
    x = load_image(path, size=32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, 32768 / 65535, atol=1e-4)


@pytest.mark.parametrize(("value", "expected"), [(0.5, 0.5), (0.25, 0.25)])
def test_float_tiff_in_unit_range_is_taken_as_given(tmp_path, value, expected):
    path = tmp_path / "grey.tif"
    Image.fromarray(np.full((40, 40), value, np.float32)).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_allclose(load_image(path, size=32), expected, atol=1e-6)


def test_float_tiff_beyond_one_is_scaled_by_its_maximum(tmp_path):
    values = np.full((40, 40), 100.0, np.float32)
    values[:, 20:] = 200.0  # right half twice as bright as the left
    path = tmp_path / "hdr.tif"
    Image.fromarray(values).save(path)
    x = load_image(path, size=32)
    np.testing.assert_allclose(x[:, :, :14], 0.5, atol=1e-6)
    np.testing.assert_allclose(x[:, :, -14:], 1.0, atol=1e-6)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels, with almost no pixel data: opening it
    costs nothing, decoding it would allocate width x height bytes (and then fail)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (10_000, 10_000, "10000 x 10000 pixels"),  # above the budget and Pillow's warning
        (8_000, 7_000, "8000 x 7000 pixels"),  # above the budget, below Pillow's guards
        (20_000, 20_000, "more than 179 megapixels"),  # Pillow's own error, reworded
    ],
)
def test_image_above_the_pixel_budget_is_refused_from_its_header(
    tmp_path, width, height, size, recwarn
):
    path = tmp_path / "huge.png"
    png_header_only(path, width, height)
    start = time.monotonic()
    with pytest.raises(ResnetlabError) as err:
        load_image(path, size=32)
    assert time.monotonic() - start < 1.0
    assert str(err.value) == (
        f"{path}: {size}, above the budget of {MAX_PIXELS / 1e6:g} megapixels; not decoded "
        "(shrink it first: the network sees 32 x 32 pixels)"
    )
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_image_just_within_the_budget_is_decoded(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (10_000, 100), 128).save(path)  # 1 megapixel
    np.testing.assert_allclose(load_image(path, size=32), 128 / 255, atol=1e-6)

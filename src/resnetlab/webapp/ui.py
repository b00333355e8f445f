"""Streamlit helpers shared by the pages: the project in view, cached loading of models, test
arrays and predictions, image grids and the empty-state messages.

Caches are keyed by file path and modification time, so retraining or re-evaluating a variant
while the app runs shows the new files on the next interaction, and each model is loaded once.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from resnetlab.webapp import project as data
from resnetlab.webapp.project import Project

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import pandas as pd
    import torch

    from resnetlab.data.prepared import Prepared

# Test images are shown 128 px wide: small ones (CIFAR's 32 x 32) enlarged by a whole factor,
# each pixel a sharp block rather than a blur.
GRID_PX = 128
# What Markdown and its extensions in Streamlit act on to load or link anything: links and images
# (`[`, `]`, `!`), HTML and autolinks (`<`, `>`, `&`, `@`), code, emphasis (`*`, `_`), headings,
# tables, strikethrough, `$math$` and `:red[...]`-style directives. `.`, `-`, `:` and
# parentheses, common in file names and messages, stay as they are; `literal` escapes them where
# they act. (Select box options are shown as plain text by Streamlit; labels, captions, st.markdown,
# st.error and st.caption are Markdown.)
_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]<>!#|~${}@&^])")


def current_project() -> Project:
    """The project the app serves: the folder `resnetlab app` started it in (as DVC runs the
    stages from the project root, and as `store.tracking_uri()` finds ./mlflow.db)."""
    return Project(Path.cwd())


def literal(text: object) -> str:
    """`text` (a file name, a class or variant name, a model URI, a message quoting them) as
    Markdown that shows it as is, on one line: st.markdown, st.error, st.caption and the like
    render their text as Markdown, where a name such as `![i](http://host/i.png)` would make the
    browser load an image. Every active character is backslash-escaped, a leading `-` or `1.`
    (a list), `www.` and `://` (autolinks) too."""
    line = _MARKDOWN_ACTIVE.sub(r"\\\1", " ".join(str(text).split()))
    line = re.sub(r"(?i)(www)\.", r"\1\\.", line).replace("://", "\\://")
    return re.sub(r"^(\d*)([-+.)])", r"\1\\\2", line)


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _variant_model(
    root: str, variant: str, mtime_ns: int
) -> tuple[torch.nn.Module, list[str], int]:
    del mtime_ns  # only part of the cache key: a retrained model is loaded again
    return data.load_variant_model(Project(Path(root)), variant)


def variant_model(proj: Project, variant: str) -> tuple[torch.nn.Module, list[str], int]:
    return _variant_model(str(proj.root), variant, _mtime(proj.model_file(variant)))


@st.cache_resource(show_spinner="Loading the model from MLflow…", max_entries=4)
def uri_model(uri: str) -> tuple[torch.nn.Module, list[str], int]:
    return data.load_uri_model(uri)


@st.cache_resource(show_spinner="Listing registered models…", ttl=60)
def _registered_model_uris(store_uri: str) -> list[str]:
    del store_uri  # only part of the cache key: store.client() reads the same setting
    from resnetlab.tracking import model_io

    return model_io.registered_model_uris()


def registered_model_uris() -> list[str]:
    """The registered model versions in the project's MLflow store (re-listed every minute)."""
    from resnetlab.tracking import store

    return _registered_model_uris(store.tracking_uri())


@st.cache_resource(show_spinner="Loading the test images…", max_entries=2)
def _test_split(root: str, mtime_ns: int) -> Prepared | None:
    del mtime_ns
    return data.read_test_split(Project(Path(root)))


def test_split(proj: Project) -> Prepared | None:
    meta = proj.prepared / "meta.json"
    return _test_split(str(proj.root), _mtime(meta) if meta.is_file() else 0)


@st.cache_data(show_spinner=False, max_entries=16)
def _predictions(root: str, variant: str, mtime_ns: int) -> pd.DataFrame | None:
    del mtime_ns
    return data.read_predictions(Project(Path(root)), variant)


def predictions(proj: Project, variant: str) -> pd.DataFrame | None:
    path = proj.predictions_file(variant)
    return _predictions(str(proj.root), variant, _mtime(path) if path.is_file() else 0)


WARM_UP_DELAY_S = 2.0


def _import_model_code() -> None:
    # Wait until the first page has reached the browser: an import holds the GIL for long
    # stretches and would delay it (by about a second on a small CPU).
    time.sleep(WARM_UP_DELAY_S)
    import resnetlab.evaluate.classifier
    import resnetlab.evaluate.images  # noqa: F401 - imported for its side effect: torch is loaded


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Import torch in the background once the first page is on screen, so the first
    classification does not wait for it (a few seconds on a small CPU). Once per server."""
    thread = threading.Thread(target=_import_model_code, name="resnetlab-warm-up", daemon=True)
    thread.start()
    return thread


def enlarge(image: np.ndarray, width: int = GRID_PX) -> np.ndarray:
    """Nearest-neighbour upscaling by the largest whole factor that keeps it within `width`
    (at least 1): each pixel becomes a factor x factor block."""
    factor = max(1, width // image.shape[1])
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def image_grid(
    images: np.ndarray, rows: pd.DataFrame, who: str = "predicted", limit: int = 24
) -> None:
    """The test images of `rows` (columns index, actual, predicted, confidence), in order, each
    with its caption; at most `limit`."""
    shown = rows.head(limit).to_dict("records")
    if not shown:
        return
    st.image(
        [enlarge(images[int(r["index"])]) for r in shown],
        caption=[literal(data.caption(r, who)) for r in shown],  # class names: Markdown here
        width=GRID_PX,
    )
    if len(rows) > limit:
        st.caption(f"the first {limit} of {len(rows)}, most confident first")


def no_model_message(proj: Project) -> str:
    return (
        f"No trained model yet in `{proj.show(proj.models)}/`. "
        f"`{data.repro_command(proj, 'train')}` trains one (`dvc repro` trains every variant)."
    )


def no_predictions_message(proj: Project) -> str:
    return (
        "No evaluated model yet (no predictions.csv under "
        f"`{proj.show(proj.metrics)}/`). `{data.repro_command(proj, 'evaluate')}` evaluates one "
        "on the test set."
    )


def no_data_message(proj: Project) -> str:
    return (
        f"No prepared data in `{proj.show(proj.prepared)}/`: the test images cannot be shown. "
        "`dvc repro prepare` makes it."
    )


def select_variant(
    label: str, variants: Sequence[str], key: str, default: str | None = None
) -> str:
    """A select box of `variants`, starting at `default` (else the leaderboard's best)."""
    if default is None:
        default = data.best_variant(variants, data.leaderboard_order(current_project()))
    index = list(variants).index(default) if default in variants else 0
    return st.selectbox(label, variants, index=index, key=key)

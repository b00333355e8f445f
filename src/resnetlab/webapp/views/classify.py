"""Classify page: pick a model (a trained variant, by default the leaderboard's best, or an
MLflow model URI / registered version), upload images, see each with its top-5 classes."""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from resnetlab.core.errors import ResnetlabError
from resnetlab.data.folder import IMAGE_EXTENSIONS
from resnetlab.webapp import project as data
from resnetlab.webapp import ui

TOP_K = 5
# What `images.load_image` (PIL) reads; the browser's file dialog offers only these.
IMAGE_TYPES = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # a folder dataset's, too
TRAINED, LOGGED = "Trained variant", "MLflow model"

ModelLoader = Callable[[], tuple[object, list[str], int]]  # model, classes, image side

# Top-k bars on a fixed 0-100% scale, so images compare at a glance. A plain Vega-Lite spec:
# st.bar_chart builds it with Altair, whose schema validation costs ~50 ms a chart.
TOP_K_CHART = {
    "mark": {"type": "bar", "tooltip": True},
    "encoding": {
        "y": {"field": "class", "type": "nominal", "sort": "-x", "title": None},
        "x": {
            "field": "probability",
            "type": "quantitative",
            "scale": {"domain": [0, 1]},
            "axis": {"format": ".0%"},
            "title": "probability",
        },
    },
}
CHART_HEIGHT = 26 * TOP_K + 50  # pixels: a bar per class, and the axis below


def choose_trained(proj: data.Project) -> tuple[str, ModelLoader] | None:
    variants = data.trained_variants(proj)
    if not variants:
        st.info(ui.no_model_message(proj) + " Or choose an MLflow model above.")
        return None
    variant = ui.select_variant("Variant (default: best test accuracy)", variants, key="variant")
    return variant, lambda: ui.variant_model(proj, variant)


def choose_logged(proj: data.Project) -> tuple[str, ModelLoader] | None:
    # Each variant's logged model (from its run file) and every registered model version.
    logged = {uri: f"{variant}: {uri}" for variant, uri in data.logged_model_uris(proj).items()}
    registered = {uri: uri for uri in ui.registered_model_uris()}
    labels = {**logged, **registered}
    chosen = None
    if labels:
        chosen = st.selectbox(
            "Logged or registered model", list(labels), format_func=labels.get, key="logged_uri"
        )
    typed = st.text_input(
        "or any model URI",
        key="model_uri",
        placeholder="runs:/<run id>/<variant>, models:/<name>/<version>, a local folder",
    ).strip()
    uri = typed or chosen
    if not uri:
        st.info(
            "No MLflow model logged yet: "
            f"`{data.repro_command(proj, 'train')}` logs one. Or type a model URI."
        )
        return None
    return uri, lambda: ui.uri_model(uri)


def show(upload: data.Upload) -> None:
    import pandas as pd  # here, not at the top: the page's first run must not wait for it

    prediction = upload.prediction
    assert prediction is not None
    picture, result = st.columns([1, 3], vertical_alignment="center")
    preview = data.thumbnail(upload.data)
    if preview is not None:
        picture.image(preview, width=128)
    top_class, top_p = prediction.top[0]
    result.markdown(f"{ui.literal(upload.name)}: **{ui.literal(top_class)}** {100 * top_p:.1f}%")
    frame = pd.DataFrame(prediction.top, columns=["class", "probability"])
    result.vega_lite_chart(frame, TOP_K_CHART, height=CHART_HEIGHT)


def classify(proj: data.Project, choice: tuple[str, ModelLoader], files: list) -> None:
    name, load = choice
    try:
        model, classes, image_size = load()
    except (ResnetlabError, OSError) as exc:  # OSError: the model file vanished meanwhile
        about = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
        st.error(ui.literal(f"cannot load {about}"))
        return
    start = time.perf_counter()
    try:
        uploads = [(f.name, f.getvalue()) for f in files]
        results = data.classify_uploads(model, classes, image_size, uploads, TOP_K)
    except ResnetlabError as exc:  # e.g. an MLflow model whose outputs are not the classes
        st.error(ui.literal(f"{name}: {exc}"))
        return
    seconds = time.perf_counter() - start
    for upload in results:
        if upload.error is not None:
            st.error(ui.literal(upload.error))
        else:
            show(upload)
    good = sum(u.prediction is not None for u in results)
    st.caption(
        f"{good} of {len(results)} images classified by {ui.literal(name)} in {seconds:.2f} s"
    )


def main() -> None:
    st.title("Classify")
    proj = ui.current_project()
    source = st.radio("Model", [TRAINED, LOGGED], horizontal=True, key="source")
    choice = choose_trained(proj) if source == TRAINED else choose_logged(proj)
    files = st.file_uploader(
        "Images (PNG, JPEG, ...; any size, colour or greyscale)",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
        key="uploads",
    )
    if choice is None:
        return
    if not files:
        ui.warm_up()  # the page is on screen: load torch while the user picks files
        return
    classify(proj, choice, files)


if __name__ == "__main__":
    main()

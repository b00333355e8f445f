"""Compare page: the leaderboard and the figures the compare stage drew, and for two variants
the test images one gets right and the other wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from resnetlab.core.errors import ResnetlabError
from resnetlab.webapp import project as data
from resnetlab.webapp import ui

if TYPE_CHECKING:
    import pandas as pd

# Means over seeds and their sample std (`_std`, empty in the CSV for a single seed).
MEAN_COLUMNS = ("best_val_accuracy", "test_accuracy", "test_error")
NO_SPREAD = "–"  # one seed has no sample std; Streamlit would print an empty number as "None"


def leaderboard(proj: data.Project) -> None:
    st.subheader("Leaderboard")
    try:
        board = data.read_leaderboard(proj)
    except ResnetlabError as exc:
        st.error(ui.literal(exc))
        return
    if board is None:
        where = proj.show(proj.leaderboard)
        st.info(f"No leaderboard yet (`{where}`): `dvc repro compare` writes it.")
        return
    shown, config = leaderboard_table(board)
    st.dataframe(shown, hide_index=True, column_config=config)


def leaderboard_table(board: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The leaderboard as shown: percentages, and each std as text (`NO_SPREAD` for one seed),
    with the column settings for st.dataframe."""
    shown = board.copy()
    config = {}
    for name in MEAN_COLUMNS:
        if name in shown:
            shown[name] = shown[name] * 100
            config[name] = st.column_config.NumberColumn(format="%.2f%%")
        std = f"{name}_std"
        if std in shown:
            shown[std] = [NO_SPREAD if v != v else f"{100 * v:.2f}%" for v in shown[std]]
            config[std] = st.column_config.TextColumn(
                help=f"sample std of {name} over seeds; {NO_SPREAD} for one seed"
            )
    return shown, config


def figures(proj: data.Project) -> None:
    st.subheader("Figures")
    paths = data.comparison_figures(proj)
    if not paths:
        where = proj.show(proj.figures)
        st.info(f"No figures yet in `{where}/`: `dvc repro compare` draws them.")
        return
    for column, path in zip(st.columns(len(paths)), paths, strict=True):
        column.image(str(path), caption=ui.literal(path.stem.replace("_", " ")))
    with_figures = [v for v in data.trained_variants(proj) if data.variant_figures(proj, v)]
    if with_figures:
        variant = ui.select_variant("Figures of one variant", with_figures, key="figures_variant")
        paths = data.variant_figures(proj, variant)
        for column, path in zip(st.columns(len(paths)), paths, strict=True):
            column.image(str(path), caption=ui.literal(path.stem.replace("_", " ")))


def right_and_wrong(proj: data.Project) -> None:
    st.subheader("Right in one, wrong in the other")
    variants = data.evaluated_variants(proj)
    if len(variants) < 2:
        st.info(
            "Needs two evaluated variants; "
            f"{len(variants) or 'none'} so far. `{data.repro_command(proj, 'evaluate')}` "
            "evaluates one."
        )
        return
    ranking = data.leaderboard_order(proj)
    first = data.best_variant(variants, ranking)
    second = data.best_variant([v for v in variants if v != first], ranking)
    left, right = st.columns(2)
    with left:
        a = ui.select_variant("Variant A", variants, key="compare_a", default=first)
    with right:
        b = ui.select_variant("Variant B", variants, key="compare_b", default=second)
    if a == b:
        st.info("Choose two different variants.")
        return
    try:
        pa, pb, test = ui.predictions(proj, a), ui.predictions(proj, b), ui.test_split(proj)
        if pa is None or pb is None:
            st.info(ui.no_predictions_message(proj))
            return
        if test is None:
            st.warning(ui.no_data_message(proj))
            return
        data.check_matches_test_split(pa, test, data.evaluate_stage(proj, a))
        data.check_matches_test_split(pb, test, data.evaluate_stage(proj, b))
    except (ResnetlabError, OSError) as exc:
        st.error(ui.literal(exc))
        return
    images = test.images["test"]
    for tab, (good, bad, good_name, bad_name) in zip(
        st.tabs([ui.literal(f"{a} right, {b} wrong"), ui.literal(f"{b} right, {a} wrong")]),
        ((pa, pb, a, b), (pb, pa, b, a)),
        strict=True,
    ):
        with tab:
            rows = data.right_wrong(good, bad)
            st.caption(
                ui.literal(
                    f"{len(rows)} test images {good_name} classifies correctly and {bad_name} "
                    f"does not; captions show {bad_name}'s answer, most confident first"
                )
            )
            ui.image_grid(images, rows, who=bad_name)


def main() -> None:
    st.title("Compare")
    proj = ui.current_project()
    leaderboard(proj)
    figures(proj)
    right_and_wrong(proj)


if __name__ == "__main__":
    main()

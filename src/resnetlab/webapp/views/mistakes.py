"""Mistakes page: for a chosen variant, the test images it got wrong, filtered by true and
predicted class (a cell of the confusion matrix, or the two select boxes), most confident first."""

from __future__ import annotations

import streamlit as st

from resnetlab.core.errors import ResnetlabError
from resnetlab.webapp import project as data
from resnetlab.webapp import ui

ANY = "any"
SHOW_CHOICES = (24, 60, 120, 240)


def follow_clicked_cell(classes: list[str], cells: list) -> None:
    """A newly clicked cell of the confusion matrix sets both filters (before the select boxes
    are drawn in this run, which is when Streamlit lets their state be set)."""
    cell = tuple(cells[0]) if cells else None
    if cell is None or cell == st.session_state.get("_clicked_cell"):
        return  # nothing new clicked: the select boxes keep what the user picked there
    st.session_state["_clicked_cell"] = cell
    row, column = cell
    if 0 <= int(row) < len(classes) and column in classes:
        st.session_state["true_class"] = classes[int(row)]
        st.session_state["predicted_class"] = column


def confusion_matrix(predictions, classes: list[str]) -> None:
    st.subheader("Confusion matrix")
    st.caption("rows: true class, columns: predicted class; click a cell to see its images")
    counts = data.confusion_counts(predictions, classes)
    event = st.dataframe(
        counts.style.background_gradient(cmap="Blues"),
        on_select="rerun",
        selection_mode="single-cell",
        key="confusion",
    )
    follow_clicked_cell(classes, list(event.selection.get("cells", [])))


def filters(classes: list[str]) -> tuple[str | None, str | None, int]:
    true_col, predicted_col, show_col = st.columns([2, 2, 1])
    true = true_col.selectbox("True class", [ANY, *classes], key="true_class")
    predicted = predicted_col.selectbox("Predicted class", [ANY, *classes], key="predicted_class")
    limit = show_col.selectbox("Show", SHOW_CHOICES, key="mistakes_shown")
    return (None if true == ANY else true), (None if predicted == ANY else predicted), limit


def main() -> None:
    st.title("Mistakes")
    proj = ui.current_project()
    variants = data.evaluated_variants(proj)
    if not variants:
        trained = data.trained_variants(proj)
        st.info(ui.no_predictions_message(proj) if trained else ui.no_model_message(proj))
        return
    variant = ui.select_variant("Variant", variants, key="mistakes_variant")
    try:
        predictions = ui.predictions(proj, variant)
        test = ui.test_split(proj)
        if predictions is not None and test is not None:
            data.check_matches_test_split(predictions, test, data.evaluate_stage(proj, variant))
    except (ResnetlabError, OSError) as exc:
        st.error(ui.literal(exc))
        return
    if predictions is None:  # removed since the variant list was read
        st.info(ui.no_predictions_message(proj))
        return
    if test is None:
        st.warning(ui.no_data_message(proj))
        return

    classes = list(test.classes)
    wrong_total = len(data.mistakes(predictions))
    st.write(
        f"**{ui.literal(variant)}** gets **{wrong_total}** of {len(predictions)} test images wrong "
        f"({100 * wrong_total / max(len(predictions), 1):.1f}% error)."
    )
    confusion_matrix(predictions, classes)
    true, predicted, limit = filters(classes)
    wrong = data.mistakes(predictions, true, predicted)
    if wrong.empty:
        st.info("No mistakes with these classes.")
        return
    st.caption(f"{len(wrong)} mistakes, most confident first")
    ui.image_grid(test.images["test"], wrong, limit=limit)


if __name__ == "__main__":
    main()

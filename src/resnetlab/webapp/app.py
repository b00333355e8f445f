"""The web app's entry script, run by Streamlit (`resnetlab app` starts it) on every
interaction: declares the three pages, one script each under `views/`, and runs the one in view.
Streamlit runs it as `__main__`; importing it does nothing."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = (
    ("classify.py", "Classify", ":material/image_search:"),
    ("mistakes.py", "Mistakes", ":material/error:"),
    ("compare.py", "Compare", ":material/compare:"),
)


def main() -> None:
    st.set_page_config(page_title="resnetlab", page_icon=":material/image_search:", layout="wide")
    pages = [
        st.Page(VIEWS / script, title=title, icon=icon, default=i == 0)
        for i, (script, title, icon) in enumerate(PAGES)
    ]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()

"""The app's pages, one Streamlit script each (run by `app.py`, never imported)."""

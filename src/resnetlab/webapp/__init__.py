"""The web app (`resnetlab app`): classify uploaded images, inspect a model's mistakes, compare
variants. `project` holds everything it shows as plain data (no Streamlit, tested directly);
`ui` the Streamlit helpers (caching, grids, empty states); `views/` one thin script per page;
`app.py` the entry script Streamlit runs. No pipeline stage imports any of it."""

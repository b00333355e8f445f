"""Evaluating a trained model: rebuilding it from its file, scoring (with test-time augmentation),
the metrics, and reading image files for `predict` and the web app.
"""

"""Everything that talks to MLflow; no module outside this package imports mlflow. Output-neutral:
what is recorded mirrors what the stages write to disk, and no DVC output depends on this code.
"""

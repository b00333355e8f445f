"""Recording the evaluate and compare stages' results: test metrics into the training run (and its
logged model), the leaderboard and figures into the experiment's parent run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.tracking import registry
from resnetlab.tracking.lineage import Lineage, common_tags, parent_run
from resnetlab.tracking.store import (
    UPLOAD_S,
    Caller,
    client,
    experiment_id,
    is_missing,
    now_ms,
    tracking_uri,
)

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Sequence[Path]) -> None:
    """Add test-set metrics (already `test_`-prefixed) and files to a finished training run."""
    uri = tracking_uri()
    calls = Caller(uri)
    now = now_ms()

    def record() -> None:
        from mlflow.entities import Metric

        c = client()
        # Linked to the run's logged model too (MLflow 3): the Models tab ranks models by them.
        outputs = getattr(c.get_run(run_id), "outputs", None)
        models = [o.model_id for o in getattr(outputs, "model_outputs", None) or []]
        model_id = models[-1] if models else None
        batch = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()]
        c.log_batch(run_id, metrics=batch)
        for path in files:
            c.log_artifact(run_id, str(path), artifact_path="evaluation")
        if "test_accuracy" in metrics:  # on the registered version too (Models page)
            registry.add_test_accuracy(c, run_id, float(metrics["test_accuracy"]))

    try:
        calls.probe()
        calls(record, UPLOAD_S)
    except Exception as exc:
        where = Path(files[0]).parent if files else "disk"
        raise ResnetlabError(
            f"MLflow tracking store {uri} did not take the evaluation ({first_line(exc)}): it "
            f"is written to {where} but not recorded in run {run_id}; re-run this stage when "
            "the store answers"
        ) from None


def log_comparison(
    experiment: str,
    group: Lineage,
    leaderboard: pd.DataFrame,
    files: Iterable[Path],
    variant_files: Mapping[str, Sequence[Path]] | None = None,
) -> str:
    """Record the leaderboard and comparison figures into the parent run of `group` (found or
    created, see `parent_run`), and each variant's figures into that variant's training run
    (`variant_files`: run id -> files); returns the parent run's id."""
    uri = tracking_uri()
    calls = Caller(uri)
    files = list(files)

    def record() -> str:
        from mlflow.entities import RunTag

        c = client()
        parent = parent_run(c, experiment_id(c, experiment), group)
        tags = {**common_tags("compare"), **group.tags(), "compared": "true"}
        # The leaderboard as an MLflow table (the UI shows it as one); written whole each time,
        # where log_table would append the rows to a re-run's earlier table.
        tags["mlflow.loggedArtifacts"] = json.dumps([{"path": "leaderboard.json", "type": "table"}])
        with tempfile.TemporaryDirectory(prefix="resnetlab-compare-") as tmp:
            table = Path(tmp) / "leaderboard.json"
            table.write_text(leaderboard.to_json(orient="split", index=False))
            c.log_artifact(parent, str(table))
        c.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            c.log_artifact(parent, str(path))
        for variant_run, paths in (variant_files or {}).items():
            try:
                c.get_run(variant_run)
            except Exception as exc:
                if not is_missing(exc):
                    raise
                log.warning("MLflow run %s is gone; its figures are not logged", variant_run)
                continue
            for path in paths:
                c.log_artifact(variant_run, str(path), artifact_path="figures")
        c.set_terminated(parent, status="FINISHED")
        return parent

    try:
        calls.probe()
        return calls(record, UPLOAD_S)
    except Exception as exc:
        raise ResnetlabError(
            f"MLflow tracking store {uri} did not take the comparison ({first_line(exc)}): the "
            "reports are written but not recorded; re-run this stage when the store answers"
        ) from None

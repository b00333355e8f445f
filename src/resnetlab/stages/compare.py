"""`resnetlab compare`: every variant's train/eval records -> the leaderboard (CSV + Markdown) and
every figure of the pipeline (`resnetlab.figures`, under `<out>/figures/`), also logged to MLflow:
into the parent run of the DVC experiment (or `dvc repro`) it runs under, the variants' own
figures into their training runs.

The only stage that draws, so editing a figure re-runs nothing else. Params read: `variants`
(which to compare), `mlflow.experiment`. An unreachable tracking store stops it at start.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from resnetlab import figures, leaderboard
from resnetlab.config import load_params
from resnetlab.records import RecordError, RunFile

log = logging.getLogger(__name__)

FIGURES = "figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument(
        "--metrics", type=Path, required=True, help="folder with one sub-folder per variant"
    )
    p.add_argument("--gradients", type=Path, help="the diagnose stage's gradient_profile.csv")
    p.add_argument(
        "--models",
        type=Path,
        help="the train stages' folder; its mlflow_run.json files say which MLflow run gets "
        "each variant's figures (read for tracking only)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    variants = leaderboard.check_variants(list(params.variants))
    # Imported here: MLflow is slow to import and nothing but recording needs it.
    from resnetlab import tracking

    # Before the work, in seconds: recording the result needs the store.
    tracking.ensure_reachable(params.mlflow.experiment)
    # Everything is read (and checked) before anything is written: a missing variant leaves the
    # previous reports untouched rather than half replaced.
    board = leaderboard.build_leaderboard(variants, args.metrics)
    histories = leaderboard.load_histories(variants, args.metrics)
    confusions = {
        v: figures.load_confusion(args.metrics / v / "confusion.csv", v) for v in variants
    }
    gradients = figures.load_gradient_profile(args.gradients) if args.gradients else None

    files = leaderboard.write_leaderboard(board, args.out)
    files += figures.write_comparison_figures(board, histories, args.out / FIGURES, gradients)
    per_variant = figures.write_variant_figures(histories, confusions, args.out / FIGURES)
    for line in leaderboard.leaderboard_markdown(board).splitlines():
        log.info("%s", line)

    runs = _runs_of(per_variant, args.models)
    group = tracking.lineage(args.params)
    tracking.log_comparison(params.mlflow.experiment, group, board, files, variant_files=runs)


def _runs_of(
    per_variant: Mapping[str, Sequence[Path]], models: Path | None
) -> dict[str, Sequence[Path]]:
    """MLflow run id -> figures, for the variants whose run file can be read."""
    runs: dict[str, Sequence[Path]] = {}
    for variant, paths in per_variant.items():
        if models is None:
            continue
        try:
            runs[RunFile.read(models / variant / "mlflow_run.json", variant).run_id] = paths
        except RecordError as exc:
            log.warning("%s: figures not logged to its MLflow run (%s)", variant, exc)
    return runs

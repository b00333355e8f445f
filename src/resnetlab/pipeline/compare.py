"""`resnetlab compare`: every run's train/eval records -> the per-run table (`runs.csv`), the
leaderboard over seeds (CSV + Markdown: mean ± sample std and n), the mean of the runs'
metrics files (`mean.json`, a DVC metrics file), the variants' mean training curves (`curves.csv`,
behind dvc.yaml's top-level plots), every figure of the pipeline (`report.figures`, under
`<out>/figures/`) and the measured-vs-published report
(`report.published`), also logged to MLflow: into the parent run of the DVC experiment (or
`dvc repro`) it runs under, each run's own figures into its training run.

The only stage that draws, so editing a figure re-runs nothing else. Params read: `run_variants`
and `seeds` (which runs to compare), `data.val_size`, `data.subset` (the training budget the report
compares with the sources'), `mlflow.experiment`. An unreachable tracking store stops it at start.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from resnetlab.core.layout import RUN_FILE, run_folder
from resnetlab.core.params import load_params
from resnetlab.core.records import RecordError, RunFile, run_key
from resnetlab.data import cifar10
from resnetlab.report import figures, leaderboard, published

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
        "each run's figures (read for tracking only)",
    )
    p.add_argument(
        "--published",
        type=Path,
        help="published numbers with their citations (published.yaml); without it, no report",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    variants = leaderboard.check_variants(list(params.selected))
    seeds = list(params.seeds)
    # Imported here: MLflow is slow to import and nothing but recording needs it.
    from resnetlab.tracking import lineage, results, store

    # Before the work, in seconds: recording the result needs the store.
    store.ensure_reachable(params.mlflow.experiment)
    # Everything is read (and checked) before anything is written: a missing run leaves the
    # previous reports untouched rather than half replaced.
    runs = leaderboard.build_runs(variants, seeds, args.metrics)
    board = leaderboard.build_leaderboard(runs)
    means = leaderboard.mean_report(variants, seeds, args.metrics)
    histories = leaderboard.load_histories(variants, seeds, args.metrics)
    curves = leaderboard.mean_curves(histories)
    confusions = {v: figures.pooled_confusion(v, seeds, args.metrics) for v in variants}
    gradients = figures.load_gradient_profile(args.gradients) if args.gradients else None
    sources = published.load_published(args.published) if args.published else None

    files = leaderboard.write_leaderboard(board, args.out, runs, curves)
    files.append(leaderboard.write_mean(means, args.out))
    by_variant = leaderboard.curves_of(curves)
    files += figures.write_comparison_figures(
        board, by_variant, args.out / FIGURES, gradients, runs
    )
    per_variant = figures.write_variant_figures(by_variant, confusions, args.out / FIGURES)
    for line in leaderboard.leaderboard_markdown(board).splitlines():
        log.info("%s", line)
    if sources is not None:
        data = params.data
        train_images = data.subset or cifar10.TRAIN_SIZE - data.val_size
        finals = published.final_train_errors(histories)
        table = published.compare_published(sources, runs, finals, train_images, data.subset)
        claims = published.check_claims(sources, runs, finals)
        files += published.write_report(table, claims, args.out)
        for check in claims:
            log.info("claim %s: %s (%s)", check.claim.name, check.verdict, check.detail)

    logged = _runs_of(per_variant, seeds, args.models)
    group = lineage.lineage(args.params)
    results.log_comparison(params.mlflow.experiment, group, board, files, variant_files=logged)


def _runs_of(
    per_variant: Mapping[str, Sequence[Path]], seeds: Sequence[int], models: Path | None
) -> dict[str, Sequence[Path]]:
    """MLflow run id -> figures: each variant's figures go to the run of every seed whose run
    file can be read."""
    logged: dict[str, Sequence[Path]] = {}
    for variant, paths in per_variant.items():
        if models is None:
            continue
        for k in seeds:
            path = run_folder(models, variant, k) / RUN_FILE
            try:
                logged[RunFile.read(path, run_key(variant, k)).run_id] = paths
            except RecordError as exc:
                log.warning("%s: figures not logged to its MLflow run (%s)", variant, exc)
    return logged

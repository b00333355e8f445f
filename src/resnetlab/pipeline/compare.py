"""`resnetlab compare`: every run's train/eval records -> the per-run table (`runs.csv`), the
leaderboard over seeds (CSV + Markdown: mean ± sample std and n), the mean of the runs'
metrics files (`mean.json`, a DVC metrics file), the variants' mean training curves (`curves.csv`,
behind dvc.yaml's top-level plots), every figure of the pipeline (`report.figures`, under
`<out>/figures/`) and the measured-vs-published report
(`report.published`), also logged to MLflow: into the parent run of the DVC experiment (or
`dvc repro`) it runs under, each run's own figures into its training run.

The measured-vs-published report takes the published numbers of the dataset the prepared data was
made from (`meta.json`'s `dataset`) and compares the sources' training budgets with the prepared
training split's size (its labels' `.npy` header): nothing else of the prepared data is read.

The only stage that draws, so editing a figure re-runs nothing else. Params read: `run_variants`
and `seeds` (which runs to compare), `data.subset` (whether the runs trained on a subset, which
the report never compares with a source), `mlflow.experiment`. An unreachable tracking store
stops it at start.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from resnetlab.core.layout import RUN_FILE, run_folder
from resnetlab.core.params import load_params
from resnetlab.core.records import RecordError, RunFile, run_key
from resnetlab.data import prepared
from resnetlab.report import figures, leaderboard, published, published_file

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
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/prepared"),
        help="the prepared data (read with --published only: meta.json's dataset picks the "
        "published numbers, the train split's size is the runs' training budget)",
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
    numbers, train_images = None, 0
    if args.published:
        dataset, train_images = prepared_dataset(args.data)
        numbers = published_file.load_published(args.published).for_dataset(dataset)

    files = leaderboard.write_leaderboard(board, args.out, runs, curves)
    files.append(leaderboard.write_mean(means, args.out))
    by_variant = leaderboard.curves_of(curves)
    files += figures.write_comparison_figures(
        board, by_variant, args.out / FIGURES, gradients, runs
    )
    per_variant = figures.write_variant_figures(by_variant, confusions, args.out / FIGURES)
    for line in leaderboard.leaderboard_markdown(board).splitlines():
        log.info("%s", line)
    if numbers is not None:
        subset = params.data.subset
        finals = published.final_train_errors(histories)
        table = published.compare_published(numbers, runs, finals, train_images, subset)
        claims = published.check_claims(numbers, runs, finals)
        files += published.write_report(table, claims, args.out, numbers)
        if numbers.empty:
            log.info("%s", published.no_numbers_line(numbers.dataset))
        for check in claims:
            log.info("claim %s: %s (%s)", check.claim.name, check.verdict, check.detail)

    logged = _runs_of(per_variant, seeds, args.models)
    group = lineage.lineage(args.params)
    results.log_comparison(params.mlflow.experiment, group, board, files, variant_files=logged)


def prepared_dataset(folder: Path) -> tuple[str, int]:
    """The key of the dataset the prepared data under `folder` was made from, and the number of
    its training images: `meta.json` and the train labels' `.npy` header (checked as
    `load_prepared` checks them), no array. A missing or bad file raises a one-line
    ResnetlabError naming it."""
    key = prepared.load_prepared(folder, splits=()).dataset
    return key, prepared.split_size(folder, "train")


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

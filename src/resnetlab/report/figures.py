"""Every figure of the pipeline, drawn from the stages' records: per variant its training curves
(mean over seeds, with a band) and test confusion matrices (summed over seeds), across variants
test accuracy (mean, error bar, every seed as a dot), the plain-vs-ResNet degradation curves (He
et al. 2015, Fig. 6; mean curves with a band) and the gradient profile at initialisation."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.core.layout import CONFUSION_CSV, run_folder
from resnetlab.core.records import RecordError, read_csv, run_key
from resnetlab.report.leaderboard import degradation_groups
from resnetlab.report.plots import (
    plot_confusion,
    plot_degradation,
    plot_gradient_profile,
    plot_history,
    plot_test_accuracy,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TEST_ACCURACY_PNG = "test_accuracy.png"
DEGRADATION_PNG = "degradation.png"
GRADIENT_PNG = "gradient_profile.png"
VARIANT_PNGS = ("curves.png", "confusion.png", "confusion_normalized.png")


def load_confusion(path: Path, variant: str) -> tuple[list[str], Any]:
    """(class names, counts) from an evaluate stage's confusion.csv (`variant`: the stage's
    suffix, `<variant>-<seed>`)."""
    path = Path(path)
    frame = read_csv(path, f"evaluate@{variant}", index_col=0)
    if list(frame.index.astype(str)) != list(frame.columns) or not frame.shape[0]:
        raise RecordError(f"{path}: not a square confusion matrix with class names")
    return list(frame.columns), frame.to_numpy()


def pooled_confusion(
    variant: str, seeds: Sequence[int], metrics_dir: Path
) -> tuple[list[str], Any]:
    """A variant's test confusion counts summed over its seeds (each seed classifies the same
    test images, so the sum counts every (image, seed) prediction once)."""
    total: Any = None
    classes: list[str] = []
    for k in seeds:
        path = run_folder(metrics_dir, variant, k) / CONFUSION_CSV
        names, counts = load_confusion(path, run_key(variant, k))
        if total is not None and names != classes:
            raise RecordError(f"{path}: class names differ from seed {seeds[0]}'s")
        classes, total = names, counts if total is None else total + counts
    return classes, total


def load_gradient_profile(path: Path) -> dict[str, list[float]]:
    """label -> gradient norms from input to output, from the diagnose stage's CSV."""
    frame = read_csv(path, "diagnose")
    lacking = {"label", "layer_index", "grad_norm"} - set(frame.columns)
    if lacking:
        raise RecordError(f"{path}: missing column(s) {', '.join(sorted(lacking))}")
    order = list(dict.fromkeys(frame["label"]))  # as measured: by depth, plain first
    frame = frame.sort_values(["label", "layer_index"], kind="stable")
    return {label: frame[frame["label"] == label]["grad_norm"].tolist() for label in order}


def write_comparison_figures(
    leaderboard: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    figures: Path,
    gradients: Mapping[str, Sequence[float]] | None = None,
    runs: pd.DataFrame | None = None,
) -> list[Path]:
    """Test accuracy per variant (``runs``: one row per seed, drawn as dots), the degradation
    curves (when there are plain variants; ``histories``: variant -> its curves, averaged over
    seeds with `_std` columns for the band) and the gradient profile (``gradients``: label ->
    norms, as the diagnose stage measured them; None or empty skips it) under ``figures``;
    returns the paths written. A figure that no longer applies is removed rather than left to
    mislead."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    written = [figures / TEST_ACCURACY_PNG]
    plot_test_accuracy(leaderboard, written[0], runs)

    groups = degradation_groups(leaderboard)
    degradation = figures / DEGRADATION_PNG
    if groups:
        depth_of = dict(zip(leaderboard["variant"], leaderboard["depth"], strict=True))
        # One colour per depth in both panels, so plain-20 and ResNet-20 match as in the paper.
        depth_rank = {d: k for k, d in enumerate(sorted(set(depth_of.values())))}
        colours = {v: f"C{depth_rank[d] % 10}" for v, d in depth_of.items()}
        plot_degradation(histories, groups, degradation, colours=colours)
        written.append(degradation)
        if not groups["ResNet"]:
            log.info("degradation: no resnet_v1 variant matches the depth of a plain one")
    else:
        # A figure left from an earlier run would now describe variants that are gone.
        degradation.unlink(missing_ok=True)
        log.info("skipping %s: no variant uses model 'plain'", degradation.name)

    gradient_png = figures / GRADIENT_PNG
    if gradients:
        # One colour per depth: the plain net dashed, its residual twin solid.
        depths = list(dict.fromkeys(label.rsplit("-", 1)[-1] for label in gradients))
        colours = {label: f"C{depths.index(label.rsplit('-', 1)[-1]) % 10}" for label in gradients}
        plot_gradient_profile(
            gradients,
            gradient_png,
            title="per-layer gradient norm at initialisation",
            colours=colours,
        )
        written.append(gradient_png)
    else:
        gradient_png.unlink(missing_ok=True)
    return written


def write_variant_figures(
    histories: Mapping[str, pd.DataFrame],
    confusions: Mapping[str, tuple[list[str], Any]],
    figures_dir: Path,
) -> dict[str, list[Path]]:
    """Per variant, under ``figures_dir/<variant>/``: training curves (``histories``: averaged
    over seeds, with a band where `_std` columns are given) and the test confusion matrix
    (counts, row-normalised). Folders of variants no longer compared are removed."""
    figures_dir = Path(figures_dir)
    if figures_dir.is_dir():
        for stale in figures_dir.iterdir():
            if stale.is_dir() and stale.name not in histories:
                shutil.rmtree(stale)
    written: dict[str, list[Path]] = {}
    for v, history in histories.items():
        folder = figures_dir / v
        curves, counts, normalised = (folder / name for name in VARIANT_PNGS)
        plot_history(history, curves, title=f"{v}: training curves")
        classes, cm = confusions[v]
        plot_confusion(cm, classes, counts, title=f"{v}: test confusion (counts)")
        plot_confusion(cm, classes, normalised, normalize=True, title=f"{v}: row-normalised")
        written[v] = [curves, counts, normalised]
    return written

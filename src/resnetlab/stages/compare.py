"""`resnetlab compare`: every variant's train/eval records -> the leaderboard (CSV + Markdown) and
every figure of the pipeline, also logged to MLflow.

Figures (under `<out>/figures/`): per variant, its training curves and its test confusion matrix
(counts and row-normalised); across variants, test accuracy, the plain-vs-ResNet degradation
curves (He et al. 2015, Fig. 6) and the gradient profile measured by the diagnose stage. This is
the only stage that draws, so editing a figure re-runs nothing else.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.config import load_params
from resnetlab.errors import ResnetlabError
from resnetlab.records import EvalReport, History, RecordError, RunFile, TrainSummary

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Columns of leaderboard.csv; accuracies and errors are fractions in [0, 1], times in seconds.
LEADERBOARD_COLUMNS = (
    "variant",
    "model",
    "depth",
    "parameters",
    "epochs",
    "best_epoch",
    "best_val_accuracy",
    "test_accuracy",
    "test_error",
    "test_loss",
    "macro_f1",
    "train_time_s",
    "images_per_s",
)
# leaderboard.md: column -> header, in table order.
MARKDOWN_HEADERS = {
    "variant": "variant",
    "model": "model",
    "depth": "depth",
    "parameters": "parameters",
    "epochs": "epochs",
    "best_val_accuracy": "best val accuracy",
    "test_accuracy": "test accuracy",
    "test_error": "test error",
    "macro_f1": "macro F1",
    "train_time_s": "train time",
    "images_per_s": "images/s",
}

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
FIGURES = "figures"
TEST_ACCURACY_PNG = "test_accuracy.png"
DEGRADATION_PNG = "degradation.png"
GRADIENT_PNG = "gradient_profile.png"
VARIANT_PNGS = ("curves.png", "confusion.png", "confusion_normalized.png")


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
    variants = _variants(list(params.variants))
    # Everything is read (and checked) before anything is written: a missing variant leaves the
    # previous reports untouched rather than half replaced.
    leaderboard = build_leaderboard(variants, args.metrics)
    histories = load_histories(variants, args.metrics)
    confusions = {v: load_confusion(args.metrics / v / "confusion.csv", v) for v in variants}
    gradients = load_gradient_profile(args.gradients) if args.gradients else None
    files = write_reports(leaderboard, histories, args.out, gradients)
    per_variant = write_variant_figures(histories, confusions, args.out / FIGURES)
    for line in leaderboard_markdown(leaderboard).splitlines():
        log.info("%s", line)

    # Imported here: MLflow is slow to import and the rest of the stage does not need it.
    from resnetlab import tracking

    tracking.log_comparison(
        params.mlflow.experiment,
        leaderboard,
        files,
        variant_files=_runs_of(per_variant, args.models),
    )


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


def _variants(names: list[str]) -> list[str]:
    if not names:
        raise ResnetlabError("params declare no variants: nothing to compare")
    return names


def build_leaderboard(variants: Sequence[str], metrics_dir: Path) -> pd.DataFrame:
    """One row per variant from ``<metrics_dir>/<variant>/{train,eval}.json``, sorted by test
    accuracy (best first); columns :data:`LEADERBOARD_COLUMNS`.

    Raises :class:`RecordError` naming the first missing or malformed file.
    """
    import pandas as pd

    rows = []
    for v in _variants(list(variants)):
        folder = Path(metrics_dir) / v
        train = TrainSummary.read(folder / "train.json", v)
        evaluation = EvalReport.read(folder / "eval.json", v)
        if train.variant != v:
            log.warning("%s: written for variant %r", folder / "train.json", train.variant)
        rows.append(
            {
                "variant": v,
                "model": train.model,
                "depth": train.depth,
                "parameters": train.parameters,
                "epochs": train.epochs,
                "best_epoch": train.best_epoch,
                "best_val_accuracy": train.best_val_accuracy,
                "test_accuracy": evaluation.accuracy,
                "test_error": 1.0 - evaluation.accuracy,
                "test_loss": evaluation.loss,
                "macro_f1": evaluation.macro_f1,
                "train_time_s": train.train_time_s,
                "images_per_s": train.images_per_s,
            }
        )
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    # Ties broken by name so the order (and the committed CSV) does not depend on params order.
    frame = frame.sort_values(["test_accuracy", "variant"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def load_histories(variants: Sequence[str], metrics_dir: Path) -> dict[str, pd.DataFrame]:
    """``<metrics_dir>/<variant>/history.csv`` of every variant, checked, as frames."""
    return {v: History.read(Path(metrics_dir) / v / "history.csv", v).frame() for v in variants}


def load_confusion(path: Path, variant: str) -> tuple[list[str], Any]:
    """(class names, counts) from an evaluate stage's confusion.csv."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, index_col=0)
    except FileNotFoundError:
        raise RecordError(f"{path}: not found; run `dvc repro evaluate@{variant}`") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RecordError(f"{path}: not a readable CSV ({exc})") from None
    if list(frame.index.astype(str)) != list(frame.columns) or not frame.shape[0]:
        raise RecordError(f"{path}: not a square confusion matrix with class names")
    return list(frame.columns), frame.to_numpy()


def load_gradient_profile(path: Path) -> dict[str, list[float]]:
    """label -> gradient norms from input to output, from the diagnose stage's CSV."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise RecordError(f"{path}: not found; run `dvc repro diagnose`") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RecordError(f"{path}: not a readable CSV ({exc})") from None
    lacking = {"label", "layer_index", "grad_norm"} - set(frame.columns)
    if lacking:
        raise RecordError(f"{path}: missing column(s) {', '.join(sorted(lacking))}")
    order = list(dict.fromkeys(frame["label"]))  # as measured: by depth, plain first
    frame = frame.sort_values(["label", "layer_index"], kind="stable")
    return {label: frame[frame["label"] == label]["grad_norm"].tolist() for label in order}


def degradation_groups(leaderboard: pd.DataFrame) -> dict[str, list[str]]:
    """Panels of the degradation figure: every ``plain`` variant, and every ``resnet_v1`` variant
    whose depth matches a plain one; each list ordered by depth, then name. Empty without plain
    variants."""
    rows = leaderboard.sort_values(["depth", "variant"], kind="stable")
    plain = rows[rows["model"] == "plain"]
    if plain.empty:
        return {}
    residual = rows[(rows["model"] == "resnet_v1") & rows["depth"].isin(set(plain["depth"]))]
    return {"plain": plain["variant"].tolist(), "ResNet": residual["variant"].tolist()}


def _percent(x: float) -> str:
    return f"{100.0 * x:.2f}%"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def _count(n: int) -> str:
    # He et al. quote parameter counts as e.g. 0.27M; keep a unit so small test nets stay exact.
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


_FORMATS: dict[str, Any] = {
    "depth": str,
    "parameters": _count,
    "epochs": str,
    "best_val_accuracy": _percent,
    "test_accuracy": _percent,
    "test_error": _percent,
    "macro_f1": lambda x: f"{x:.4f}",
    "train_time_s": _duration,
    "images_per_s": lambda x: f"{x:,.0f}",
}


def leaderboard_markdown(leaderboard: pd.DataFrame) -> str:
    """The leaderboard as a Markdown table (rows in the frame's order), numbers made readable."""
    headers = list(MARKDOWN_HEADERS.values())
    lines = [
        "| " + " | ".join(headers) + " |",
        # Text columns left-aligned, numbers right-aligned.
        "|"
        + "|".join(":---" if c in ("variant", "model") else "---:" for c in MARKDOWN_HEADERS)
        + "|",
    ]
    for row in leaderboard.to_dict("records"):
        cells = [_FORMATS.get(c, str)(row[c]) for c in MARKDOWN_HEADERS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(
    leaderboard: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    out_dir: Path,
    gradients: Mapping[str, Sequence[float]] | None = None,
) -> list[Path]:
    """The leaderboard (CSV, Markdown) under ``out_dir`` and the comparison figures under
    ``out_dir/figures``; returns the paths written. ``gradients`` (label -> norms, as measured by
    the diagnose stage) draws the gradient profile; None or empty skips it."""
    from resnetlab.plots import plot_degradation, plot_gradient_profile, plot_test_accuracy

    out_dir = Path(out_dir)
    figures = out_dir / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    written = [out_dir / LEADERBOARD_CSV, out_dir / LEADERBOARD_MD, figures / TEST_ACCURACY_PNG]
    leaderboard.to_csv(written[0], index=False)
    written[1].write_text(leaderboard_markdown(leaderboard))
    plot_test_accuracy(leaderboard, written[2])

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
    """Per variant, under ``figures_dir/<variant>/``: training curves and the test confusion
    matrix (counts, row-normalised). Folders of variants no longer compared are removed."""
    from resnetlab.plots import plot_confusion, plot_history

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

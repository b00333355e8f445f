"""The leaderboard: one row per training run (variant x seed) from its train and evaluate
records (`runs.csv`), and one row per variant with the mean, the sample standard deviation and
the number of seeds of each headline number (`leaderboard.csv`, `leaderboard.md`). Also the
variants' training curves averaged over their seeds (`curves.csv`), and the mean of the runs'
metrics files (`mean.json`). Accuracies and errors are fractions in [0, 1], times in seconds."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.core.errors import ResnetlabError
from resnetlab.core.layout import (
    HISTORY_CSV,
    LEADERBOARD_CSV,
    MEAN_JSON,
    MODEL_JSON,
    TRAIN_JSON,
    run_folder,
    run_metrics_file,
)
from resnetlab.core.records import (
    EvalReport,
    History,
    ModelCard,
    TrainSummary,
    run_key,
    write_json,
)
from resnetlab.report.stats import mean_std

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LEADERBOARD_MD = "leaderboard.md"
RUNS_CSV = "runs.csv"
CURVES_CSV = "curves.csv"

# runs.csv: one row per variant and seed.
RUN_COLUMNS = (
    "variant",
    "seed",
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
# Headline numbers that vary between seeds: the leaderboard gives each as the mean over the
# variant's seeds (column `<name>`) and the sample standard deviation (`<name>_std`, ddof = 1,
# empty when n = 1).
SPREAD = ("best_val_accuracy", "test_accuracy", "test_error", "macro_f1")
LEADERBOARD_COLUMNS = (
    "variant",
    "model",
    "depth",
    "parameters",
    "epochs",
    "n",
    "seeds",
    "best_epoch",
    *(c for name in SPREAD for c in (name, f"{name}_std")),
    "test_loss",
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
    "n": "n",
    "best_val_accuracy": "best val accuracy",
    "test_accuracy": "test accuracy",
    "test_error": "test error",
    "macro_f1": "macro F1",
    "train_time_s": "train time",
    "images_per_s": "images/s",
}
# History columns averaged over seeds in curves.csv (each with a `_std` column beside it).
CURVE_COLUMNS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def check_variants(names: list[str]) -> list[str]:
    if not names:
        raise ResnetlabError("params declare no variants: nothing to compare")
    return names


def build_runs(variants: Sequence[str], seeds: Sequence[int], metrics_dir: Path) -> pd.DataFrame:
    """One row per variant and seed from
    ``<metrics_dir>/<variant>/seed<k>/{train,model}.json`` and its metrics file
    ``<metrics_dir>/<variant>/seed<k>.json``; columns :data:`RUN_COLUMNS`, in params order.

    Raises :class:`RecordError` naming the first missing or malformed file.
    """
    import pandas as pd

    rows = []
    for v in check_variants(list(variants)):
        for k in seeds:
            folder = run_folder(metrics_dir, v, k)
            name = run_key(v, k)
            train = TrainSummary.read(folder / TRAIN_JSON, name)
            card = ModelCard.read(folder / MODEL_JSON, name)
            evaluation = EvalReport.read(run_metrics_file(folder), name)
            if card.variant != v:
                log.warning("%s: written for variant %r", folder / MODEL_JSON, card.variant)
            rows.append(
                {
                    "variant": v,
                    "seed": k,
                    "model": card.model,
                    "depth": card.depth,
                    "parameters": card.parameters,
                    "epochs": train.epochs,
                    "best_epoch": card.best_epoch,
                    "best_val_accuracy": train.best_val_accuracy,
                    "test_accuracy": evaluation.accuracy,
                    "test_error": 1.0 - evaluation.accuracy,
                    "test_loss": evaluation.loss,
                    "macro_f1": evaluation.macro_f1,
                    "train_time_s": train.train_time_s,
                    "images_per_s": train.images_per_s,
                }
            )
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def build_leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant of ``runs`` (:func:`build_runs`): columns :data:`LEADERBOARD_COLUMNS`,
    the :data:`SPREAD` numbers as mean and sample std over the variant's seeds (std NaN for a
    single seed: one run says nothing about the spread), `n` seeds, `seeds` as "0 1 2", the
    other numbers averaged. Sorted by mean test accuracy, best first."""
    import pandas as pd

    rows = []
    for v, group in runs.groupby("variant", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {
            "variant": v,
            "model": first["model"],
            "depth": int(first["depth"]),
            "parameters": int(first["parameters"]),
            "epochs": int(first["epochs"]),
            "n": len(group),
            "seeds": " ".join(str(int(k)) for k in group["seed"]),
            "best_epoch": float(group["best_epoch"].mean()),
        }
        for name in SPREAD:
            row[name], row[f"{name}_std"], _ = mean_std(group[name])
        for name in ("test_loss", "train_time_s", "images_per_s"):
            row[name] = float(group[name].mean())
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    # Ties broken by name so the order (and the committed CSV) does not depend on params order.
    frame = frame.sort_values(["test_accuracy", "variant"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def load_histories(
    variants: Sequence[str], seeds: Sequence[int], metrics_dir: Path
) -> dict[str, dict[int, pd.DataFrame]]:
    """variant -> seed -> its checked ``history.csv`` as a frame."""
    return {
        v: {
            k: History.read(run_folder(metrics_dir, v, k) / HISTORY_CSV, run_key(v, k)).frame()
            for k in seeds
        }
        for v in variants
    }


def mean_curves(histories: Mapping[str, Mapping[int, pd.DataFrame]]) -> pd.DataFrame:
    """Per variant and epoch, :data:`CURVE_COLUMNS` averaged over the seeds that reached that
    epoch, with their sample std (`<column>_std`, NaN for one seed) and `n`: columns variant,
    epoch, n, then each column and its std. The frame behind curves.csv, the DVC plots and the
    figures' mean curves and bands."""
    import pandas as pd

    rows = []
    for v, by_seed in histories.items():
        stacked = pd.concat(list(by_seed.values()), ignore_index=True)
        for epoch, group in stacked.groupby("epoch", sort=True):
            row: dict[str, Any] = {"variant": v, "epoch": epoch, "n": len(group)}
            for c in CURVE_COLUMNS:
                row[c], row[f"{c}_std"], _ = mean_std(group[c])
            rows.append(row)
    columns = ["variant", "epoch", "n", *(x for c in CURVE_COLUMNS for x in (c, f"{c}_std"))]
    return pd.DataFrame(rows, columns=columns)


def curves_of(curves: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """variant -> its rows of :func:`mean_curves` (epoch, the mean columns and their std)."""
    return {
        str(v): frame.drop(columns="variant").reset_index(drop=True)
        for v, frame in curves.groupby("variant", sort=False)
    }


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


def _mean_std(fmt: Any, std_fmt: Any) -> Any:
    def cell(row: Mapping[str, Any], column: str) -> str:
        mean, std = row[column], row.get(f"{column}_std", math.nan)
        if std is None or not math.isfinite(std):  # one seed: no spread to show
            return fmt(mean)
        return f"{fmt(mean)} ± {std_fmt(std)}"

    return cell


def _plain(fmt: Any) -> Any:
    return lambda row, column: fmt(row[column])


_CELLS: dict[str, Any] = {
    "depth": _plain(str),
    "parameters": _plain(_count),
    "epochs": _plain(str),
    "n": _plain(str),
    "best_val_accuracy": _mean_std(_percent, _percent),
    "test_accuracy": _mean_std(_percent, _percent),
    "test_error": _mean_std(_percent, _percent),
    "macro_f1": _mean_std(lambda x: f"{x:.4f}", lambda x: f"{x:.4f}"),
    "train_time_s": _plain(_duration),
    "images_per_s": _plain(lambda x: f"{x:,.0f}"),
}


def leaderboard_markdown(leaderboard: pd.DataFrame) -> str:
    """The leaderboard as a Markdown table (rows in the frame's order), numbers made readable:
    mean ± sample std over seeds where a variant has more than one, and n."""
    headers = list(MARKDOWN_HEADERS.values())
    lines = [
        "| " + " | ".join(headers) + " |",
        # Text columns left-aligned, numbers right-aligned.
        "|"
        + "|".join(":---" if c in ("variant", "model") else "---:" for c in MARKDOWN_HEADERS)
        + "|",
    ]
    for row in leaderboard.to_dict("records"):
        cells = [_CELLS.get(c, _plain(str))(row, c) for c in MARKDOWN_HEADERS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(
    leaderboard: pd.DataFrame,
    out_dir: Path,
    runs: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
) -> list[Path]:
    """`leaderboard.csv` and `leaderboard.md` under `out_dir`, and `runs.csv` / `curves.csv`
    when given; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / LEADERBOARD_CSV, out_dir / LEADERBOARD_MD
    leaderboard.to_csv(csv, index=False)
    md.write_text(leaderboard_markdown(leaderboard))
    written = [csv, md]
    for frame, name in ((runs, RUNS_CSV), (curves, CURVES_CSV)):
        if frame is not None:
            frame.to_csv(out_dir / name, index=False, float_format="%.6g")
            written.append(out_dir / name)
    return written


def mean_report(
    variants: Sequence[str], seeds: Sequence[int], metrics_dir: Path
) -> dict[str, float | int]:
    """Each field of the runs' metrics files (`seed<k>.json`), the mean over the runs of
    `variants` x `seeds`: `mean.json`.

    A DVC metrics file with the runs' own field names, so `dvc metrics show` gives it a row
    below theirs, and `dvc exp show --sort-by reports/mean.json:accuracy` orders experiments
    whatever variants they ran (one number per experiment: a run's own column exists only
    where that variant ran). Not a statistic of any one architecture: the leaderboard has
    those. A count that every run shares (`views`) stays that count.
    """
    reports = [
        EvalReport.read(run_metrics_file(run_folder(metrics_dir, v, k)), run_key(v, k))
        for v in check_variants(list(variants))
        for k in seeds
    ]
    means: dict[str, float | int] = {}
    for name in EvalReport.fields():
        values = [getattr(r, name) for r in reports]
        shared = all(isinstance(x, int) for x in values) and len(set(values)) == 1
        means[name] = values[0] if shared else math.fsum(values) / len(values)
    return means


def write_mean(means: Mapping[str, float | int], out_dir: Path) -> Path:
    """`<out_dir>/mean.json` (`mean_report`), written atomically; returns its path."""
    path = Path(out_dir) / MEAN_JSON
    write_json(path, means)
    return path

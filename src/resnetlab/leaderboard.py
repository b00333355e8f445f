"""The leaderboard: one row per variant from its train and evaluate records, as a table
(CSV) and as Markdown with readable numbers. Accuracies and errors are fractions in [0, 1],
times in seconds."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.errors import ResnetlabError
from resnetlab.records import EvalReport, History, ModelCard, TrainSummary

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"

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


def check_variants(names: list[str]) -> list[str]:
    if not names:
        raise ResnetlabError("params declare no variants: nothing to compare")
    return names


def build_leaderboard(variants: Sequence[str], metrics_dir: Path) -> pd.DataFrame:
    """One row per variant from ``<metrics_dir>/<variant>/{train,model,eval}.json``, sorted by test
    accuracy (best first); columns :data:`LEADERBOARD_COLUMNS`.

    Raises :class:`RecordError` naming the first missing or malformed file.
    """
    import pandas as pd

    rows = []
    for v in check_variants(list(variants)):
        folder = Path(metrics_dir) / v
        train = TrainSummary.read(folder / "train.json", v)
        card = ModelCard.read(folder / "model.json", v)
        evaluation = EvalReport.read(folder / "eval.json", v)
        if card.variant != v:
            log.warning("%s: written for variant %r", folder / "model.json", card.variant)
        rows.append(
            {
                "variant": v,
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
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    # Ties broken by name so the order (and the committed CSV) does not depend on params order.
    frame = frame.sort_values(["test_accuracy", "variant"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def load_histories(variants: Sequence[str], metrics_dir: Path) -> dict[str, pd.DataFrame]:
    """``<metrics_dir>/<variant>/history.csv`` of every variant, checked, as frames."""
    return {v: History.read(Path(metrics_dir) / v / "history.csv", v).frame() for v in variants}


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


def write_leaderboard(leaderboard: pd.DataFrame, out_dir: Path) -> list[Path]:
    """`leaderboard.csv` and `leaderboard.md` under `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / LEADERBOARD_CSV, out_dir / LEADERBOARD_MD
    leaderboard.to_csv(csv, index=False)
    md.write_text(leaderboard_markdown(leaderboard))
    return [csv, md]

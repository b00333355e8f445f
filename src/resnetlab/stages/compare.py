"""`resnetlab compare`: every variant's train/eval metrics -> leaderboard (CSV + Markdown) and
figures (test accuracy, plain-vs-ResNet degradation curves, per-layer gradient norms), also
logged to MLflow as a run of their own."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.config import Params, load_params
from resnetlab.errors import ResnetlabError
from resnetlab.metrics import HISTORY_COLUMNS

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
TRAIN_KEYS = (
    "model",
    "depth",
    "parameters",
    "epochs",
    "best_epoch",
    "best_val_accuracy",
    "train_time_s",
    "images_per_s",
)
EVAL_KEYS = ("accuracy", "macro_f1")

# The gradient profile contrasts plain and residual nets of He et al.'s CIFAR depths.
GRADIENT_DEPTHS = (20, 56, 110)
GRADIENT_MODELS = ("plain", "resnet_v1")
GRADIENT_BATCH = 32

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
TEST_ACCURACY_PNG = "test_accuracy.png"
DEGRADATION_PNG = "degradation.png"
GRADIENT_PNG = "gradient_profile.png"
GRADIENT_CSV = "gradient_profile.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument(
        "--metrics", type=Path, required=True, help="folder with one sub-folder per variant"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    # Everything is read (and checked) before anything is written: a missing variant leaves the
    # previous reports untouched rather than half replaced.
    leaderboard = build_leaderboard(params, args.metrics)
    histories = load_histories(params, args.metrics)
    files = write_reports(
        leaderboard,
        histories,
        args.out,
        depths=params.compare.gradient_depths,
        seed=params.compare.seed,
    )
    for line in leaderboard_markdown(leaderboard).splitlines():
        log.info("%s", line)

    # Imported here: MLflow is slow to import and the rest of the stage does not need it.
    from resnetlab import tracking

    tracking.log_comparison(
        experiment=params.mlflow.experiment, leaderboard=leaderboard, files=files
    )


def _missing(path: Path, variant: str) -> ResnetlabError:
    return ResnetlabError(
        f"{path}: not found; run `dvc repro evaluate@{variant}` (or `dvc repro`) "
        f"to produce the metrics of variant {variant}"
    )


def _read_json(path: Path, variant: str, keys: Sequence[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _missing(path, variant) from None
    except json.JSONDecodeError as exc:
        raise ResnetlabError(f"{path}: not valid JSON ({exc}); re-run its stage") from None
    if not isinstance(data, dict):
        raise ResnetlabError(f"{path}: expected a JSON object, got {type(data).__name__}")
    lacking = [k for k in keys if k not in data]
    if lacking:
        raise ResnetlabError(
            f"{path}: missing key(s) {', '.join(lacking)}; re-run `dvc repro evaluate@{variant}`"
        )
    return data


def _variants(params: Params) -> list[str]:
    if not params.variants:
        raise ResnetlabError("params declare no variants: nothing to compare")
    return list(params.variants)


def build_leaderboard(params: Params, metrics_dir: Path) -> pd.DataFrame:
    """One row per variant of ``params`` from ``<metrics_dir>/<variant>/{train,eval}.json``,
    sorted by test accuracy (best first); columns :data:`LEADERBOARD_COLUMNS`.

    Raises :class:`ResnetlabError` naming the first missing or malformed file.
    """
    import pandas as pd

    rows = []
    for v in _variants(params):
        folder = Path(metrics_dir) / v
        train = _read_json(folder / "train.json", v, TRAIN_KEYS)
        evaluation = _read_json(folder / "eval.json", v, EVAL_KEYS)
        if train.get("variant", v) != v:
            log.warning("%s: written for variant %r", folder / "train.json", train["variant"])
        accuracy = float(evaluation["accuracy"])
        rows.append(
            {
                "variant": v,
                "model": str(train["model"]),
                "depth": int(train["depth"]),
                "parameters": int(train["parameters"]),
                "epochs": int(train["epochs"]),
                "best_epoch": int(train["best_epoch"]),
                "best_val_accuracy": float(train["best_val_accuracy"]),
                "test_accuracy": accuracy,
                "test_error": 1.0 - accuracy,
                "test_loss": float(evaluation.get("loss", math.nan)),
                "macro_f1": float(evaluation["macro_f1"]),
                "train_time_s": float(train["train_time_s"]),
                "images_per_s": float(train["images_per_s"]),
            }
        )
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    # Ties broken by name so the order (and the committed CSV) does not depend on params order.
    frame = frame.sort_values(["test_accuracy", "variant"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def load_histories(params: Params, metrics_dir: Path) -> dict[str, pd.DataFrame]:
    """``<metrics_dir>/<variant>/history.csv`` of every variant, checked for its columns."""
    import pandas as pd

    histories = {}
    for v in _variants(params):
        path = Path(metrics_dir) / v / "history.csv"
        try:
            frame = pd.read_csv(path)
        except FileNotFoundError:
            raise _missing(path, v) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ResnetlabError(f"{path}: not a readable CSV ({exc}); re-run its stage") from None
        lacking = [c for c in HISTORY_COLUMNS if c not in frame.columns]
        if lacking:
            raise ResnetlabError(f"{path}: missing column(s) {', '.join(lacking)}")
        histories[v] = frame
    return histories


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


def gradient_profiles(
    depths: Sequence[int] = GRADIENT_DEPTHS,
    models: Sequence[str] = GRADIENT_MODELS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per-layer gradient norms (input -> output) of freshly initialised ``models`` at ``depths``,
    on one seeded random batch of CIFAR-shaped images; keys like ``"plain-20"``."""
    import torch

    from resnetlab.diagnostics import gradient_norms
    from resnetlab.models import build_model

    torch.manual_seed(seed)
    x = torch.randn(GRADIENT_BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (GRADIENT_BATCH,))
    profiles = {}
    for depth in depths:
        for name in models:
            # Reseeded per model so each net's initial weights do not depend on the loop order.
            torch.manual_seed(seed)
            model = build_model(name, depth=depth)
            profiles[f"{name}-{depth}"] = gradient_norms(model, (x, y))
    return profiles


def write_gradient_profile(
    out_dir: Path, depths: Sequence[int] = GRADIENT_DEPTHS, seed: int = 0
) -> list[Path]:
    """``gradient_profile.csv`` (label, layer_index from 1 at the input, layer, grad_norm) and
    ``gradient_profile.png`` under ``out_dir``; returns their paths."""
    import pandas as pd

    from resnetlab.plots import plot_gradient_profile

    profiles = gradient_profiles(depths, seed=seed)
    rows = [
        {"label": label, "layer_index": i, "layer": layer, "grad_norm": norm}
        for label, norms in profiles.items()
        for i, (layer, norm) in enumerate(norms.items(), start=1)
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / GRADIENT_CSV, out_dir / GRADIENT_PNG
    pd.DataFrame(rows, columns=["label", "layer_index", "layer", "grad_norm"]).to_csv(
        csv_path, index=False
    )
    # One colour per depth: the plain net dashed, its residual twin solid.
    colours = {f"{m}-{d}": f"C{k % 10}" for k, d in enumerate(depths) for m in GRADIENT_MODELS}
    plot_gradient_profile(
        {label: list(norms.values()) for label, norms in profiles.items()},
        png_path,
        title=f"per-layer gradient norm at initialisation (batch of {GRADIENT_BATCH})",
        colours=colours,
    )
    return [csv_path, png_path]


def write_reports(
    leaderboard: pd.DataFrame,
    histories: dict[str, pd.DataFrame],
    out_dir: Path,
    depths: Sequence[int] = GRADIENT_DEPTHS,
    seed: int = 0,
) -> list[Path]:
    """Write the leaderboard (CSV, Markdown) and the figures under ``out_dir``; returns the paths
    written. ``depths`` are those of the gradient profile; empty skips it."""
    from resnetlab.plots import plot_degradation, plot_test_accuracy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / LEADERBOARD_CSV, out_dir / LEADERBOARD_MD, out_dir / TEST_ACCURACY_PNG]
    leaderboard.to_csv(written[0], index=False)
    written[1].write_text(leaderboard_markdown(leaderboard))
    plot_test_accuracy(leaderboard, written[2])

    groups = degradation_groups(leaderboard)
    degradation = out_dir / DEGRADATION_PNG
    if groups:
        depth_of = dict(zip(leaderboard["variant"], leaderboard["depth"], strict=True))
        # One colour per depth in both panels, so plain-20 and ResNet-20 match as in the paper.
        palette = [f"C{k}" for k in range(10)]
        depth_rank = {d: k for k, d in enumerate(sorted(set(depth_of.values())))}
        colours = {v: palette[depth_rank[d] % len(palette)] for v, d in depth_of.items()}
        plot_degradation(histories, groups, degradation, colours=colours)
        written.append(degradation)
        if not groups["ResNet"]:
            log.info("degradation: no resnet_v1 variant matches the depth of a plain one")
    else:
        # A figure left from an earlier run would now describe variants that are gone.
        degradation.unlink(missing_ok=True)
        log.info("skipping %s: no variant uses model 'plain'", degradation.name)

    if depths:
        written += write_gradient_profile(out_dir, depths, seed=seed)
    return written

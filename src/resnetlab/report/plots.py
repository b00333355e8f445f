"""Figures for the reports: each ``plot_*`` writes one PNG to ``path``.

Figures are built as bare ``matplotlib.figure.Figure`` objects, never through
``matplotlib.pyplot``: saving a PNG renders with the Agg canvas directly, so plotting works on
servers without a display, never opens a window, and importing this module neither switches the
caller's matplotlib backend nor registers figures in pyplot's global figure list (a figure is
freed once the last reference to it goes). Accuracies come in as fractions in [0, 1]; figures
show percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "normalize_rows",
    "plot_confusion",
    "plot_degradation",
    "plot_gradient_profile",
    "plot_history",
    "plot_test_accuracy",
    "text_color",
]

DPI = 120
# Curves with at most this many points also mark each point, so that a short run (one epoch is
# a single point, which a line alone would not draw at all) still shows its values.
MARKER_MAX_POINTS = 15
# A confusion matrix labels every cell and names every class up to this many classes (CIFAR-10's
# 10, a folder's handful); CIFAR-100's 100 would need a 60-inch figure and 10,000 labels, so
# beyond it the heatmap stands alone at a bounded size, its class names small.
MAX_LABELLED_CLASSES = 20
MAX_CONFUSION_SIDE = 16.0  # inches


def _save(fig: Figure, path: Path) -> None:
    # A bare Figure (no pyplot) is not in any global registry, so nothing needs closing: it is
    # garbage once the caller's reference goes. PNG output renders through the Agg canvas.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _markers(n_points: int) -> dict[str, Any]:
    """Line style keywords that mark every point of a short curve (none for a long one)."""
    if n_points > MARKER_MAX_POINTS:
        return {}
    return {"marker": "o", "markersize": 6.0 if n_points <= 1 else 3.5}


def _epoch_axis(ax: Any, epochs: Sequence[Any]) -> None:
    """Whole-number ticks on an epoch axis; a single epoch gets one tick centred in 0.5 margins.

    Without this a lone point gets matplotlib's fallback limits (e.g. 0.945 to 1.050).
    """
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    values = np.unique(np.asarray(epochs, dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size == 1:
        e = float(values[0])
        ax.set_xlim(e - 0.5, e + 0.5)
        ax.set_xticks([e], labels=[f"{e:g}"])


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the fraction of an actual class predicted as each class).

    A row with no samples stays all zeros instead of becoming NaN.
    """
    counts = np.asarray(cm, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def text_color(rgba: Sequence[float]) -> str:
    """'white' or 'black', whichever reads better on a cell of colour ``rgba``."""
    r, g, b = rgba[:3]
    # Relative luminance with the Rec. 709 weights; 0.5 splits dark from light cells.
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "white" if luminance < 0.5 else "black"


def plot_confusion(
    cm: np.ndarray,
    classes: Sequence[str],
    path: Path,
    normalize: bool = False,
    title: str = "",
) -> None:
    """Heatmap of a confusion matrix (rows = actual, columns = predicted), every cell labelled
    up to `MAX_LABELLED_CLASSES` classes.

    With ``normalize`` each row shows fractions of that actual class (2 decimals), which makes
    per-class recall readable on the diagonal even when classes have different supports.
    """
    counts = np.asarray(cm)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({n}, {n})")
    values = normalize_rows(counts) if normalize else counts.astype(np.float64)

    side = min(max(4.0, 0.6 * n + 2.0), MAX_CONFUSION_SIDE)  # inches; room for rotated names
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"]
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    labelled = n <= MAX_LABELLED_CLASSES
    fontsize = 9 if n <= 12 else 7
    for i in range(n if labelled else 0):
        for j in range(n):
            v = values[i, j]
            label = f"{v:.2f}" if normalize else f"{int(counts[i, j])}"
            color = text_color(cmap(image.norm(v)))
            ax.text(j, i, label, ha="center", va="center", color=color, fontsize=fontsize)

    names = {"fontsize": 9 if labelled else max(3.0, 400 / n)}  # 4 pt for CIFAR-100's 100
    ax.set_xticks(
        range(n), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor", **names
    )
    ax.set_yticks(range(n), labels=list(classes), **names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(
        title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix")
    )
    _save(fig, path)


def _std(frame: pd.DataFrame, column: str) -> np.ndarray:
    """`<column>_std` as floats (NaN where there is no spread to show), zeros when absent."""
    name = f"{column}_std"
    if name not in frame.columns:
        return np.zeros(len(frame))
    return frame[name].to_numpy(dtype=np.float64)


def _band(ax: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, colour: Any) -> None:
    """Mean +- one sample std around a curve; a lone epoch gets an error bar (a band of one
    point has no width). Nothing where the std is NaN (a single seed)."""
    ok = np.isfinite(std)
    if not ok.any():
        return
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=np.where(ok, std, 0.0), fmt="none", color=colour, capsize=4)
    else:
        ax.fill_between(x, mean - std, mean + std, where=ok, color=colour, alpha=0.18, lw=0)


def plot_test_accuracy(
    leaderboard: pd.DataFrame, path: Path, runs: pd.DataFrame | None = None
) -> None:
    """Horizontal bars of test accuracy (%) per variant, best at the top, values at the bar ends.

    ``leaderboard`` needs the columns ``variant`` and ``test_accuracy`` (a fraction; the mean
    over seeds); with ``test_accuracy_std`` each bar gets an error bar of one sample std, and
    ``runs`` (``variant``, ``test_accuracy`` per seed) adds every seed's result as a dot.
    """
    missing = {"variant", "test_accuracy"} - set(leaderboard.columns)
    if missing:
        raise ValueError(f"leaderboard lacks column(s) {', '.join(sorted(missing))}")
    if leaderboard.empty:
        raise ValueError("leaderboard has no rows to plot")
    # Ascending, because barh draws the first row at the bottom: the best ends up on top.
    rows = leaderboard.sort_values("test_accuracy", ascending=True, kind="stable")
    pct = rows["test_accuracy"].to_numpy(dtype=np.float64) * 100.0
    std = _std(rows, "test_accuracy") * 100.0
    names = rows["variant"].astype(str).tolist()

    fig = Figure(figsize=(7.0, max(2.0, 0.45 * len(rows) + 1.0)))
    ax = fig.subplots()
    has_std = np.isfinite(std) & (std > 0)
    xerr = np.where(has_std, std, 0.0) if has_std.any() else None
    bars = ax.barh(names, pct, color="tab:blue", alpha=0.75, xerr=xerr, capsize=3)
    labels = [
        f"{p:.2f} ± {s:.2f}%" if ok else f"{p:.2f}%"
        for p, s, ok in zip(pct, std, has_std, strict=True)
    ]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=9)
    top = float(pct.max())
    if runs is not None and not runs.empty:
        position = {name: k for k, name in enumerate(names)}
        dots = runs[runs["variant"].astype(str).isin(position)]
        y = dots["variant"].astype(str).map(position).to_numpy(dtype=np.float64)
        x = dots["test_accuracy"].to_numpy(dtype=np.float64) * 100.0
        ax.scatter(x, y, s=14, color="black", zorder=3, label="one seed")
        ax.legend(fontsize=8, loc="lower right")
        top = max(top, float(x.max()))
    # Room on the right for the labels; accuracy cannot exceed 100 %.
    ax.set_xlim(0.0, min(100.0, top) * 1.18 + 1.0)
    ax.set_xlabel("test accuracy (%): mean over seeds, bar = ±1 sample std")
    ax.set_title("test accuracy per variant")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _save(fig, path)


def plot_history(history: pd.DataFrame, path: Path, title: str = "") -> None:
    """One variant's training curves: loss and accuracy (%) against epoch, train and val. With
    `<column>_std` columns (the mean over seeds, as `report.leaderboard.mean_curves` gives
    it) each curve gets a band of one sample std."""
    fig = Figure(figsize=(10, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    epoch = history["epoch"].to_numpy()
    marks = _markers(len(epoch))
    for split, style, colour in (("train", "--", "C0"), ("val", "-", "C1")):
        for ax, column, scale in (
            (loss_ax, f"{split}_loss", 1.0),
            (acc_ax, f"{split}_accuracy", 100.0),
        ):
            y = scale * history[column].to_numpy(dtype=np.float64)
            ax.plot(epoch, y, style, color=colour, label=split, **marks)
            _band(ax, epoch, y, scale * _std(history, column), colour)
    loss_ax.set_ylabel("cross-entropy")
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        _epoch_axis(ax, epoch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_degradation(
    histories: Mapping[str, pd.DataFrame],
    groups: Mapping[str, Sequence[str]],
    path: Path,
    colours: Mapping[str, Any] | None = None,
) -> None:
    """Error (%) against epoch, one panel per group (e.g. plain nets | ResNets), after He et al.
    2015, Fig. 6: training error dashed, validation error bold solid, one colour per variant.
    A history with `train_accuracy_std` / `val_accuracy_std` columns (the mean over seeds) gets
    a band of one sample std around each curve.

    ``histories`` maps a variant to its history frame (``epoch``, ``train_accuracy`` and
    ``val_accuracy`` as fractions); ``groups`` maps a panel title to the variants it shows. Empty
    groups are left out. The held-out curve is the validation split, so it is labelled "val".
    ``colours`` (variant -> matplotlib colour) pins colours, e.g. one per depth across panels;
    by default a variant takes the colour of its position in its group.
    """
    panels = {title: list(names) for title, names in groups.items() if names}
    if not panels:
        raise ValueError("no variants to plot: every group is empty")
    wanted = [v for names in panels.values() for v in names]
    unknown = [v for v in wanted if v not in histories]
    if unknown:
        raise ValueError(f"no history for variant(s) {', '.join(unknown)}")
    for v in wanted:
        lacking = {"epoch", "train_accuracy", "val_accuracy"} - set(histories[v].columns)
        if lacking:
            raise ValueError(f"history of {v} lacks column(s) {', '.join(sorted(lacking))}")

    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    palette = matplotlib.colormaps["tab10"].colors
    for ax, (title, names) in zip(axes[0], panels.items(), strict=True):
        # Colours restart per panel so e.g. plain-20 and ResNet-20 share a colour, as in Fig. 6.
        panel_epochs = []
        marked = False  # whether any curve in this panel marks its points
        for k, v in enumerate(names):
            h = histories[v]
            colour = colours[v] if colours and v in colours else palette[k % len(palette)]
            epoch = h["epoch"].to_numpy()
            panel_epochs.append(epoch)
            marks = _markers(len(epoch))
            marked = marked or bool(marks)
            train_err = 100.0 * (1.0 - h["train_accuracy"].to_numpy(dtype=np.float64))
            val_err = 100.0 * (1.0 - h["val_accuracy"].to_numpy(dtype=np.float64))
            # Hollow train markers tell a lone train point from the val point of one variant.
            hollow = {"markerfacecolor": "white"} if marks else {}
            ax.plot(epoch, train_err, "--", color=colour, lw=1.0, **marks, **hollow)
            ax.plot(epoch, val_err, "-", color=colour, lw=2.2, label=v, **marks)
            # The error's std over seeds is the accuracy's.
            _band(ax, epoch, train_err, 100.0 * _std(h, "train_accuracy"), colour)
            _band(ax, epoch, val_err, 100.0 * _std(h, "val_accuracy"), colour)
        key = {"marker": "o", "markersize": 5.0} if marked else {}
        style = [
            Line2D(
                [], [], color="grey", ls="--", lw=1.0, label="train", markerfacecolor="white", **key
            ),
            Line2D([], [], color="grey", ls="-", lw=2.2, label="val", **key),
        ]
        handles, _ = ax.get_legend_handles_labels()
        # Below the panel, never over the curves' ends (where the final errors are read off).
        ax.legend(
            handles=handles + style,
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.15),
            ncols=min(4, len(handles) + len(style)),
            frameon=False,
        )
        ax.set_title(title)
        _epoch_axis(ax, np.concatenate(panel_epochs))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_ylim(bottom=0.0)
    fig.suptitle("training (dashed) and validation (bold) error")
    _save(fig, path)


def plot_gradient_profile(
    profiles: Mapping[str, Sequence[float]],
    path: Path,
    title: str = "",
    colours: Mapping[str, Any] | None = None,
) -> None:
    """Gradient norm per layer (log scale) from input (layer 1) to output, one line per label.

    Labels starting with "plain" are drawn dashed, the others solid, so plain and residual nets
    of one depth can share a colour (``colours``: label -> matplotlib colour; by default each
    line takes the next colour). Non-positive norms cannot sit on a log axis and are left out.
    """
    if not profiles:
        raise ValueError("no gradient profiles to plot")
    fig = Figure(figsize=(8.0, 4.5))
    ax = fig.subplots()
    for k, (label, norms) in enumerate(profiles.items()):
        y = np.asarray(norms, dtype=np.float64)
        if y.size == 0:
            raise ValueError(f"gradient profile {label!r} is empty")
        ls = "--" if str(label).startswith("plain") else "-"
        colour = colours[label] if colours and label in colours else f"C{k % 10}"
        ax.plot(np.arange(1, y.size + 1), y, ls, color=colour, lw=1.4, label=str(label))
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("conv/linear layer, input → output")
    # What `report.gradients.gradient_norms` measures: a pure number (a norm of a gradient of a
    # dimensionless loss), so no unit.
    ax.set_ylabel("‖∂ cross-entropy / ∂ weights‖₂ (log scale)")
    ax.set_title(title or "per-layer weight-gradient norm at initialisation")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)

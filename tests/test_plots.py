"""Every figure is written as a PNG of a sensible size; the confusion plot's numbers and colours;
plotting leaves matplotlib's global state (backend, pyplot) alone; a one-epoch run is visible."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resnetlab.report import plots

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def history(epochs: int, final_train: float, final_val: float) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    ramp = 1 - np.exp(-e / 3)
    return pd.DataFrame(
        {
            "epoch": e,
            "train_loss": 2.3 * (1 - ramp) + 0.1,
            "train_accuracy": 0.1 + (final_train - 0.1) * ramp,
            "val_loss": 2.3 * (1 - ramp) + 0.3,
            "val_accuracy": 0.1 + (final_val - 0.1) * ramp,
            "lr": 0.1,
            "epoch_time_s": 10.0,
            "images_per_s": 4500.0,
        }
    )


def test_normalize_rows() -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    n = plots.normalize_rows(cm)
    np.testing.assert_allclose(n[0], [3 / 4, 1 / 4, 0])
    np.testing.assert_allclose(n[2], [2 / 8, 2 / 8, 4 / 8])
    np.testing.assert_array_equal(n[1], [0, 0, 0])  # no samples: zeros, not NaN
    np.testing.assert_allclose(n[[0, 2]].sum(axis=1), 1.0)


def test_text_color() -> None:
    assert plots.text_color((0.03, 0.19, 0.42, 1.0)) == "white"  # dark blue
    assert plots.text_color((0.97, 0.98, 1.0, 1.0)) == "black"  # near white


@pytest.mark.parametrize("normalize", [False, True])
def test_plot_confusion_cifar10(tmp_path: Path, monkeypatch, normalize: bool) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (10, 10)) + np.diag(np.full(10, 900))
    cm[3] = 0  # a class with no samples must not break the normalised plot
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), save(fig, path)))

    path = tmp_path / "cm.png"
    plots.plot_confusion(cm, CIFAR10, path, normalize=normalize, title="test")
    w, h = png_size(path)
    assert 600 < w < 2500 and 500 < h < 2500

    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CIFAR10)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CIFAR10)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert len(texts) == 100  # every cell labelled
    top_left, off_diag = texts[(0, 0)], texts[(0, 1)]
    if normalize:
        assert top_left.get_text() == f"{cm[0, 0] / cm[0].sum():.2f}"
        assert texts[(3, 3)].get_text() == "0.00"
    else:
        assert top_left.get_text() == str(cm[0, 0])
    # Diagonal cells are dark, off-diagonal ones pale: the text colour follows.
    assert top_left.get_color() == "white"
    assert off_diag.get_color() == "black"


def test_plot_confusion_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected"):
        plots.plot_confusion(np.zeros((3, 3)), ["a", "b"], tmp_path / "x.png")


def test_plot_test_accuracy(tmp_path: Path) -> None:
    def board(n: int) -> pd.DataFrame:
        return pd.DataFrame({"variant": [f"v{i}" for i in range(n)], "test_accuracy": 0.9})

    small, big = tmp_path / "small.png", tmp_path / "big.png"
    plots.plot_test_accuracy(board(2), small)
    plots.plot_test_accuracy(board(12), big)
    (w1, h1), (_, h2) = png_size(small), png_size(big)
    assert w1 > h1  # bars run horizontally
    assert h2 > h1  # more variants, taller figure
    with pytest.raises(ValueError, match="test_accuracy"):
        plots.plot_test_accuracy(pd.DataFrame({"variant": ["a"]}), tmp_path / "bad.png")


def test_plot_degradation(tmp_path: Path) -> None:
    histories = {
        "plain20": history(10, 0.92, 0.88),
        "plain56": history(10, 0.88, 0.85),
        "resnet20": history(10, 0.95, 0.91),
        "resnet56": history(10, 0.97, 0.93),
    }
    two = tmp_path / "two.png"
    plots.plot_degradation(
        histories, {"plain": ["plain20", "plain56"], "ResNet": ["resnet20", "resnet56"]}, two
    )
    one = tmp_path / "one.png"
    plots.plot_degradation(histories, {"plain": ["plain20", "plain56"], "ResNet": []}, one)
    (w2, h2), (w1, h1) = png_size(two), png_size(one)
    assert w2 > 1.6 * w1  # two panels side by side; the empty group is left out
    assert abs(h2 - h1) < 0.2 * h1
    with pytest.raises(ValueError, match="resnet110"):
        plots.plot_degradation(histories, {"ResNet": ["resnet110"]}, tmp_path / "bad.png")


def _legends_clear_of_the_data(monkeypatch) -> list:
    """Record every figure `plots` saves, and check that each legend lies outside its axes (a
    legend over the curves hides the values at their ends)."""
    figures = []
    save = plots._save

    def checked(fig, path):
        save(fig, path)  # draws: the extents below are the rendered ones
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                box, area = legend.get_window_extent(), ax.get_window_extent()
                assert not box.overlaps(area), (path, box, area)
        figures.append(fig)

    monkeypatch.setattr(plots, "_save", checked)
    return figures


def test_degradation_and_gradient_legends_sit_beside_the_data(tmp_path: Path, monkeypatch) -> None:
    """Was: the legend covered the curves' ends; the y-axis said "gradient norm", of nothing."""
    figures = _legends_clear_of_the_data(monkeypatch)
    histories = {v: history(10, 0.9, 0.85) for v in ("plain20", "plain56", "resnet20")}
    groups = {"plain": ["plain20", "plain56"], "ResNet": ["resnet20"]}
    plots.plot_degradation(histories, groups, tmp_path / "deg.png")
    profiles = {"plain-20": list(np.geomspace(10.0, 0.5, 20)), "resnet_v1-20": [1.0] * 20}
    plots.plot_gradient_profile(profiles, tmp_path / "grad.png")
    assert len(figures) == 2
    (grad_ax,) = figures[1].axes
    assert grad_ax.get_ylabel() == "‖∂ cross-entropy / ∂ weights‖₂ (log scale)"
    assert grad_ax.get_xlabel() == "conv/linear layer, input → output"
    assert figures[0].axes[0].get_ylabel() == "error (%)"


def test_plot_gradient_profile(tmp_path: Path) -> None:
    path = tmp_path / "grad.png"
    profiles = {
        "plain-20": list(np.geomspace(10.0, 0.5, 20)),
        "resnet_v1-20": list(np.linspace(0.6, 3.0, 20)),
        "plain-56": [*np.geomspace(1e3, 0.6, 55), 0.0],  # a zero norm is masked, not fatal
    }
    plots.plot_gradient_profile(profiles, path)
    w, h = png_size(path)
    assert w > h > 300


def test_plot_history(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [2.0, 1.5, 1.0],
            "val_loss": [2.1, 1.7, 1.4],
            "train_accuracy": [0.2, 0.4, 0.6],
            "val_accuracy": [0.2, 0.35, 0.5],
        }
    )
    path = tmp_path / "curves.png"
    plots.plot_history(history, path, title="tiny")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 1.5 * im.size[1]  # two panels side by side
    with pytest.raises(KeyError):
        plots.plot_history(history.drop(columns=["val_loss"]), tmp_path / "bad.png")


# Run in a fresh interpreter with a headless backend other than Agg, so that a module-level
# matplotlib.use("Agg") or an import of pyplot (directly or via a plot function) is caught.
NO_GLOBAL_STATE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import matplotlib

    before = matplotlib.get_backend()
    assert before.lower() == "svg", before
    import numpy as np
    import pandas as pd

    import resnetlab.report.plots as plots

    assert "matplotlib.pyplot" not in sys.modules, "importing plots imported pyplot"
    assert matplotlib.get_backend() == before, "importing plots switched the backend"

    out = Path(sys.argv[1])
    h = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_loss": [2.0, 1.0],
            "val_loss": [2.1, 1.2],
            "train_accuracy": [0.3, 0.6],
            "val_accuracy": [0.25, 0.5],
        }
    )
    plots.plot_confusion(np.eye(3) * 5, ["a", "b", "c"], out / "cm.png", normalize=True)
    plots.plot_test_accuracy(
        pd.DataFrame({"variant": ["x", "y"], "test_accuracy": [0.9, 0.8]}), out / "acc.png"
    )
    plots.plot_history(h, out / "hist.png")
    plots.plot_degradation({"x": h, "y": h}, {"plain": ["x"], "res": ["y"]}, out / "deg.png")
    plots.plot_gradient_profile({"plain-3": [3.0, 2.0, 1.0]}, out / "grad.png")
    assert "matplotlib.pyplot" not in sys.modules, "a plot function imported pyplot"
    assert matplotlib.get_backend() == before, "a plot function switched the backend"
    for name in ("cm", "acc", "hist", "deg", "grad"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", name
    print("ok")
    """
)


def test_plots_leave_matplotlib_global_state_alone(tmp_path: Path) -> None:
    src = str(Path(plots.__file__).resolve().parents[1])
    env = {**os.environ, "MPLBACKEND": "svg", "MPLCONFIGDIR": str(tmp_path / "mplconfig")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", NO_GLOBAL_STATE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def coloured_pixels(path: Path) -> np.ndarray:
    """Mask of clearly coloured pixels: not white, black or grey (text, spines and grid are)."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 80


def one_epoch(**values: float) -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1], **{k: [v] for k, v in values.items()}})


def test_plot_history_one_epoch_is_visible(tmp_path: Path, monkeypatch) -> None:
    """A single epoch is one point per curve: it must show as a marker, not as empty axes."""
    figures = []
    save = plots._save

    def save_without_legends(fig, path):
        # The legend's line samples are coloured too; only the curves themselves may count.
        figures.append(fig)
        for ax in fig.axes:
            ax.get_legend().remove()
        save(fig, path)

    monkeypatch.setattr(plots, "_save", save_without_legends)
    path = tmp_path / "one.png"
    history = one_epoch(train_loss=2.0, val_loss=2.1, train_accuracy=0.3, val_accuracy=0.25)
    plots.plot_history(history, path)

    coloured = coloured_pixels(path)
    half = coloured.shape[1] // 2
    assert coloured[:, :half].sum() > 20, "loss panel shows no curve"
    assert coloured[:, half:].sum() > 20, "accuracy panel shows no curve"
    for ax in figures[0].axes:
        assert ax.get_xlim() == pytest.approx((0.5, 1.5))
        assert list(ax.get_xticks()) == [1]
        assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())


def test_plot_degradation_one_epoch_is_visible(tmp_path: Path, monkeypatch) -> None:
    figures = []
    save = plots._save

    def save_without_legends(fig, path):
        figures.append(fig)
        for ax in fig.axes:
            ax.get_legend().remove()
        save(fig, path)

    monkeypatch.setattr(plots, "_save", save_without_legends)
    path = tmp_path / "deg.png"
    h = one_epoch(train_accuracy=0.3, val_accuracy=0.25)
    plots.plot_degradation({"plain20": h, "resnet20": h}, {"plain": ["plain20"]}, path)
    assert coloured_pixels(path).sum() > 20
    (ax,) = figures[0].axes
    assert ax.get_xlim() == pytest.approx((0.5, 1.5))
    assert list(ax.get_xticks()) == [1]

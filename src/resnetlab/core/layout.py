"""Where everything lives in a project folder: the one place that says so.

dvc.yaml declares the same folders in its `vars` for DVC (tests/test_dvc_deps.py keeps the two in
step); the stages take their paths from the command line that dvc.yaml writes, and the tools and
the web app, which DVC does not run, default to these.

    data/raw/                      the verified archive
    data/prepared/                 the prepared arrays (`data.prepared`)
    models/<v>/seed<k>/            model.pt, mlflow_run.json, checkpoint.pt (resume state)
    metrics/<v>/seed<k>.json       the run's DVC metrics (`run_metrics_file`)
    metrics/<v>/seed<k>/           train.json, model.json, history.csv, per_class.csv,
                                   confusion.csv, predictions.csv
    reports/                       leaderboard, mean.json, published vs measured, figures/
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODELS = Path("models")
METRICS = Path("metrics")
REPORTS = Path("reports")
FIGURES = "figures"  # under REPORTS

# One training seed's files (`run_folder`).
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "mlflow_run.json"
TRAIN_JSON = "train.json"
MODEL_JSON = "model.json"
HISTORY_CSV = "history.csv"
PER_CLASS_CSV = "per_class.csv"
CONFUSION_CSV = "confusion.csv"
PREDICTIONS_CSV = "predictions.csv"
LEADERBOARD_CSV = "leaderboard.csv"  # under REPORTS
MEAN_JSON = "mean.json"  # under REPORTS: the runs' metrics, each the mean over the runs

SEED_FOLDER = re.compile(r"seed(\d+)")


def run_folder(root: Path, variant: str, seed: int) -> Path:
    """`<root>/<variant>/seed<seed>`: where one training seed's files of a variant live (under
    `models/` and `metrics/`, as dvc.yaml lays them out)."""
    return Path(root) / variant / f"seed{seed}"


def run_metrics_file(run_dir: Path) -> Path:
    """A run's DVC metrics file, `<root>/<variant>/seed<k>.json`: beside its run folder
    `<root>/<variant>/seed<k>/`, not in it. `dvc exp show` names a column `<file>:<field>`, and
    `metrics/resnet20/seed0.json:accuracy` is short enough for two runs' accuracy and the
    parameters an experiment changed to fit a 160-column terminal (docs/dvc.md)."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}.json")


def seed_folders(variant_folder: Path, filename: str | None = None) -> dict[int, Path]:
    """Seed -> `seed<k>` sub-folder of `variant_folder` (holding `filename`, when given), by
    ascending seed; empty if there are none."""
    found: dict[int, Path] = {}
    folder = Path(variant_folder)
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        match = SEED_FOLDER.fullmatch(child.name)
        if match and child.is_dir() and (filename is None or (child / filename).is_file()):
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def first_seed_folder(variant_folder: Path, filename: str | None = None) -> Path | None:
    """The lowest-seed run folder of a variant (holding `filename`, when given), or None."""
    return next(iter(seed_folders(variant_folder, filename).values()), None)


def lowest_seed_file(variant_folder: Path, filename: str) -> Path:
    """`filename` in the lowest-seed run folder of a variant that has it; the seed-0 path (for
    messages) when none has."""
    folder = first_seed_folder(variant_folder, filename) or variant_folder / "seed0"
    return folder / filename


@dataclass(frozen=True)
class Project:
    """A project folder laid out as above."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / MODELS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def prepared(self) -> Path:
        return self.root / PREPARED

    @property
    def reports(self) -> Path:
        return self.root / REPORTS

    @property
    def figures(self) -> Path:
        return self.reports / FIGURES

    @property
    def leaderboard(self) -> Path:
        return self.reports / LEADERBOARD_CSV

    def show(self, path: Path) -> str:
        """`path` as messages name it: relative to the project folder, where the user runs dvc."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def model_file(self, variant: str) -> Path:
        """The variant's model: its lowest training seed's (`models/<v>/seed<k>/model.pt`)."""
        return lowest_seed_file(self.models / variant, MODEL_FILE)

    def predictions_file(self, variant: str) -> Path:
        """The lowest seed's test predictions (`metrics/<v>/seed<k>/predictions.csv`)."""
        return lowest_seed_file(self.metrics / variant, PREDICTIONS_CSV)

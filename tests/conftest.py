from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cifar_archive import make_archive

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_run() -> Iterator[None]:
    """MLflow's fluent API (mlflow.set_experiment, as a library or a test may call it) exports
    MLFLOW_EXPERIMENT_ID into the environment; left over, it would steer the next test's
    subprocesses (`mlflow run`)."""
    names = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    saved = {name: os.environ.pop(name, None) for name in names}
    yield
    for name in names:
        os.environ.pop(name, None)
        if saved[name] is not None:
            os.environ[name] = saved[name]


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A CIFAR-format archive of 300 train + 100 test random images, and its md5."""
    path = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    return path, make_archive(path)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_archive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared arrays from the tiny archive: 250 train, 50 val, 100 test."""
    from resnetlab.data.archive import read_archive
    from resnetlab.data.datasets import CIFAR10
    from resnetlab.data.prepared import prepare, save_prepared

    out = tmp_path_factory.mktemp("prepared")
    save_prepared(
        prepare(read_archive(tiny_archive[0], CIFAR10), val_size=50, subset=0, seed=0), out
    )
    return out


@pytest.fixture(scope="session")
def app_project(tiny_prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder as `dvc repro` leaves it: two tiny variants trained and evaluated for
    real on the tiny data, leaderboard, figures, MLflow store (see app_project.py)."""
    from app_project import build

    return build(tmp_path_factory.mktemp("app_project"), tiny_prepared)

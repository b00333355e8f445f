"""A failed experiment loses the last good results (DVC deletes a stage's outputs before running
it); README's Troubleshooting command brings all of them back."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
RECOVERY = "dvc exp apply HEAD"
TARGET = "train@resnet8-0"
# Not results: git and DVC internals, the copied sources, MLflow's store (runs are records).
SKIP = {".git", ".dvc", "src", "mlruns", "mlflow.db"}


def dvc(project: DvcProject, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`dvc <args>` in the project, bounded in time (DvcProject.dvc waits forever)."""
    exe = str(Path(sys.executable).parent / "dvc")
    return subprocess.run(
        [exe, *args],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(root: Path) -> dict[str, str]:
    """md5 of every workspace file outside SKIP, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not SKIP & set(path.relative_to(root).parts)
    }


def test_readme_recovery_restores_the_last_good_results(tiny_archive, tmp_path):
    assert f"\n{RECOVERY}\n" in README.read_text(), "README's Troubleshooting documents it"
    params = tiny_params(*tiny_archive)
    params["train"]["epochs"] = 1
    params["variants"] = {"resnet8": params["variants"]["resnet8"]}
    params["run_variants"] = ["resnet8"]
    project = DvcProject(tmp_path / "proj", params)
    root = project.root

    # Up to training only, to stay quick: evaluate, diagnose and compare would add nothing new
    # (their results are git-tracked files like metrics/<v>/seed<k>/train.json, or DVC-cached ones).
    assert dvc(project, "repro", TARGET).returncode == 0
    project.commit("good run")
    good = snapshot(root)
    for path in ("models/resnet8/seed0/model.pt", "metrics/resnet8/seed0/train.json", "dvc.lock"):
        assert path in good
    assert dvc(project, "status", TARGET).stdout.strip() == "Data and pipelines are up to date."

    # An experiment whose upstream stage succeeds (a new split: prepare re-runs and records
    # itself in dvc.lock) and whose training then fails (the loss overflows at once).
    res = dvc(project, "exp", "run", TARGET, "-S", "data.val_size=60", "-S", "train.lr=1e30")
    assert res.returncode != 0
    assert "the loss became" in res.stderr and "Lower the learning rate" in res.stderr
    broken = snapshot(root)
    assert "models/resnet8/seed0/model.pt" not in broken  # what this is about
    assert "metrics/resnet8/seed0/train.json" not in broken
    assert broken["data/prepared/meta.json"] != good["data/prepared/meta.json"]
    assert float(project.params()["train"]["lr"]) == 1e30  # DVC writes 1e+30, a YAML string

    assert dvc(project, *RECOVERY.split()[1:], timeout=60).returncode == 0
    assert snapshot(root) == good  # every file back, byte for byte
    assert yaml.safe_load((root / "params.yaml").read_text()) == params
    assert project.git("status", "--porcelain") == ""
    assert dvc(project, "status", TARGET).stdout.strip() == "Data and pipelines are up to date."

"""A throwaway DVC project (temp git repo) running this checkout's real dvc.yaml on tiny data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


class DvcProject:
    def __init__(self, root: Path, params: dict[str, Any]):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        # Code deps (dvc.yaml lists src/ files) must exist in the project for DVC to hash them.
        shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
        self.write_params(params)
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            # The stages call `resnetlab`: the console script beside this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # ... importing the project's copy of the package, as in a real checkout (so its
            # bytecode caches appear beside the sources DVC hashes).
            "PYTHONPATH": str(root / "src"),
            "DVC_NO_ANALYTICS": "1",
            # The stages compute on the CPU on any machine: `device: auto` stays auto (the
            # tests check its CPU-core lease), and the numbers they expect are the CPU's.
            "CUDA_VISIBLE_DEVICES": "",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        self.git("init", "-q")
        self.dvc("init", "-q")
        self.dvc("config", "core.analytics", "false")
        shutil.copy(REPO / ".gitignore", root / ".gitignore")  # mlflow.db, checkpoints, ...
        shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
        # The published numbers compare reports against, and the top-level plots' template.
        shutil.copy(REPO / "published.yaml", root / "published.yaml")
        # The folder dataset's default folder, a dependency of prepare whatever the dataset.
        shutil.copytree(REPO / "data" / "images", root / "data" / "images")
        shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
        # ... and the page `dvc plots show` fills, which holds the charting libraries.
        self.dvc("config", "plots.html_template", "plots/offline.html")
        self.commit("init")

    @classmethod
    def clone(cls, source: DvcProject, dest: Path) -> DvcProject:
        """`git clone` of `source` at `dest`: what a colleague gets, no DVC cache, no outputs
        but the git-tracked ones. Both record into `source`'s MLflow store (a shared server)."""
        subprocess.run(["git", "clone", "-q", str(source.root), str(dest)], check=True)
        project = cls.__new__(cls)
        project.root = dest
        project.env = {**source.env, "PYTHONPATH": str(dest / "src")}
        return project

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    def git(self, *args: str) -> str:
        return self.run("git", *args).stdout

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check)

    def repro(self, *targets: str) -> list[str]:
        """Run `dvc repro`; returns the names of the stages that actually ran."""
        out = self.dvc("repro", *targets).stdout
        return [
            line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")
        ]

    def edit_code(self, relative: str, text: str = "\n# edited\n") -> None:
        """Append `text` to the project's copy of a source file (e.g. `resnetlab/train/loop.py`)."""
        path = self.root / "src" / relative
        path.write_text(path.read_text() + text)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)


def tiny_params(archive: Path, md5: str, **data: Any) -> dict[str, Any]:
    """The shipped params.yaml, shrunk: the tiny mirror, two 8-layer variants, 2 epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(url=str(archive), md5=md5, val_size=50, **data)
    params["mlflow"]["experiment"] = "e2e"
    params["train"].update(epochs=2, batch_size=64, precision="fp32", eval_batch_size=500)
    params["variants"] = {
        "plain8": {"model": {"name": "plain", "depth": 8}},
        "resnet8": {"model": {"name": "resnet_v1", "depth": 8}},
    }
    params["run_variants"] = ["plain8", "resnet8"]
    params["evaluate"]["tta_variants"] = {}
    params["diagnose"]["gradient_depths"] = [8]
    return params

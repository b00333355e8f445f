"""Two real `dvc exp run`s in a temporary repo (this checkout's dvc.yaml on the tiny archive):
the expensive fixture that tests of DVC experiments and their MLflow records share.

`tiny1` runs the whole pipeline on the shrunk params (two 8-layer variants, one epoch); `tiny2`
changes one variant's learning rate, so DVC re-runs that variant's train and evaluate stages
and compare, and restores the rest from its cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dvc_project import DvcProject, tiny_params

EXPERIMENTS = {"tiny1": [], "tiny2": ["-S", "variants.resnet8.lr=0.05"]}
EXPERIMENT = "e2e"  # the MLflow experiment tiny_params sets


@dataclass(frozen=True)
class ExperimentsProject:
    project: DvcProject
    outputs: dict[str, str]  # experiment name -> what `dvc exp run` printed

    @property
    def tracking_uri(self) -> str:
        return self.project.env["MLFLOW_TRACKING_URI"]


def build(root: Path, archive: Path, md5: str) -> ExperimentsProject:
    params = tiny_params(archive, md5)
    params["train"]["epochs"] = 1
    # Set in the variant, so that `-S variants.resnet8.lr=...` overrides a key that exists.
    params["variants"]["resnet8"]["lr"] = 0.1
    project = DvcProject(root, params)
    # Sampled every 0.2 s (not MLflow's 10 s) so that one-epoch runs get system metrics.
    project.env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.2"
    outputs = {}
    for name, args in EXPERIMENTS.items():
        outputs[name] = project.dvc("exp", "run", "-n", name, *args).stdout
    return ExperimentsProject(project, outputs)

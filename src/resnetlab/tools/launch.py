"""`resnetlab launch {all,train,evaluate} [--variant NAME] [--seed K]`: what the MLproject's entry
points run (`mlflow run . -e train -P variant=resnet56`). DVC reproduces the stages; this only
prepares and describes the run `mlflow run` made:

- the variant must be declared and listed in `run_variants`, and the seed listed in `seeds`
  (DVC's matrix has no stage otherwise, and says only "Stage ... not found"): one line naming
  the key to edit, before DVC starts;
- the run gets a name saying what it runs (`train resnet56 · seed 0`) instead of MLflow's random
  one, unless `mlflow run --run-name` gave it one;
- the stages see the run's id as RESNETLAB_LAUNCH_RUN_ID (their parent run, see
  `tracking.lineage.Lineage`), and MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID are unset, so that no
  MLflow fluent call below logs into it by accident;
- when DVC finds every stage up to date, the run says so (tag `resnetlab.outcome`, and its
  description). It cannot be removed: `mlflow run` ends the run after the command, which fails
  on a deleted run.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.core.errors import ConfigError, ResnetlabError, first_line
from resnetlab.core.params import load_params
from resnetlab.tracking.lineage import LAUNCH_RUN_ENV

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TARGETS = ("all", "train", "evaluate")
OUTCOME_TAG = "resnetlab.outcome"
# MLflow's generated run names (`bedecked-shad-187`): replaced; a name the user chose is kept.
_GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+-\d+")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="the whole pipeline, or one run's stage")
    p.add_argument("--variant", help="the variant (train and evaluate)")
    p.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")


def run(args: argparse.Namespace) -> None:
    stage, name = _stage(args)
    launch_run = os.environ.get("MLFLOW_RUN_ID", "")
    if launch_run:
        _name_run(launch_run, name)
    unset = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if launch_run:
        env[LAUNCH_RUN_ENV] = launch_run
    ran = _repro(stage, env)
    if launch_run and not ran:
        _mark_up_to_date(launch_run, stage)


def _stage(args: argparse.Namespace) -> tuple[str, str]:
    """The DVC target and the run's name; ConfigError for a variant or seed DVC has no stage
    for."""
    if args.target == "all":
        if args.variant:
            raise ResnetlabError("--variant is for train and evaluate; `all` runs every variant")
        return "", "pipeline (dvc repro)"
    if not args.variant:
        raise ResnetlabError(f"{args.target} needs --variant (-P variant=<name> for mlflow run)")
    params = load_params(args.params)
    variant = params.variant(args.variant).name  # a one-line error for an undeclared name
    if variant not in params.selected:
        listed = ", ".join(params.selected)
        raise ConfigError(
            f"run_variants: {variant} is declared but not listed ({listed}), so DVC has no "
            f"{args.target}@{variant}-{args.seed} stage; add it to run_variants in "
            f"{args.params} (or dvc exp run -S 'run_variants=[{listed}, {variant}]')"
        )
    if args.seed not in params.seeds:
        seeds = ", ".join(str(s) for s in params.seeds)
        raise ConfigError(
            f"seeds: {args.seed} is not listed ([{seeds}]), so DVC has no "
            f"{args.target}@{variant}-{args.seed} stage; add it to seeds in {args.params} "
            f"(or dvc exp run -S 'seeds=[{seeds}, {args.seed}]')"
        )
    return f"{args.target}@{variant}-{args.seed}", f"{args.target} {variant} · seed {args.seed}"


def _repro(stage: str, env: dict[str, str]) -> bool:
    """Run `dvc repro [stage]`, its output passed through; whether any stage ran."""
    cmd = ["dvc", "repro", *([stage] if stage else [])]
    ran = False
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            ran = ran or line.startswith("Running stage '")
    if proc.returncode:
        raise ResnetlabError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see above")
    return ran


def _name_run(run_id: str, name: str) -> None:
    def rename(c: MlflowClient) -> None:
        if _GENERATED_NAME.fullmatch(c.get_run(run_id).info.run_name or ""):
            c.set_tag(run_id, "mlflow.runName", name)

    _describe(rename)


def _mark_up_to_date(run_id: str, stage: str) -> None:
    note = (
        f"Nothing to do: DVC found {stage or 'every stage'} up to date and ran nothing; the "
        "results are those of the runs that produced them."
    )

    def mark(c: MlflowClient) -> None:
        c.set_tag(run_id, OUTCOME_TAG, "up to date")
        c.set_tag(run_id, "mlflow.note.content", note)

    _describe(mark)


def _describe(change: Callable[[MlflowClient], None]) -> None:
    """Apply `change` to the launch run, within the store's deadlines; a store that does not
    answer costs the description, not the stages (they check the store themselves)."""
    from resnetlab.tracking.store import CALL_S, Caller, client, tracking_uri

    try:
        Caller(tracking_uri())(lambda: change(client()), CALL_S)
    except Exception as exc:
        log.warning("the mlflow run's name or outcome was not recorded: %s", first_line(exc))

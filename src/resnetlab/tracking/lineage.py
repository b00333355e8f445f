"""Where a run belongs and what it is tagged with: the git commit, DVC's experiment, and one parent
run per DVC experiment (or `mlflow run`, or plain `dvc repro`), found or created race-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.tracking.store import is_local, is_missing, machine_lock, quote

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


log = logging.getLogger(__name__)

# The parent run of a DVC experiment (or of a plain `dvc repro`) carries its key in this tag; see
# `Lineage`.
PARENT_KEY_TAG = "resnetlab.parent_key"
# Set by the MLproject entry points to the run `mlflow run` made (which they unset as
# MLFLOW_RUN_ID so that nothing logs into it by accident); see `Lineage`.
LAUNCH_RUN_ENV = "RESNETLAB_LAUNCH_RUN_ID"
# How long a stage that created a parent run waits before looking for a concurrent creator's.
_SETTLE_S = 0.3


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def mlflow_run_label(variant: str, seed: int) -> str:
    """How the MLflow run name of one training seed of a variant starts (`Lineage.display_name`
    appends the DVC experiment). Not `records.run_key`, the `<variant>-<seed>` of stage names
    and metrics keys."""
    return f"{variant} · seed {seed}"


def training_tags(variant: str, device: object, processes: int, seed: int) -> dict[str, str]:
    """Tags of a variant's training run: `common_tags` plus what ran it. The `variant` tag groups
    a variant's seeds (the runs of one variant share it; group or filter by it in the UI), the
    `seed` tag tells them apart."""
    import torch

    return {
        **common_tags("train"),
        "variant": variant,
        "seed": str(seed),
        "device": str(device),
        "torch_version": torch.__version__,
        "num_processes": str(processes),
    }


def common_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: the stage, the git commit, and DVC's experiment name and baseline
    revision while `dvc exp run` executes the stage."""
    tags = {"stage": stage}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@dataclass(frozen=True)
class Lineage:
    """The group a stage's run belongs to, and the key of that group's parent run.

    - Under `dvc exp run`: the DVC experiment, `dvc-exp:<name>@<baseline commit>`. DVC names an
      experiment uniquely per baseline commit (its ref is refs/exps/<baseline>/<name>), so the
      name alone could join a re-used name on another commit; the pair is the experiment. Every
      stage of one `dvc exp run` (and a queued experiment's worker) sees the same DVC_EXP_NAME and
      DVC_EXP_BASELINE_REV, so all find the same parent.
    - Under an MLproject entry point (`mlflow run`): the run `mlflow run` made,
      `mlflow-run:<run id>`; that run is the parent when it is in the stages' experiment, and is
      linked to it (tags both ways) when it is not.
    - Under a plain `dvc repro`: `repro:<git commit>:<params digest>`, the digest being the first
      12 hex digits of SHA-256 over params.yaml's parsed content (canonical JSON, so comments and
      layout do not count). Two `dvc repro`s from the same commit with the same params share a
      parent: they are the same experiment, re-run. Uncommitted code edits are not part of the
      key (dvc.lock records them); `no-git` stands for the commit outside a git repository.
    """

    key: str
    exp_name: str = ""  # DVC's experiment name; "" outside `dvc exp run`
    baseline: str = ""  # DVC's baseline revision (a commit), under `dvc exp run`
    commit: str = ""
    launch_run: str = ""  # the `mlflow run` run, under an MLproject entry point

    @property
    def parent_name(self) -> str:
        if self.exp_name:
            return self.exp_name
        if self.launch_run:
            return f"mlflow run {self.launch_run[:8]}"
        return f"repro {self.commit[:7] or 'no-git'} {self.key.rsplit(':', 1)[-1][:6]}"

    def tags(self) -> dict[str, str]:
        tags = {PARENT_KEY_TAG: self.key}
        if self.exp_name:
            tags["dvc_exp_name"] = self.exp_name
        if self.baseline:
            tags["dvc_baseline"] = self.baseline
        if self.launch_run:
            tags["resnetlab.launch_run"] = self.launch_run
        return tags

    def display_name(self, label: str) -> str:
        """The MLflow run name: `resnet20 · seed 0 · tiny1` under a DVC experiment, else the
        label alone."""
        return f"{label} · {self.exp_name}" if self.exp_name else label


def params_digest(params_file: Path | None) -> str:
    """SHA-256 (12 hex digits) of the params file's parsed content; `none` without a file."""
    import yaml

    if params_file is None or not Path(params_file).is_file():
        return "none"
    raw = yaml.safe_load(Path(params_file).read_text())
    blob = json.dumps(raw, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def lineage(params_file: Path | None) -> Lineage:
    """The `Lineage` of the stage running now (from DVC's and `mlflow run`'s environment)."""
    commit = git_commit() or ""
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "")
    launch = os.environ.get(LAUNCH_RUN_ENV, "")
    if exp_name:
        key = f"dvc-exp:{exp_name}@{baseline or commit or 'no-git'}"
    elif launch:
        key = f"mlflow-run:{launch}"
    else:
        key = f"repro:{commit or 'no-git'}:{params_digest(params_file)}"
    return Lineage(key, exp_name, baseline, commit, launch)


def parent_run(c: MlflowClient, exp_id: str, group: Lineage) -> str:
    """The id of `group`'s parent run in experiment `exp_id`, found by its key tag or created.

    Safe when stages race (DVC queue workers, parallel `dvc exp run`s of one experiment). On a
    local store (SQLite, files: every racer on this machine) the search and the creation happen
    under one machine-wide lock, so exactly one racer creates it. On a network store a stage
    that finds none creates one, waits `_SETTLE_S`, and searches again; of the parents it then
    sees, the first created (start time, then run id) is the parent, and a later one it made
    itself is deleted. That holds while a creation reaches the store within `_SETTLE_S` of its
    start time; on one loaded machine a write can wait longer for SQLite's lock, which is why a
    local store takes the lock instead.
    """
    from mlflow.entities import RunTag

    if group.launch_run:
        launch = _launch_run(c, group.launch_run)
        if launch is not None and launch.info.experiment_id == exp_id:
            # The `mlflow run` run is the parent; tagging it again is harmless.
            c.log_batch(launch.info.run_id, tags=[RunTag(k, v) for k, v in group.tags().items()])
            return launch.info.run_id
    found = _parents(c, exp_id, group.key)
    if found:
        return found[0]
    if is_local(c.tracking_uri):
        with machine_lock(f"parent run {c.tracking_uri} {exp_id} {group.key}"):
            found = _parents(c, exp_id, group.key)
            if found:
                return found[0]
            winner = mine = _create_parent(c, exp_id, group)
    else:
        mine = _create_parent(c, exp_id, group)
        time.sleep(_SETTLE_S)
        winner = (_parents(c, exp_id, group.key) or [mine])[0]
        if winner != mine:
            c.delete_run(mine)
            log.info("parent run %s: a concurrent stage created %s first; using it", mine, winner)
            return winner
    if group.launch_run and (launch := _launch_run(c, group.launch_run)) is not None:
        # `mlflow run` ran in another experiment: link the two runs both ways.
        c.set_tag(launch.info.run_id, "resnetlab.parent_run", mine)
        c.set_tag(mine, "resnetlab.launch_experiment", launch.info.experiment_id)
        log.warning(
            "`mlflow run` recorded run %s in experiment %s, not in the stages' one; the two are "
            "linked by tags. Pass `--experiment-name <mlflow.experiment>` to nest the stages' "
            "runs under it",
            launch.info.run_id,
            launch.info.experiment_id,
        )
    return winner


def _create_parent(c: MlflowClient, exp_id: str, group: Lineage) -> str:
    tags = {**common_tags("experiment"), **group.tags(), "mlflow.note.content": _parent_note(group)}
    mine = c.create_run(exp_id, run_name=group.parent_name, tags=tags).info.run_id
    # A container, not a process: FINISHED at once, so that no run stays RUNNING if compare, which
    # logs into it, does not run.
    c.set_terminated(mine, status="FINISHED")
    return mine


def _parents(c: MlflowClient, exp_id: str, key: str) -> list[str]:
    runs = c.search_runs([exp_id], f"tags.`{PARENT_KEY_TAG}` = '{quote(key)}'", max_results=100)
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]


def _launch_run(c: MlflowClient, run_id: str) -> Any:
    try:
        return c.get_run(run_id)
    except Exception as exc:
        if not is_missing(exc):
            raise
        log.warning("%s names run %s, which the store does not hold", LAUNCH_RUN_ENV, run_id)
        return None


def _parent_note(group: Lineage) -> str:
    if group.exp_name:
        return f"DVC experiment {group.exp_name} (baseline {group.baseline[:7]})"
    if group.launch_run:
        return f"`mlflow run` {group.launch_run}"
    return f"`dvc repro` at commit {group.commit[:7] or '(no git)'}, params {group.key[-12:]}"

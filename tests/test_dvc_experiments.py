"""DVC as its users work with it: results shared through a DVC remote, a clone's first
experiment, and a `dvc exp show` narrow enough to read (one module-scoped project, tiny data,
1-epoch variants)."""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dvc_project import REPO, DvcProject, tiny_params

pytestmark = pytest.mark.slow

# The README's promise: after two experiments that change one variant, `dvc exp show
# --only-changed` holds at most this many columns, whatever the number of variants.
MAX_CHANGED_COLUMNS = 18
TERMINAL = 160  # columns


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under `heading` in the README (comments dropped)."""
    text = (REPO / "README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [" ".join(shlex.split(line, comments=True)) for line in block.splitlines()]


def wait_for_queue(project: DvcProject, timeout_s: float = 600) -> str:
    """`dvc queue status` once no experiment is queued or running (the workers then exit)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = project.dvc("queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")
        time.sleep(2)


def digests(root: Path, *folders: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file() and p.name != "checkpoint.pt" and p.name != ".gitignore"
    }


@pytest.fixture(scope="module")
def shared(tiny_archive, tmp_path_factory: pytest.TempPathFactory):
    """A project whose results were committed and pushed to a local-directory DVC remote, as the
    README says, and a fresh clone of it that pulled them and ran two experiments."""
    archive, md5 = tiny_archive
    params = tiny_params(archive, md5)
    params["train"]["epochs"] = 1
    tmp = tmp_path_factory.mktemp("dvc_share")
    origin = DvcProject(tmp / "origin", params)
    remote = tmp / "remote"
    commands = readme_block("Sharing results: a DVC remote")
    # The README's own commands, its placeholder folder replaced by the temporary one.
    for line in commands:
        argv = shlex.split(line.replace("/path/to/dvc-store", str(remote)))
        if argv[0] == "dvc" and argv[1] in ("remote", "push"):
            origin.dvc(*argv[1:])
            if argv[1] == "remote":
                origin.repro()
                origin.commit("results and remote")
    clone = DvcProject.clone(origin, tmp / "clone")
    pulled = clone.dvc("pull")
    folders = ("data", "models", "metrics", "reports")
    restored = digests(clone.root, *folders), digests(origin.root, *folders)
    status = clone.dvc("status").stdout
    # resnet8 sets no lr of its own: `+` adds the key (DVC's rule), `++` adds or replaces it.
    first = clone.dvc("exp", "run", "-n", "lr05", "-S", "+variants.resnet8.lr=0.05")
    # Two more, queued and run by two parallel workers, each leasing one of the two CPU cores
    # (README, "More than one GPU (or process)").
    clone.dvc("exp", "run", "--queue", "-n", "lr02", "-S", "++variants.resnet8.lr=0.02")
    clone.dvc("exp", "run", "--queue", "-n", "lr03", "-S", "++variants.resnet8.lr=0.03")
    serial_env = clone.env
    clone.env = {**serial_env, "RESNETLAB_CPU_WORKERS": "2"}
    clone.dvc("queue", "start", "-j", "2")
    queue = wait_for_queue(clone)
    clone.env = serial_env
    return {
        "origin": origin,
        "clone": clone,
        "remote": remote,
        "pulled": pulled,
        "restored": restored,
        "status": status,
        "first": first,
        "queue": queue,
        "commands": commands,
    }


def test_pull_restores_the_pushed_results_byte_for_byte(shared):
    origin, clone = shared["origin"], shared["clone"]
    assert any(shared["remote"].rglob("*")), "dvc push wrote to the remote"
    assert "dvc pull" in shared["commands"] and "dvc push" in shared["commands"]
    assert "models/plain8/seed0/model.pt" in shared["pulled"].stdout
    pulled, pushed = shared["restored"]
    assert pulled == pushed
    for name in (
        "models/plain8/seed0/model.pt",
        "data/prepared/meta.json",
        "metrics/resnet8/seed0/eval.json",
    ):
        assert name in pulled
    # Nothing to re-run: the checkpoints the clone lacks are not outputs.
    assert "up to date" in shared["status"], shared["status"]
    assert not (clone.root / "models/plain8/seed0/checkpoint.pt").exists()
    assert (origin.root / "models/plain8/seed0/checkpoint.pt").exists()


def test_first_experiment_in_a_clone_is_quiet_and_reruns_only_the_change(shared):
    out = shared["first"].stdout + shared["first"].stderr
    assert "No file hash info found" not in out
    assert "WARNING" not in out, out
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running"))
    assert ran == ["compare", "evaluate@resnet8-0", "train@resnet8-0"]


def test_queued_experiments_train_in_parallel_each_on_its_own_cores(shared):
    from mlflow.tracking import MlflowClient

    assert shared["queue"].count("Success") == 2, shared["queue"]
    clone = shared["clone"]
    client = MlflowClient(clone.env["MLFLOW_TRACKING_URI"])
    runs = {
        r.data.tags["dvc_exp_name"]: r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.stage = 'train'"
        )
        if r.data.tags.get("dvc_exp_name") in ("lr02", "lr03")
    }
    assert runs["lr02"].data.params["train.lr"] == "0.02"
    assert runs["lr03"].data.params["train.lr"] == "0.03"
    # Each worker leased a core of its own, and the two trainings overlapped in time.
    devices = {r.data.tags["device"] for r in runs.values()}
    assert len(devices) == 2 and all(d.startswith("cpu (core") for d in devices), devices
    starts = [r.info.start_time for r in runs.values()]
    ends = [r.info.end_time for r in runs.values()]
    assert max(starts) < min(ends), (starts, ends)
    shown = clone.dvc("exp", "show", "--csv").stdout
    assert {"lr02", "lr03"} <= set(pd.read_csv(io.StringIO(shown))["Experiment"].dropna())


def test_exp_show_is_narrow(shared):
    clone = shared["clone"]
    csv = clone.dvc("exp", "show", "--csv").stdout
    table = pd.read_csv(io.StringIO(csv))
    assert {"lr05", "lr02"} <= set(table["Experiment"].dropna())
    metric_columns = [c for c in table.columns if c.split(".")[0] in ("plain8-0", "resnet8-0")]
    # Numbers only: the headline metrics of train.json and eval.json, 4 + 6 per run, each
    # named after its run (variant and seed) alone (no `metrics/<v>/eval.json:` before it).
    assert len(metric_columns) == 2 * 10, metric_columns
    assert "resnet8-0.accuracy" in metric_columns and "plain8-0.best_val_accuracy" in metric_columns
    assert not any(":" in c for c in table.columns), list(table.columns)

    changed = clone.dvc("exp", "show", "--only-changed", "--csv").stdout
    columns = pd.read_csv(io.StringIO(changed)).columns
    assert len(columns) <= MAX_CHANGED_COLUMNS, list(columns)
    assert "variants.resnet8.lr" in columns

    # The README's compact table at its natural width (DVC renders it whole when not on a
    # terminal; a narrower terminal would collapse columns to ellipses): both experiments and
    # the changed parameter on it, in 160 columns for the README's example variant.
    (compact,) = [c for c in readme_block("DVC workflows") if c.startswith("dvc exp show")]
    compact = compact.replace("resnet56", "resnet8")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *shlex.split(compact)[1:]],
        cwd=clone.root,
        env={**clone.env, "COLUMNS": str(TERMINAL)},
        capture_output=True,
        text=True,
        check=True,
    )
    header = next(line for line in res.stdout.splitlines() if "Experiment" in line)
    named = header.count("resnet8")  # columns named after the variant: the metrics, the param
    assert header.split() == [
        "Experiment",
        "resnet8-0.best_val_accuracy",
        "resnet8-0.accuracy",
        "resnet8-0.macro_f1",
        "variants.resnet8.lr",
    ], header
    width = max(map(len, res.stdout.splitlines())) + named * (len("resnet56") - len("resnet8"))
    assert width <= TERMINAL, res.stdout
    assert all(f"[{name}]" in res.stdout for name in ("lr05", "lr02", "lr03"))

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

# docs/dvc.md's promise: after experiments that change one variant, `dvc exp show
# --only-changed` holds at most this many columns, whatever the number of variants (that
# variant's metrics-file fields and their mean, 6 + 6 that change, the parameter, three
# dependencies and DVC's seven).
MAX_CHANGED_COLUMNS = 23
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
        "metrics/resnet8/seed0.json",
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


def compact_exp_show(clone: DvcProject, *extra: str) -> str:
    """The README's `dvc exp show` command, run as a user runs it (`extra`: `--csv`) at its
    natural width (DVC renders the table whole when not on a terminal; a narrower terminal
    would collapse columns to ellipses)."""
    (compact,) = [c for c in readme_block("DVC workflows") if c.startswith("dvc exp show")]
    res = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *shlex.split(compact)[1:], *extra],
        cwd=clone.root,
        env={**clone.env, "COLUMNS": str(TERMINAL)},
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout


def test_exp_show_is_narrow(shared):
    clone = shared["clone"]
    csv = clone.dvc("exp", "show", "--csv").stdout
    table = pd.read_csv(io.StringIO(csv))
    assert {"lr05", "lr02"} <= set(table["Experiment"].dropna())
    # Numbers only: each run's metrics file (7 fields, the same in every run) and their mean.
    fields = ["accuracy", "val_accuracy", "loss", "macro_f1", "weighted_f1"]
    fields += ["single_view_accuracy", "views"]
    files = ("metrics/plain8/seed0.json", "metrics/resnet8/seed0.json")
    metric_columns = [c for c in table.columns if ":" in c]
    assert metric_columns == [f"{f}:{k}" for f in (*files, "reports/mean.json") for k in fields]

    changed = clone.dvc("exp", "show", "--only-changed", "--csv").stdout
    columns = pd.read_csv(io.StringIO(changed)).columns
    assert len(columns) <= MAX_CHANGED_COLUMNS, list(columns)
    assert "variants.resnet8.lr" in columns

    # The README's compact table: each experiment's name, the parameter it changed and every
    # run's test accuracy, and nothing else, whatever the variants' names.
    shown = compact_exp_show(clone)
    header = next(line for line in shown.splitlines() if "Experiment" in line)
    assert header.split() == [
        "Experiment",
        "metrics/plain8/seed0.json:accuracy",
        "metrics/resnet8/seed0.json:accuracy",
        "variants.resnet8.lr",
    ], header
    assert all(f"[{name}]" in shown for name in ("lr05", "lr02", "lr03"))
    # In 160 columns, also for the shipped names resnet20 and resnet56 (two characters more in
    # the first run's column, one in the second's and one in the parameter's).
    width = max(map(len, shown.splitlines()))
    assert width + 4 <= TERMINAL, shown
    # Sorted by the runs' mean test accuracy (reports/mean.json), best first.
    rows = pd.read_csv(io.StringIO(compact_exp_show(clone, "--csv")))
    full = table.set_index("Experiment")["reports/mean.json:accuracy"]
    experiments = [n for n in rows["Experiment"] if n in ("lr05", "lr02", "lr03")]
    means = [full[n] for n in experiments]
    assert len(experiments) == 3 and means == sorted(means, reverse=True), (experiments, means)


def test_metrics_show_is_one_table(shared):
    """`dvc metrics show`: a row per run and one for their mean, a column per field, every
    cell filled (was: each run's fields under its own name, ~75% of the cells "-")."""
    clone = shared["clone"]
    shown = clone.dvc("metrics", "show").stdout
    lines = shown.splitlines()
    assert lines[0].split() == [
        "Path",
        "accuracy",
        "loss",
        "macro_f1",
        "single_view_accuracy",
        "val_accuracy",
        "views",
        "weighted_f1",
    ], shown
    paths = [line.split()[0] for line in lines[1:]]
    files = ["metrics/plain8/seed0.json", "metrics/resnet8/seed0.json"]
    assert paths == [*files, "reports/mean.json"], shown
    assert all(len(line.split()) == 8 and " - " not in line for line in lines[1:]), shown
    assert max(map(len, lines)) <= TERMINAL, shown

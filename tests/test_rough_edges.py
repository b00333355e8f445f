"""Issue 30, "Rough edges": outputs a stopped stage leaves, and two runs into one folder. Real
processes and real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120  # the longest any process here may take (a loaded 2-core machine)

# `pipeline.evaluate._write` on a made-up test set of ROWS images, in its own process.
EVALUATE_WRITE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from resnetlab.core.records import EvalReport
    from resnetlab.data.datasets import CIFAR10_CLASSES as CLASSES
    from resnetlab.evaluate import metrics
    from resnetlab.pipeline.evaluate import _write

    rows = int(sys.argv[2])
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, rows), rng.integers(0, 10, rows)
    full = {
        **metrics.classification_report(y_true, y_pred, CLASSES),
        "loss": 2.3,
        "single_view_accuracy": 0.1,
        "views": 1,
        "val_accuracy": 0.1,
    }
    report = EvalReport(**{name: full[name] for name in EvalReport.fields()})
    print("writing", flush=True)
    out = Path(sys.argv[1])
    _write(out, out / "report.json", report, full, CLASSES, y_true, y_pred, rng.random(rows))
    """
)
OUTPUTS = ("report.json", "per_class.csv", "confusion.csv", "predictions.csv")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _sigterm_once(proc: subprocess.Popen, ready: Callable[[], object], pause: bool = False) -> str:
    """Send `proc` SIGTERM as soon as `ready()` holds; its stderr once it has ended. With
    `pause`, `proc` is stopped first and `ready()` checked again, so the signal lands while
    what `ready` saw still holds."""
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        if pause:
            proc.send_signal(signal.SIGSTOP)
            assert ready()
        proc.send_signal(signal.SIGTERM)
        if pause:
            proc.send_signal(signal.SIGCONT)
        return proc.communicate(timeout=WAIT_S)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigterm_during_evaluate_leaves_the_old_outputs_whole(tmp_path) -> None:
    """Before: SIGTERM mid-write left a 0-byte predictions.csv beside a new metrics file. Now
    every output is written atomically, the metrics file last: the old files stay as they were,
    whole, and no temporary is left; a run that ends writes them all."""
    out = tmp_path / "eval"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text(f"old {name}\n")
    script = tmp_path / "write.py"
    script.write_text(EVALUATE_WRITE)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(out), "4000000"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = _sigterm_once(
        writer, lambda: [p for p in out.glob(".predictions.csv.*.tmp") if p.stat().st_size]
    )
    assert writer.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary left
    for name in ("report.json", "predictions.csv"):
        assert (out / name).read_text() == f"old {name}\n"

    done = subprocess.run(
        [sys.executable, str(script), str(out), "1000"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert "accuracy" in json.loads((out / "report.json").read_text())
    assert len((out / "predictions.csv").read_text().splitlines()) == 1001


@pytest.mark.slow
def test_a_second_train_into_the_same_folder_stops_in_one_line(
    tiny_prepared, tmp_path, monkeypatch
) -> None:
    """Before: two `resnetlab train` of one variant and seed into one folder (no DVC) both
    trained and registered two versions. Now the second stops before training, status 1, naming the
    folder and the first one's pid; once the first has ended (even by kill -9) the folder is
    free again."""
    import yaml

    from resnetlab.core.lock import folder_lock, lock_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = {
        "mlflow": {"experiment": "lock-test"},
        "train": {
            "epochs": 50,
            "batch_size": 125,
            "lr": 0.05,
            "precision": "fp32",
            "device": "cpu",
            "checkpoint_every_s": 0,  # the test fills the disk at the second checkpoint
        },
        "variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "resnetlab", "train", "--variant", "tiny"]
    cmd += ["--data", str(tiny_prepared), "--out", "models/tiny", "--metrics", "metrics/tiny"]
    lock = lock_path(tmp_path / "models/tiny")
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while not (lock.exists() and lock.read_text() == f"{first.pid}\n"):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=WAIT_S)
        assert first.poll() is None  # still training while the second was refused
    finally:
        first.kill()
        first.wait()
    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == (
        f"resnetlab train: error: models/tiny: another resnetlab train (pid {first.pid}) is "
        "writing to this folder; wait for it to end, or give this one another output folder\n"
    )
    assert not (tmp_path / "models/tiny/model.pt").exists()
    # The lock lives outside the output folder, which holds what DVC caches and nothing else.
    assert lock.parent != tmp_path / "models/tiny" and not list(
        (tmp_path / "models/tiny").glob("*lock*")
    )
    with folder_lock(tmp_path / "models/tiny", "resnetlab train"):  # kill -9 released it
        assert lock.read_text() == f"{os.getpid()}\n"


def _tmpfs_available() -> bool:
    """A size-limited tmpfs in a private mount namespace is a real full disk, with no root on
    the host and nothing left mounted afterwards."""
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_tmpfs = pytest.mark.skipif(
    not _tmpfs_available(), reason="no private mount namespace (unshare -rm) to fill a disk in"
)


def _on_a_small_disk(size: str, folder: Path, script: str, cwd: Path) -> str:
    """Run `script` (sh) with `folder` on a tmpfs of `size`; its output. The tmpfs vanishes with
    the script, so the script copies out what is to be checked."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={size} tmpfs {folder} && "
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount + script],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _tiny_params(root: Path, epochs: int) -> None:
    import yaml

    params = {
        "mlflow": {"experiment": "disk-test"},
        "train": {
            "epochs": epochs,
            "batch_size": 125,
            "lr": 0.05,
            "precision": "fp32",
            "device": "cpu",
            "checkpoint_every_s": 0,  # the test fills the disk at the second checkpoint
        },
        "variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
@needs_tmpfs
def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_training_resumes(
    tiny_prepared, tmp_path, monkeypatch
) -> None:
    """Before: three chained tracebacks (torch's OSError, then its RuntimeError about zip
    positions). Now one line naming the file, the free space and what to do; the epoch-1
    checkpoint is intact, no temporary is left, and the next run resumes after epoch 1."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _tiny_params(tmp_path, epochs=3)
    train = f"{sys.executable} -m resnetlab train --variant tiny --data {tiny_prepared} "
    train += "--metrics metrics/tiny --out"
    # A depth-8 checkpoint is ~0.95 MB: the first fits in 1.5 MB, a second beside it does not.
    out = _on_a_small_disk(
        "1500k",
        tmp_path / "models/tiny",
        f"{train} models/tiny 2>err; echo rc=$?; cat err; mkdir kept; cp -a models/tiny/. kept/",
        tmp_path,
    )
    rc, *stderr = out.splitlines()
    failure = [line for line in stderr if "error" in line or "Traceback" in line]
    assert rc == "rc=1", out
    assert len(failure) == 1, out
    assert re.fullmatch(
        r"resnetlab train: error: models/tiny/checkpoint\.pt: disk full while writing it "
        r"\(\d+ KiB free there\); its previous content is intact and nothing partial is left: "
        r"make room, then run again to resume after the last epoch saved",
        failure[0],
    ), failure
    assert "tiny epoch 1/3" in out and "tiny epoch 2/3" not in out
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["checkpoint.pt"]

    resumed = subprocess.run(
        [*train.split(), "kept"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "tiny: resuming after epoch 1 of 3" in resumed.stderr
    assert (tmp_path / "kept/model.pt").is_file()


def _prepared_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
@needs_tmpfs
def test_a_full_disk_during_prepare_keeps_the_previous_arrays_whole(
    tiny_archive, tiny_prepared, tmp_path
) -> None:
    """Before: `np.save`'s traceback, and new arrays beside the old `meta.json`. Now one line and
    the previous set, byte for byte, with no temporary folder beside it."""
    (tmp_path / "params.yaml").write_text("data: {val_size: 60, seed: 1}\n")
    old = _prepared_files(tiny_prepared)
    out = _on_a_small_disk(
        "2m",  # the old set (1.2 MB) fits; a second one beside it does not
        tmp_path / "disk",
        f"cp -a {tiny_prepared} disk/prepared && {sys.executable} -m resnetlab prepare "
        f"--raw {tiny_archive[0].parent} --out disk/prepared 2>err; echo rc=$?; cat err; "
        "mkdir kept; cp -a disk/. kept/",
        tmp_path,
    )
    rc, *stderr = out.splitlines()
    assert rc == "rc=1", out
    assert [line for line in stderr if "error" in line or "Traceback" in line] == [
        next(line for line in stderr if line.startswith("resnetlab prepare: error: disk/prepared:"))
    ], out
    assert "disk full while writing it" in out and "then run `dvc repro prepare` again" in out
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["prepared"]
    assert _prepared_files(tmp_path / "kept/prepared") == old


@pytest.mark.slow
def test_sigterm_during_prepare_leaves_the_previous_arrays_whole(tiny_prepared, tmp_path) -> None:
    """Before: SIGTERM while `resnetlab prepare` wrote left its new `.npy` files beside the old
    `meta.json`. Now the new set is written to a hidden folder and swapped in whole: stopped
    before the swap, the previous set is there byte for byte, and nothing else."""
    from cifar_archive import make_archive

    raw = tmp_path / "raw"
    raw.mkdir()
    make_archive(raw / "cifar-10-python.tar.gz", per_batch=3000)  # 46 MB to write: time to stop it
    (tmp_path / "params.yaml").write_text("data: {val_size: 1000, seed: 0}\n")
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    old = _prepared_files(prepared)
    cmd = [sys.executable, "-m", "resnetlab", "prepare", "--raw", str(raw), "--out", "prepared"]
    stage = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True)
    # The hidden folder exists while the new set is written, and is gone once swapped in.
    stderr = _sigterm_once(stage, lambda: list(tmp_path.glob(".prepared.*.tmp")), pause=True)
    assert stage.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert _prepared_files(prepared) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared", "raw"]

    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((prepared / "meta.json").read_text())["counts"]["val"] == 1000


def test_prepare_into_a_folder_of_other_files_is_refused_and_loses_nothing(
    tiny_archive, tmp_path, monkeypatch, capsys
) -> None:
    """The new set replaces the output folder whole, so a folder holding anything prepare does
    not write (`--out data` beside `data/raw`) is refused, not replaced."""
    from resnetlab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/notes.txt").write_text("mine\n")
    (tmp_path / "params.yaml").write_text("data: {val_size: 50}\n")
    argv = ["prepare", "--raw", str(tiny_archive[0].parent), "--out", "data"]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        "resnetlab prepare: error: data: holds notes.txt, raw, which this command does not "
        "write; give it a folder of its own\n"
    )
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["notes.txt", "raw"]
    assert (tmp_path / "data/notes.txt").read_text() == "mine\n"

"""Issue 30, "Rough edges": outputs a stopped stage leaves, and two runs into one folder. Real
processes and real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
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
    from resnetlab.data.cifar10 import CLASSES
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
    }
    report = EvalReport(**{name: full[name] for name in EvalReport.fields()})
    print("writing", flush=True)
    _write(Path(sys.argv[1]), "tiny-0", report, full, CLASSES, y_true, y_pred, rng.random(rows))
    """
)
OUTPUTS = ("eval.json", "per_class.csv", "confusion.csv", "predictions.csv")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow
def test_sigterm_during_evaluate_leaves_the_old_outputs_whole(tmp_path) -> None:
    """Before: SIGTERM mid-write left a 0-byte predictions.csv beside a new eval.json. Now every
    output is written atomically, eval.json last: the old files stay as they were, whole, and no
    temporary is left; a run that ends writes them all."""
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
    try:
        deadline = time.monotonic() + WAIT_S
        while not [p for p in out.glob(".predictions.csv.*.tmp") if p.stat().st_size]:
            assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()
            time.sleep(0.05)
        writer.send_signal(signal.SIGTERM)
        _, stderr = writer.communicate(timeout=WAIT_S)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary left
    for name in ("eval.json", "predictions.csv"):
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
    assert "tiny-0" in json.loads((out / "eval.json").read_text())
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
        "train": {"epochs": 50, "batch_size": 125, "lr": 0.05, "precision": "fp32"},
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

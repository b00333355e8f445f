"""The device check (`bench/gpu_check.py`) in its CPU smoke mode, run as a user runs it: every
step runs and reports, and a run stopped after epoch 1 resumes to the uninterrupted run's weights
bit for bit. The GPU run is the same code at full size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    res = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    check = json.loads(out.read_text())
    steps = ("env", "matmul", "syncs", "graph", "resume", "speed")
    assert not [s for s in steps if "error" in json.dumps(check[s])], json.dumps(check)
    assert check["env"]["device"] == "cpu" and check["env"]["auto.precision"] in ("bf16", "fp32")
    assert check["matmul"]["bf16 TFLOP/s"] > 0
    assert check["graph"] == {"graph breaks": 0, "compiled graphs": 1}  # no recompile
    assert check["resume"] == {"resumed after epoch": 1, "max |weight difference|": 0.0}
    rows = {row["mode"]: row for row in check["speed"]}
    assert set(rows) == {"eager", "compiled"} and all(r["images/s"] > 0 for r in rows.values())
    assert rows["eager"]["TFLOP/s"] > 0

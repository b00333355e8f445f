"""How many DVC queue workers one machine takes: `dvc queue start -j N` for several N, each over
the same batch of queued experiments, in a throwaway copy of this project.

    python bench/bench_queue.py --archive /path/to/cifar-10-python.tar.gz --jobs 1 2 4 8

The project: this checkout's dvc.yaml and src/, the shipped params.yaml shrunk to one small
variant (ResNet-8, `--epochs` epochs on a `--subset` of the training images), MLflow's default
local store (`mlflow.db`), the data prepared once and committed. For each N it queues
`--experiments` experiments (a grid over `train.lr`), starts N workers (with
`RESNETLAB_CPU_WORKERS` = min(N, cores), as docs/multi-gpu.md says), waits, and records the wall
time, how many succeeded and failed, and the first line of each failure's log; then it removes
them, so the next N starts from the same state. Prints one JSON line per N and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(root: Path, env: dict[str, str], *cmd: str) -> str:
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def project(root: Path, archive: Path, subset: int, epochs: int) -> dict[str, str]:
    """The throwaway project at `root`, its data prepared and committed; returns its env."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".gitignore", ".dvcignore", "published.yaml"):
        shutil.copy(REPO / name, root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    params["data"].update(url=str(archive), md5=md5, subset=subset)
    params["train"].update(epochs=epochs, device="cpu")
    params["variants"] = {"resnet8": {"model": {"name": "resnet_v1", "depth": 8}}}
    params["run_variants"] = ["resnet8"]
    params["evaluate"]["tta_variants"] = {}
    params["diagnose"]["gradient_depths"] = [8]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),
        "DVC_NO_ANALYTICS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own mlflow.db
    run(root, env, "git", "init", "-q")
    run(root, env, "dvc", "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    run(root, env, "dvc", "config", "plots.html_template", "plots/offline.html")
    run(root, env, "dvc", "repro", "-q", "prepare")
    run(root, env, "git", "add", "-A")
    run(root, env, "git", "commit", "-q", "-m", "bench project")
    return env


def one_round(root: Path, env: dict[str, str], jobs: int, experiments: int) -> dict:
    lrs = ",".join(f"{0.02 + 0.01 * i:g}" for i in range(experiments))
    cores = len(os.sched_getaffinity(0))
    env = {**env, "RESNETLAB_CPU_WORKERS": str(min(jobs, cores))}
    run(root, env, "dvc", "exp", "run", "--queue", "-S", f"train.lr={lrs}")
    start = time.perf_counter()
    run(root, env, "dvc", "queue", "start", "-j", str(jobs))
    while re.search(r"\b(Queued|Running)\b", run(root, env, "dvc", "queue", "status")):
        time.sleep(2)
    seconds = time.perf_counter() - start
    status = run(root, env, "dvc", "queue", "status")
    failed = re.findall(r"^\S+\s+(\S+)\s+.*\bFailed\b", status, flags=re.M)
    errors = []
    for name in failed:
        logs = subprocess.run(
            ["dvc", "queue", "logs", name], cwd=root, env=env, capture_output=True, text=True
        ).stdout
        lines = [line for line in logs.splitlines() if "ERROR" in line or "error" in line]
        errors.append(f"{name}: {(lines or ['(no error line)'])[0][:200]}")
    row = {
        "jobs": jobs,
        "experiments": experiments,
        "succeeded": len(re.findall(r"\bSuccess\b", status)),
        "failed": len(failed),
        "wall s": round(seconds, 1),
        "s per experiment": round(seconds / experiments, 1),
        "errors": errors,
    }
    run(root, env, "dvc", "queue", "remove", "--all")
    run(root, env, "dvc", "exp", "remove", "--all-commits")
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="cifar-10-python.tar.gz")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--subset", type=int, default=2000, help="training images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, help="where the project goes (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_queue-"))
    env = project(work / "project", args.archive.resolve(), args.subset, args.epochs)
    rows = []
    for jobs in args.jobs:
        row = one_round(work / "project", env, jobs, args.experiments)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| `-j` | succeeded | failed | wall time | per experiment |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['jobs']} | {r['succeeded']} | {r['failed']} | {r['wall s']} s "
            f"| {r['s per experiment']} s |"
        )
    return rows


if __name__ == "__main__":
    main()

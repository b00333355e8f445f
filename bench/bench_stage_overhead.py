"""What each stage costs beyond its own work (wall-clock minus compute), as a user runs it.

Runs `resnetlab prepare`, `resnetlab train` and `resnetlab evaluate` as separate processes (the
console script, as DVC runs them) on a small real or generated CIFAR-10 archive, and subtracts
from each one's wall-clock the time the stage itself reports for its work:

  prepare   the "prepared ... in X s" of its log (reading, splitting and writing the arrays)
  train     train.json's train_time_s (optimiser steps only; the per-epoch validation passes over
            the --val images are part of the overhead column)
  evaluate  the "forward passes X s" of its log (the test set, once)

What is left is the fixed cost: process start, imports, MLflow set-up and model logging, file
I/O. `import only` is a separate process that only imports the stage's module, for reference;
`libraries alone` one that only loads the libraries the stage cannot do without and opens the
MLflow store (`LIBRARIES`): the floor under its fixed cost.
Several source trees (`--src`, e.g. an older checkout's src/) are timed in interleaved rounds,
so that other load on the machine hits them alike; round 0 (which also creates the MLflow
database) is discarded and the medians of `--rounds` rounds are printed.

`--model-logging` adds a table: saving the trained model as an MLflow model folder (pt2, as the
train stage does) with explicit pip requirements and with MLflow inferring them; and the train
stage's own save timed three times in a fresh process (the first pays for torch.export's first
trace and MLflow's one scan of the installed packages, timed alone too).

    .venv/bin/python bench/bench_stage_overhead.py                          # generated data
    .venv/bin/python bench/bench_stage_overhead.py --archive /path/to/cifar-10-python.tar.gz
    .venv/bin/python bench/bench_stage_overhead.py --src /tmp/old/src --src src --model-logging
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "evaluate")
_STORE = (
    "from mlflow.tracking import MlflowClient; "
    "MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments(max_results=1)"
)
# What each stage cannot do without, loaded by a process that does nothing else: the floor under
# its fixed cost. train exports the model with torch.export (torch._dynamo) and saves it with
# mlflow.pytorch; train and evaluate open the MLflow store.
LIBRARIES = {
    "prepare": "import numpy",
    "train": "import os, torch, torchvision, torch._dynamo, torch.export, mlflow.pytorch; "
    + _STORE,
    "evaluate": f"import os, torch, mlflow; {_STORE}",
}


def generated_archive(path: Path, train: int, test: int, seed: int = 0) -> None:
    """A CIFAR-10 python archive of random images (the timings do not depend on the pixels)."""
    rng = np.random.default_rng(seed)

    def batch(n: int) -> bytes:
        labels = (np.arange(n) % 10).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        return pickle.dumps({b"labels": labels, b"data": data}, protocol=2)

    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    members = {"batches.meta": pickle.dumps({b"label_names": names}, protocol=2)}
    for i in range(1, 6):
        members[f"data_batch_{i}"] = batch(train // 5)
    members["test_batch"] = batch(test)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))


class Tree:
    """One source tree's project folder: params, archive, MLflow store, outputs."""

    def __init__(self, src: Path, root: Path, archive: Path, args: argparse.Namespace):
        self.src, self.root = src.resolve(), root
        root.mkdir(parents=True)
        (root / "raw").mkdir()
        os.symlink(archive, root / "raw" / "cifar-10-python.tar.gz")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"].update(val_size=args.val, subset=args.subset, seed=0)
        params["train"].update(epochs=args.epochs, batch_size=args.batch_size)
        params["variants"] = {"v": {"model": {"name": args.model, "depth": args.depth}}}
        params["run_variants"] = ["v"]
        params["evaluate"]["tta_variants"] = {}  # the shipped ones name variants left out here
        if args.precision:
            params["train"]["precision"] = args.precision
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.src),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        script = Path(sys.executable).parent / "resnetlab"
        self.resnetlab = [str(script)] if script.exists() else [sys.executable, "-m", "resnetlab"]

    def _run(self, cmd: list[str]) -> tuple[float, str]:
        start = time.perf_counter()
        res = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed in {self.root}:\n{res.stderr}")
        return wall, res.stderr

    def stage(self, name: str) -> dict[str, float]:
        """Run stage `name` once; wall, compute and overhead in seconds."""
        imported, _ = self._run([sys.executable, "-c", f"import resnetlab.pipeline.{name}"])
        libraries, _ = self._run([sys.executable, "-c", LIBRARIES[name]])
        if name == "prepare":
            shutil.rmtree(self.root / "prepared", ignore_errors=True)
            args = ["--params", "params.yaml", "--raw", "raw", "--out", "prepared"]
            wall, log = self._run([*self.resnetlab, "prepare", *args])
            compute = float(re.search(r"prepared .* in ([\d.]+) s", log)[1])
        elif name == "train":
            # A fresh run each time: a checkpoint left by the last one would be resumed.
            for folder in ("models", "metrics"):
                shutil.rmtree(self.root / folder, ignore_errors=True)
            args = ["--params", "params.yaml", "--variant", "v", "--data", "prepared"]
            args += ["--out", "models/v", "--metrics", "metrics/v"]
            wall, log = self._run([*self.resnetlab, "train", *args])
            summary = json.loads((self.root / "metrics/v/train.json").read_text())
            if "train_time_s" not in summary:  # an older tree: under the run's name, "v-0"
                (summary,) = summary.values()
            compute = summary["train_time_s"]
            self.train_images_per_s = summary["images_per_s"]
        else:
            args = ["--variant", "v", "--data", "prepared", "--model", "models/v"]
            wall, log = self._run([*self.resnetlab, "evaluate", *args, "--out", "metrics/v"])
            found = re.search(r"forward passes ([\d.]+) s \(([\d.]+) images/s\)", log)
            if found is None:  # an older tree that does not report it: time it as zero
                compute, self.eval_images_per_s = 0.0, float("nan")
            else:
                compute, self.eval_images_per_s = float(found[1]), float(found[2])
        return {
            "wall": wall,
            "compute": compute,
            "overhead": wall - compute,
            "import": imported,
            "libraries": libraries,
        }


# A fresh process that loads what the train stage loads, then saves a model folder with the train
# stage's own function three times: the first save pays for torch.export's first trace and for
# MLflow's one scan of the installed packages (`importlib.metadata.packages_distributions`,
# behind its check of the pip requirements), which later saves in the process do not. The scan
# is also timed alone, in the same way.
_FIRST_SAVE = """
import argparse, json, sys, tempfile, time
from importlib import metadata
from pathlib import Path
import numpy as np, torch, torchvision, torch._dynamo, torch.export, mlflow.pytorch
from bench_data_pipeline import bench_model
from resnetlab.evaluate.classifier import Classifier
from resnetlab.tracking import save_model_artifact
args = argparse.Namespace(model=sys.argv[1], depth=int(sys.argv[2]))
net = Classifier(bench_model(args), [0.5] * 3, [0.25] * 3)
example = np.zeros((2, 3, 32, 32), np.float32)
times = []
with tempfile.TemporaryDirectory() as tmp:
    for i in range(3):
        start = time.perf_counter()
        save_model_artifact(net, Path(tmp) / str(i), example, [str(c) for c in range(10)])
        times.append(time.perf_counter() - start)
start = time.perf_counter()
metadata.packages_distributions()
print(json.dumps({"saves": times, "scan": time.perf_counter() - start}))
"""


def first_save(model: str, depth: int) -> dict[str, Any]:
    """Seconds of the train stage's model saving in a fresh process: "saves" (first, second,
    third) and "scan" (one scan of the installed packages' metadata)."""
    res = subprocess.run(
        [sys.executable, "-c", _FIRST_SAVE, model, str(depth)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench")])},
    )
    if res.returncode != 0:
        raise SystemExit(f"timing the first model save failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def model_logging(rounds: int, model: str, depth: int) -> dict[str, list[float]]:
    """Seconds to save a model folder as the train stage does, with and without requirements."""
    import mlflow.pytorch
    import torch
    import torchvision
    from mlflow.models import infer_signature

    from resnetlab.evaluate.classifier import Classifier
    from resnetlab.models import build_model

    net = build_model(model, depth=depth, num_classes=10)
    net = Classifier(net, [0.5] * 3, [0.25] * 3).eval()
    example = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        signature = infer_signature(example, net(torch.from_numpy(example)).numpy())
    explicit = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]
    times: dict[str, list[float]] = {"explicit requirements": [], "inferred requirements": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):
            for label, reqs in zip(times, (explicit, None), strict=True):
                out = Path(tmp) / f"{r}-{len(times[label])}-{label[:3]}"
                start = time.perf_counter()
                mlflow.pytorch.save_model(
                    net,
                    str(out),
                    signature=signature,
                    input_example=example,
                    serialization_format="pt2",
                    pip_requirements=reqs,
                )
                if r > 0:  # round 0 warms up (imports, torch.export's first trace)
                    times[label].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", type=Path, help="cifar-10-python.tar.gz (default: generated)")
    p.add_argument("--src", type=Path, action="append", help="source tree(s) to time")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--subset", type=int, default=2000, help="training images (data.subset)")
    p.add_argument("--val", type=int, default=500, help="validation images (data.val_size)")
    p.add_argument("--test", type=int, default=10000, help="test images of a generated archive")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="resnet_v1")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--precision", help="train.precision (default: the shipped params')")
    p.add_argument("--model-logging", action="store_true", help="also time MLflow model saving")
    p.add_argument("--json", type=Path, help="write every time here")
    args = p.parse_args()
    srcs = args.src or [REPO / "src"]

    with tempfile.TemporaryDirectory(prefix="resnetlab-overhead-") as tmp:
        archive = args.archive.resolve() if args.archive else Path(tmp) / "generated.tar.gz"
        if not args.archive:
            generated_archive(archive, train=max(5 * args.subset, 5 * args.val), test=args.test)
        trees = [Tree(s, Path(tmp) / f"tree{i}", archive, args) for i, s in enumerate(srcs)]
        times = {(i, st): [] for i in range(len(trees)) for st in STAGES}
        ratios: dict[int, list[float]] = {i: [] for i in range(len(trees))}
        for r in range(args.rounds + 1):
            for stage in STAGES:  # in pipeline order; trees interleaved within each stage
                for i, tree in enumerate(trees):
                    result = tree.stage(stage)
                    if r > 0:
                        times[i, stage].append(result)
            if r > 0:
                for i, tree in enumerate(trees):
                    ratios[i].append(tree.eval_images_per_s / tree.train_images_per_s)
            print(f"round {r} done" + (" (warm-up, discarded)" if r == 0 else ""), file=sys.stderr)

        load = os.getloadavg()
        print(
            f"\nMedians of {args.rounds} rounds; {args.model}-{args.depth}, {args.subset} "
            f"training / {args.val} validation images, {args.epochs} epoch(s), batch "
            f"{args.batch_size}; archive: {args.archive or 'generated'}; load average at the "
            f"end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs\n"
        )
        print(
            "| stage | source | wall s | compute s | wall - compute s | import only s "
            "| libraries alone s |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        med = {}
        for stage in STAGES:
            for i, tree in enumerate(trees):
                rows = times[i, stage]
                med[i, stage] = {k: statistics.median(t[k] for t in rows) for k in rows[0]}
                m = med[i, stage]
                print(
                    f"| {stage} | {tree.src} | {m['wall']:.2f} | {m['compute']:.2f} | "
                    f"{m['overhead']:.2f} | {m['import']:.2f} | {m['libraries']:.2f} |"
                )
        print("\nevaluation images/s over training images/s (median of the per-round ratios):")
        for i, tree in enumerate(trees):
            print(f"  {tree.src}: {statistics.median(ratios[i]):.2f}x")

        logging_times = None
        if args.model_logging:
            logging_times = model_logging(args.rounds, args.model, args.depth)
            print("\n| MLflow model folder (pt2) | median s | all s |")
            print("|---|---:|---|")
            for label, t in logging_times.items():
                print(
                    f"| {label} | {statistics.median(t):.2f} | {', '.join(f'{x:.2f}' for x in t)} |"
                )
            first = first_save(args.model, args.depth)
            first_s, *later = first["saves"]
            print(
                f"\nthe train stage's save in a fresh process: first {first_s:.2f} s, then "
                f"{', '.join(f'{x:.2f}' for x in later)} s; one scan of the installed packages' "
                f"metadata (MLflow's requirement check, once per process): {first['scan']:.2f} s"
            )
            logging_times = {**logging_times, "fresh process": first}

        if args.json:
            record = {
                "args": {k: str(v) for k, v in vars(args).items()},
                "loadavg": load,
                "stages": {
                    f"{trees[i].src}:{st}": {"runs": times[i, st], "median": med[i, st]}
                    for (i, st) in times
                },
                "eval_over_train": {str(t.src): ratios[i] for i, t in enumerate(trees)},
                "model_logging": logging_times,
            }
            args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

"""The device check: what the CUDA path does on a real GPU, in a few minutes, in one command.

Runs from the repository root on a bare machine with torch, torchvision, numpy and pyyaml (no
MLflow, DVC or network): it drives the library under `src/` directly, on generated data of
CIFAR-10's shape (the real arrays are 163 MB). Each step has its own time limit; a step that
fails or runs out of time is recorded as such and the next one runs. Prints one line per result
and writes them all to `--out` (JSON):

- env: torch, the GPU, its compute capability, and what `device/precision/compile: auto`
  resolve to for ResNet-20's full recipe;
- matmul: the bf16 and fp32 (TF32) rates of large matrix products, the reference for the rest;
- syncs: host synchronisations per training step (`torch.cuda.set_sync_debug_mode`);
- graph: graph breaks and compiled graphs of a compiled training epoch (recompiles show as
  more than one graph);
- resume: a run interrupted after epoch 1 and resumed, against the same run uninterrupted;
- trainer: ResNet-20 through `Trainer.fit` as the train stage runs it, eager and compiled with
  CUDA graphs: images/s after the first epoch, the first epoch's extra seconds, what `auto`
  resolved to, CUDA graph captures Inductor skipped, and the last epoch's training loss of each
  (the two should train alike);
- speed: images/s of ResNet-20, ResNet-56 and ResNet-18, eager, compiled and compiled with CUDA
  graphs (`mode="reduce-overhead"`), with the compile seconds, the steps after which compiling
  pays, and each rate in TFLOP/s and as a share of the bf16 matmul rate.

`--smoke` runs the same steps on the CPU at toy sizes in seconds (`tests/test_gpu_check.py`
runs it in the suite, so the script cannot rot):

    python bench/gpu_check.py --out gpu_check.json            # on a GPU machine
    python bench/gpu_check.py --smoke --out /tmp/check.json   # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_throughput import matmul_rate  # noqa: E402
from estimate_study import TrainingStep, train_flops_per_image  # noqa: E402

from resnetlab.core.device import (  # noqa: E402
    PRECISION_NAMES,
    autocast_dtype,
    fast_cuda_math,
    resolve_device,
    use_compile,
    use_cuda_graphs,
)
from resnetlab.core.params import load_params  # noqa: E402
from resnetlab.data.prepared import Prepared, save_prepared  # noqa: E402
from resnetlab.train import loop  # noqa: E402
from resnetlab.train.trainer import Trainer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU run, or the CPU smoke run."""

    train: int  # generated training images
    val: int
    trainer_epochs: int  # epochs of each `trainer` run
    batches: int  # timed steps per speed row
    variants: tuple[str, ...]  # the speed rows' networks
    compile_rows: bool  # time the compiled rows (minutes of compiling on a CPU)
    limit_s: int  # per step, and per row of the speed step
    speed_budget_s: int  # rows starting after this are skipped
    backend: str  # torch.compile's: "inductor", or "eager" (Dynamo's tracing alone: seconds)


# On a GPU: about 3 minutes for the steps before `speed` (estimated: the `trainer` step compiles
# once), which then stops starting rows after 4.
GPU = Sizes(45_000, 5_000, 3, 200, ("resnet20", "resnet56", "resnet18"), True, 120, 240, "inductor")
# The smoke run traces with Dynamo but does not generate code: the same steps, in seconds.
SMOKE = Sizes(512, 128, 2, 2, ("resnet20",), True, 120, 120, "eager")


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise StepTimeout in this (main) thread after `seconds`."""

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def generated_data(folder: Path, sizes: Sizes) -> Path:
    """A prepared-data folder of CIFAR-10's shape and dtype: random pixels, balanced labels."""
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for split, n in (("train", sizes.train), ("val", sizes.val), ("test", sizes.val)):
        images[split] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels[split] = (np.arange(n) % 10).astype(np.int64)
    classes = tuple(f"class{i}" for i in range(10))
    save_prepared(Prepared(images, labels, classes, (0.5,) * 3, (0.25,) * 3), folder)
    return folder


def variant_for(name: str, device: torch.device, **train: Any) -> Any:
    """The shipped params.yaml's variant `name`, on `device`, with `train` overrides."""
    variant = load_params(REPO / "params.yaml").variant(name)
    overrides = {"device": str(device), **train}
    return dataclasses.replace(variant, train=dataclasses.replace(variant.train, **overrides))


def env(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    variant = variant_for("resnet20", device)
    cuda = device.type == "cuda"
    steps = variant.train.epochs * loop.steps_per_epoch(45_000, variant.train.batch_size, 1, cuda)
    amp = autocast_dtype("auto", device)
    out["auto.precision"] = PRECISION_NAMES[amp]
    compiles = use_compile("auto", device, steps, amp)
    out["auto.compile (resnet20, full recipe)"] = compiles
    out["auto.cuda_graphs"] = use_cuda_graphs("auto", device, compiles, distributed=False)
    return out


PRECISIONS = (("bf16", torch.bfloat16), ("fp32", torch.float32))


def matmul(device: torch.device) -> dict[str, float]:
    """Large matrix products' rates: bf16, and fp32 with TF32 on as training has it on CUDA."""
    n = 4096 if device.type == "cuda" else 256
    with fast_cuda_math(device):
        rates = {name: matmul_rate(dtype, device, n) for name, dtype in PRECISIONS}
    return {f"{name} TFLOP/s": round(rate / 1e12, 3) for name, rate in rates.items()}


class Bench(TrainingStep):
    """The shipped variant `name`'s training step on `device`: eager (`mode` None), or compiled
    in `mode` ("default", "reduce-overhead": CUDA graphs) with the sizes' backend."""

    def __init__(self, name: str, device: torch.device, sizes: Sizes, mode: str | None):
        def wrap(net: torch.nn.Module) -> torch.nn.Module:
            if sizes.backend == "inductor":
                return torch.compile(net, mode=mode)
            return torch.compile(net, backend=sizes.backend)

        graphs = mode == "reduce-overhead" and sizes.backend == "inductor"
        variant = variant_for(name, device)
        super().__init__(variant, device, sizes.batches, 0, wrap if mode else None, graphs)


def syncs(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    if device.type != "cuda":
        return {"syncs per step": "n/a (CUDA only)"}
    bench = Bench("resnet20", device, sizes, None)
    bench.epoch()  # warm-up
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            bench.epoch()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    found = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return {"syncs per step": round(len(found) / sizes.batches, 2), "first": found[:3]}


def graph(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    bench = Bench("resnet20", device, sizes, "default")
    bench.epoch()
    bench.epoch()
    return {
        "graph breaks": sum(counters["graph_break"].values()),
        "compiled graphs": counters["stats"]["unique_graphs"],
    }


class StopAfter:
    """A training listener that stops the run after `epoch`, as a kill would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None

    def on_checkpoint(self, event: Any) -> None:
        if event.rows[-1].epoch == self.epoch:
            raise KeyboardInterrupt


def resume(device: torch.device, data: Path, work: Path) -> dict[str, Any]:
    variant = variant_for(
        "resnet20", device, epochs=2, milestones=[0.5], compile=False, checkpoint_every_s=0
    )
    whole = Trainer(variant, data, work / "whole.pt")
    whole.fit()
    with contextlib.suppress(KeyboardInterrupt):
        Trainer(variant, data, work / "cut.pt").fit([StopAfter(1)])
    resumed = Trainer(variant, data, work / "cut.pt")
    resumed_from = resumed.resumed_epoch
    resumed.fit()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    return {"resumed after epoch": resumed_from, "max |weight difference|": diff}


def trainer(device: torch.device, data: Path, work: Path, sizes: Sizes) -> dict[str, Any]:
    """ResNet-20 through `Trainer.fit`, eager and (on CUDA) compiled with CUDA graphs, each mode
    under its own time limit."""
    from torch._dynamo.utils import counters

    modes: list[tuple[str, dict[str, Any]]] = [("eager", {"compile": False})]
    if device.type == "cuda":
        modes.append(("CUDA graphs", {"compile": True, "cuda_graphs": True}))
    out: dict[str, Any] = {}
    for label, overrides in modes:
        torch._dynamo.reset()
        counters.clear()
        variant = variant_for(
            "resnet20",
            device,
            epochs=sizes.trainer_epochs,
            milestones=[0.5],
            checkpoint_every_s=3600,
            **overrides,
        )
        try:
            with time_limit(sizes.limit_s * 3 // 2):  # compiling, then the epochs
                run = Trainer(variant, data, work / f"trainer-{label}.pt")
                run.fit()
        except Exception as exc:
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        rows = run.history().rows
        later = rows[1:] or rows
        later_s = sum(r.epoch_time_s for r in later) / len(later)
        out[label] = {
            "resolved": run.resolved,
            "images/s": round(sum(r.images_per_s for r in later) / len(later)),
            "first epoch extra s": round(rows[0].epoch_time_s - later_s, 1),
            # Captures Inductor gave up on (it then runs the compiled kernels ungraphed).
            "cudagraph skips": counters["inductor"]["cudagraph_skips"],
            "last train loss": round(rows[-1].train_loss, 4),
        }
    return out


def speed(device: torch.device, sizes: Sizes, bf16_rate: float) -> list[dict[str, Any]]:
    """One row per network and mode, each under its own time limit; rows beyond the step's
    budget are recorded as skipped rather than run."""
    modes: list[tuple[str, str | None]] = [("eager", None)]
    if sizes.compile_rows:
        modes += [("compiled", "default")]
        if device.type == "cuda":
            modes += [("CUDA graphs", "reduce-overhead")]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name in sizes.variants:
        eager: dict[str, float] = {}
        for label, mode in modes:
            row: dict[str, Any] = {"variant": name, "mode": label}
            if time.perf_counter() - start > sizes.speed_budget_s:
                row["skipped"] = f"past the step's {sizes.speed_budget_s} s"
            else:
                try:
                    with time_limit(sizes.limit_s):
                        row.update(speed_row(name, device, sizes, mode, eager, bf16_rate))
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def speed_row(
    name: str,
    device: torch.device,
    sizes: Sizes,
    mode: str | None,
    eager: dict[str, float],
    bf16_rate: float,
) -> dict[str, Any]:
    """Images/s of `name` in `mode`; the eager row fills `eager` (step seconds, FLOPs per
    step) for the rows after it."""
    torch._dynamo.reset()
    bench = Bench(name, device, sizes, mode)
    first = bench.epoch()  # kernels, autotuning, compiling
    steady = min(bench.epoch() for _ in range(2))
    step_s = steady / sizes.batches
    row: dict[str, Any] = {
        "images/s": round(bench.n / steady),
        "compile s": round(first - steady, 1),
    }
    if mode is None:
        flops = train_flops_per_image(bench.variant) * bench.cfg.batch_size
        eager.update(step_s=step_s, flops=flops)
    elif "step_s" in eager and step_s < eager["step_s"]:
        row["pays after steps"] = round((first - steady) / (eager["step_s"] - step_s))
    if "flops" in eager:
        rate = eager["flops"] / step_s
        row["TFLOP/s"] = round(rate / 1e12, 3)
        if bf16_rate:
            row["% of bf16 matmul"] = round(100 * rate / (bf16_rate * 1e12), 1)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes, seconds")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    results: dict[str, Any] = {"mode": "smoke" if args.smoke else "full"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = generated_data(work / "prepared", sizes)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("env", lambda: env(device)),
            ("matmul", lambda: matmul(device)),
            ("syncs", lambda: syncs(device, sizes)),
            ("graph", lambda: graph(device, sizes)),
            ("resume", lambda: resume(device, data, work)),
            ("trainer", lambda: trainer(device, data, work, sizes)),
            (
                "speed",
                lambda: speed(device, sizes, results["matmul"].get("bf16 TFLOP/s", 0.0)),
            ),
        ]
        for name, step in steps:
            start = time.perf_counter()
            try:
                with time_limit(sizes.limit_s):
                    results[name] = step()
            except Exception as exc:  # a failed step is a result too; the next one runs
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            results[f"{name} s"] = round(time.perf_counter() - start, 1)
            print(name, json.dumps(results[name]), flush=True)
            args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()

"""Training throughput: the usual PyTorch recipe against resnetlab's pipeline, its precision and
compilation settings, and the shipped defaults.

Every row trains the same model (ResNet-20 by default) from the same initial weights on the same
N = batches x batch_size CIFAR-10 training images with crop + flip augmentation:

1. the usual recipe: a map-style `Dataset` of PIL images through torchvision's
   `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize()`, a shuffling
   `DataLoader` with W workers, eager fp32 in the default (NCHW) memory layout;
2. resnetlab's `loop.train_epoch` (uint8 images resident on the device, batched augmentation,
   channels_last) in eager fp32;
3. (2) under `torch.compile`;
4. (2) with bf16 autocast;
5. (2) with both.

Rows run interleaved, one pass each per round in a rotating order, so drift and other processes'
load hit them alike; round 0 is a discarded warm-up (it also pays for compilation), then the
median of `--repeats` rounds is reported, in images/s and as a multiple of row 1. The script also
says which row `precision: auto` and `compile: auto` resolve to for a full training run on this
machine: the shipped default. resnetlab's rows run with glibc keeping freed memory, as every
stage does (`resnetlab.core.allocator`); the usual recipe then runs in a spawned process of its own,
with malloc as it comes (its passes still interleaved with the others). `--malloc-defaults` runs
every row in one process with malloc's defaults.

Two more columns say how close each row comes to what the device can compute: its rate in
GFLOP/s (images/s times the FLOPs of one image's training step: the convolutions' and matrix
products' forward and backward, as `torch.utils.flop_counter` counts them) and that rate as a
share of a large square matrix product's on this device in the row's precision (fp32, or bf16
for the bf16 rows), timed after the rounds: a reference for the device's arithmetic rate on
large regular work (a well-tuned convolution can exceed it).
Run `python bench/bench_throughput.py --help` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_pipeline import (
    CifarArrays,
    add_training_args,
    bench_model,
    bench_model_name,
    load_images,
    sync,
)

from resnetlab.core.allocator import keep_freed_memory
from resnetlab.core.config import AugmentConfig, DataConfig, TrainConfig
from resnetlab.core.device import autocast_dtype, resolve_device, use_compile
from resnetlab.data.datasets import CIFAR10
from resnetlab.data.normalize import Normalizer
from resnetlab.train import loop, schedule

USUAL = "torchvision Dataset + PIL transforms + DataLoader({w} workers), eager fp32"
ROWS = {
    # name: (compile, bf16)
    "resnetlab, eager fp32 (device-resident data, channels_last)": (False, False),
    "resnetlab + torch.compile": (True, False),
    "resnetlab + bf16 autocast": (False, True),
    "resnetlab + torch.compile + bf16": (True, True),
}


def usual_recipe(
    args: argparse.Namespace, device: torch.device, initial: dict[str, torch.Tensor]
) -> Callable[[int], float]:
    """The usual recipe's row: run(round) returning the seconds of one pass over the N images."""
    import torchvision.transforms as T

    n = args.batches * args.batch_size
    images, labels, mean, std = load_images(args, n)
    model = bench_model(args).to(device)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, schedule="constant")
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    loader = torch.utils.data.DataLoader(
        CifarArrays(images, labels, transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,  # start-up is paid in the warm-up round
        generator=torch.Generator().manual_seed(args.seed),
    )

    def usual(r: int) -> float:
        model.load_state_dict(initial)
        model.to(memory_format=torch.contiguous_format)
        optimizer = schedule.build_optimizer(model, cfg)
        sync(device)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - start

    return usual


def _usual_process(conn: Connection, args: argparse.Namespace, initial: dict) -> None:
    """A process of its own for the usual recipe (glibc's malloc as it comes): runs a pass per
    round number received, answers its seconds, stops at None."""
    usual = usual_recipe(args, resolve_device(args.device), initial)
    while (r := conn.recv()) is not None:
        conn.send(usual(r))


class UsualProcess:
    """The usual recipe's row, run in a spawned process: a fresh interpreter whose malloc has
    its defaults, while this process's rows keep freed memory as the stages do."""

    def __init__(self, args: argparse.Namespace, initial: dict[str, torch.Tensor]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: its DataLoader starts worker processes of its own.
        self.process = ctx.Process(target=_usual_process, args=(child, args, initial))
        self.process.start()

    def __call__(self, r: int) -> float:
        self.conn.send(r)
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it may have died already (its error is printed)
            self.conn.send(None)
        self.process.join()


def make_rows(
    args: argparse.Namespace, device: torch.device, usual_apart: bool
) -> dict[str, Callable[[int], float]]:
    """row name -> run(round) returning the seconds of one pass over the N images; with
    `usual_apart`, the usual recipe runs in a process of its own (`UsualProcess`)."""
    n = args.batches * args.batch_size
    images, labels, mean, std = load_images(args, n)
    torch.manual_seed(args.seed)
    model = bench_model(args).to(device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    crop_flip = AugmentConfig(crop_padding=4, flip=True)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, schedule="constant", augment=crop_flip)
    rows: dict[str, Callable[[int], float]] = {}
    usual = UsualProcess(args, initial) if usual_apart else usual_recipe(args, device, initial)
    rows[USUAL.format(w=args.workers)] = usual

    x_dev = torch.from_numpy(images).to(device)
    y_dev = torch.from_numpy(labels).to(device)
    normalize = Normalizer(mean, std, device, channels_last=True)
    for name, (compiled, bf16) in ROWS.items():
        # Each row its own module: a compiled wrapper keeps its graphs between rounds.
        net = bench_model(args).to(device)
        net.to(memory_format=torch.channels_last)
        runner = torch.compile(net) if compiled else net
        amp = torch.bfloat16 if bf16 else None

        def run(r: int, net=net, runner=runner, amp=amp) -> float:
            net.load_state_dict(initial)
            optimizer = schedule.build_optimizer(net, cfg)
            scheduler = schedule.build_scheduler(optimizer, cfg, args.batches)
            generator = torch.Generator(device=device).manual_seed(args.seed + r)
            sync(device)
            start = time.perf_counter()
            loop.train_epoch(
                runner, optimizer, scheduler, x_dev, y_dev, cfg, normalize, generator,
                amp_dtype=amp,
            )  # fmt: skip
            sync(device)
            return time.perf_counter() - start

        rows[name] = run
    return rows


def full_run_steps(batch_size: int) -> int:
    """Optimiser steps of a full run of the shipped ResNet-20 recipe at `batch_size`: its epochs
    over the training split (50k minus the validation images); what `compile: auto` weighs."""
    split = CIFAR10.train_size - DataConfig().val_size
    return TrainConfig().epochs * loop.steps_per_epoch(split, batch_size, 1)


def shipped_row(device: torch.device, total_steps: int) -> str:
    """The ROWS entry that `precision: auto` + `compile: auto` choose here for a run of
    `total_steps` optimiser steps."""
    amp = autocast_dtype("auto", device)
    compiled = use_compile("auto", device, total_steps, amp)
    bf16 = amp == torch.bfloat16
    return next(name for name, spec in ROWS.items() if spec == (compiled, bf16))


def step_flops(args: argparse.Namespace) -> dict[str, float]:
    """FLOPs of one image's training step (forward and backward) of the bench's model, as
    `torch.utils.flop_counter` counts them (convolutions and matrix products; the precision and
    the memory layout do not change the count): "step" in all, and its "convolution forward"
    and "convolution backward"."""
    from torch.utils.flop_counter import FlopCounterMode

    model = bench_model(args)
    x = torch.zeros(args.batch_size, 3, 32, 32)
    y = torch.zeros(args.batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return {
        "step": counter.get_total_flops() / args.batch_size,
        "convolution forward": ops.get("aten.convolution", 0) / args.batch_size,
        "convolution backward": ops.get("aten.convolution_backward", 0) / args.batch_size,
    }


def matmul_rate(
    dtype: torch.dtype, device: torch.device, n: int = 2048, products: int = 10
) -> float:
    """FLOP/s of n x n matrix products in `dtype` on `device`, the best of 5 timings of
    `products` products: a reference for the device's rate on large regular work."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: the library's kernel selection, the caches
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(products):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * products / best


def measure(rows: dict[str, Callable[[int], float]], repeats: int) -> dict[str, list[float]]:
    names = list(rows)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds = rows[name](r)
            print(
                f"  round {r}{' (warm-up)' if r == 0 else ''}: {name}: {seconds:.1f} s", flush=True
            )
            if r:
                times[name].append(seconds)
    return times


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(p, batches=50)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the usual recipe")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every time and the environment here")
    p.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="every row in one process with glibc's malloc as it comes (default: resnetlab's "
        "rows keep freed memory, as every stage does; the usual recipe runs apart, as it comes)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # resnetlab's rows run as its stages do; the usual recipe then runs in a process of its own
    # with glibc's defaults, as it does without resnetlab.
    kept = False if args.malloc_defaults else keep_freed_memory()
    device = resolve_device(args.device)
    rows = make_rows(args, device, usual_apart=kept)
    n = args.batches * args.batch_size
    print(
        f"{len(rows)} rows, {n} images per pass, {args.repeats} timed rounds, {device}; "
        + (
            "resnetlab keeps freed memory, the usual recipe runs in a process of its own with "
            "malloc's defaults"
            if kept
            else "every row in this process, with malloc's defaults"
        )
    )
    usual = next(iter(rows.values()))
    try:
        times = measure(rows, args.repeats)
    finally:  # else a failed row would leave the usual recipe's process waiting, and us on it
        if isinstance(usual, UsualProcess):
            usual.close()
    base = statistics.median(times[next(iter(rows))])
    # at the shipped recipe's batch size, which --batch-size need not be
    default = shipped_row(device, full_run_steps(TrainConfig().batch_size))
    model = bench_model_name(args)
    print(f"\n{model}, batch {args.batch_size}, {n} images, median of "
          f"{args.repeats} interleaved rounds, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    flops = step_flops(args)["step"]
    references = {
        bf16: matmul_rate(torch.bfloat16 if bf16 else torch.float32, device)
        for bf16 in (False, True)
    }
    print("| pipeline | images/s | vs the usual recipe | GFLOP/s | of the matmul rate |")
    print("|---|---:|---:|---:|---:|")
    summary: dict[str, Any] = {}
    for name, secs in times.items():
        med = statistics.median(secs)
        label = f"{name} **(shipped default)**" if name == default else name
        rate = flops * n / med
        reference = references[ROWS.get(name, (False, False))[1]]
        cells = f"{n / med:.0f} | {base / med:.2f}x | {rate / 1e9:.0f} | {rate / reference:.0%}"
        print(f"| {label} | {cells} |")
        summary[name] = {
            "seconds": secs,
            "images_per_s": n / med,
            "speedup": base / med,
            "flop_per_s": rate,
        }
    print(
        f"\none image's training step: {flops / 1e6:.0f} MFLOP (convolutions and matrix products, "
        f"forward and backward); 2048 x 2048 matrix products on {device}: "
        f"{references[False] / 1e9:.0f} GFLOP/s in fp32, {references[True] / 1e9:.0f} in bf16"
    )
    if args.json:
        env = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "step_flops_per_image": flops,
            "matmul_flop_per_s": {"fp32": references[False], "bf16": references[True]},
        }
        args.json.write_text(
            json.dumps({"env": env, "rows": summary, "default": default}, indent=2)
        )


if __name__ == "__main__":
    main()

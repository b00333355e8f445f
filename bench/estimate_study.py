"""How long would the study take here? Measures each variant's training throughput and derives
the time per variant and seed.

For every variant of params.yaml (or those named with --variants) it builds the model, then runs
the real `loop.train_epoch` (the variant's own batch size, augmentation, precision and
channels_last) over --batches batches of random uint8 images on the device, after a warm-up
pass, and reports images/s. The time of one run of the variant is then an ESTIMATE:
epochs x training images / images/s (validation passes, which cost about a tenth of an epoch's
forward work, are left out). Times per seed; multiply by the number of `seeds`.

`--flops` measures nothing on a device: it counts each variant's training FLOPs per image
(`torch.utils.flop_counter`: the convolutions' and matrix products' forward and backward) and
the whole run's, for a device not at hand; `--assume-tflops R` turns them into times at an
achieved rate of R TFLOP/s, an assumption the output names.
Run `python bench/estimate_study.py --help` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_pipeline import sync

from resnetlab.core.device import autocast_dtype, resolve_device, use_compile, use_cuda_graphs
from resnetlab.core.params import load_params
from resnetlab.data.datasets import CIFAR10
from resnetlab.data.normalize import Normalizer
from resnetlab.models import build_model
from resnetlab.train import loop, schedule


def network(variant: Any) -> nn.Module:
    """`variant`'s network, untrained: ImageNet weights are not downloaded (the same network,
    the same speed and FLOPs)."""
    model_args = dict(variant.model.args)
    model_args.pop("pretrained", None)
    model_args.setdefault("num_classes", CIFAR10.num_classes)  # the benchmark's labels
    return build_model(variant.model.name, **model_args)


class TrainingStep:
    """`variant`'s real training step (`loop.train_epoch`: its batch size, augmentation,
    precision and channels_last) over `batches` batches of random uint8 images resident on
    `device`, at a constant learning rate so that every step does the same work. `wrap` is
    applied to the network before training (e.g. `torch.compile`); `cuda_graphs` says that it
    compiled to CUDA graphs. On CUDA the epoch is augmented before its first step, as the
    trainer does there."""

    def __init__(
        self,
        variant: Any,
        device: torch.device,
        batches: int,
        seed: int = 0,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        cuda_graphs: bool = False,
    ):
        cfg = variant.train
        self.cuda_graphs = cuda_graphs
        torch.manual_seed(seed)
        self.variant, self.device = variant, device
        self.net = network(variant).to(device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.model = wrap(self.net) if wrap else self.net
        self.cfg = dataclasses.replace(cfg, epochs=1, schedule="constant", warmup_epochs=0.0)
        self.n = batches * cfg.batch_size
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.images = torch.randint(0, 256, (self.n, 32, 32, 3), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, 10, (self.n,), device=device, generator=self.gen)
        self.normalize = Normalizer((0.5,) * 3, (0.25,) * 3, device, cfg.channels_last)
        self.optimizer = schedule.build_optimizer(self.net, self.cfg)
        self.scheduler = schedule.build_scheduler(self.optimizer, self.cfg, batches)
        self.amp = autocast_dtype(cfg.precision, device)

    def epoch(self) -> float:
        """Seconds of one pass over the images (every batch full: the same shape each step)."""
        sync(self.device)
        start = time.perf_counter()
        loop.train_epoch(
            self.model,
            self.optimizer,
            self.scheduler,
            self.images,
            self.labels,
            self.cfg,
            self.normalize,
            self.gen,
            amp_dtype=self.amp,
            augment_once=self.device.type == "cuda",
            cuda_graphs=self.cuda_graphs,
        )
        sync(self.device)
        return time.perf_counter() - start


def throughput(variant: Any, device: torch.device, batches: int, seed: int, n_train: int) -> float:
    """Training images per second of `variant` on `device` (random data, the real step);
    `n_train` training images per epoch decide, as in the train stage, whether it compiles."""
    cfg = variant.train
    steps = cfg.epochs * loop.steps_per_epoch(n_train, cfg.batch_size, 1, device.type == "cuda")
    compiles = use_compile(cfg.compile, device, steps, autocast_dtype(cfg.precision, device))
    graphs = use_cuda_graphs(cfg.cuda_graphs, device, compiles, distributed=False)
    mode = "reduce-overhead" if graphs else None
    wrap = functools.partial(torch.compile, mode=mode) if compiles else None
    step = TrainingStep(variant, device, batches, seed, wrap, graphs)
    step.epoch()  # a warm-up pass (kernels, allocator, compile), then the timed one
    return step.n / step.epoch()


def train_flops_per_image(variant: Any) -> float:
    """FLOPs of one training image of `variant`: forward and backward of its network, at its
    input size (CIFAR's 32x32; `resnet50_transfer` resizes to its `input_size` inside)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = network(variant)
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def flops_table(params: Any, names: Sequence[str], n_train: int, tflops: float | None) -> list:
    rows = []
    print(
        "| variant | GFLOP per training image | epochs | PFLOP per seed |"
        + (f" time at {tflops:g} TFLOP/s (assumed) |" if tflops else "")
    )
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if tflops else ""))
    for name in names:
        variant = params.variant(name)
        per_image = train_flops_per_image(variant)
        total = per_image * variant.train.epochs * n_train
        row = {"variant": name, "flops_per_image": per_image, "epochs": variant.train.epochs}
        row["flops_per_seed"] = total
        line = f"| {name} | {per_image / 1e9:.2f} | {variant.train.epochs} | {total / 1e15:.1f} |"
        if tflops:
            row["assumed_s_per_seed"] = total / (tflops * 1e12)
            line += f" {_hours(row['assumed_s_per_seed'])} |"
        rows.append(row)
        print(line, flush=True)
    total = sum(r["flops_per_seed"] for r in rows)
    summary = f"total per seed: {total / 1e15:.1f} PFLOP"
    if tflops:
        summary += f", {_hours(total / (tflops * 1e12))} at an assumed {tflops:g} TFLOP/s"
    print(summary)
    return rows


def _hours(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h {rest // 60:02d}m"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--variants", help="comma-separated variant names (default: all)")
    p.add_argument("--device", default=None, help="override train.device (e.g. cuda, cpu)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per variant")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--flops", action="store_true", help="count FLOPs instead of measuring")
    p.add_argument("--assume-tflops", type=float, help="with --flops: times at this rate")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    names = args.variants.split(",") if args.variants else list(params.variants)
    n_train = params.data.subset or CIFAR10.train_size - params.data.val_size
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    if args.flops:
        rows = flops_table(params, names, n_train, args.assume_tflops)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return rows
    rows = []
    print("| variant | device | batch | images/s (measured) | epochs | est. time per seed |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in names:
        variant = params.variant(name)
        device = resolve_device(args.device or variant.train.device)
        rate = throughput(variant, device, args.batches, seed=0, n_train=n_train)
        seconds = variant.train.epochs * n_train / rate
        row = {
            "variant": name,
            "device": str(device),
            "batch_size": variant.train.batch_size,
            "images_per_s": rate,
            "epochs": variant.train.epochs,
            "train_images": n_train,
            "estimated_s_per_seed": seconds,
        }
        rows.append(row)
        print(
            f"| {name} | {device} | {variant.train.batch_size} | {rate:,.0f} | "
            f"{variant.train.epochs} | {_hours(seconds)} |",
            flush=True,
        )
    total = sum(r["estimated_s_per_seed"] for r in rows)
    print(f"estimated total per seed: {_hours(total)} (x len(seeds) for the study)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()

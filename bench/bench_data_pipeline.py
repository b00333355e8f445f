"""How much does resnetlab's device-side data pipeline add to a training epoch?

Compares, on the same machine, the same model and the same N batches of CIFAR-10 training images:

1. model only: forward/backward/optimiser step on batches that were augmented and normalised
   beforehand and already sit on the device (the floor: no data work at all);
2. resnetlab: the real `loop.train_epoch` over exactly those N*batch images (uint8 on the
   device; indexing, batched crop/flip[/Cutout], normalisation, the model step and the engine's
   bookkeeping), without augmentation, with crop+flip, and with crop+flip+Cutout;
3. the usual torchvision pipeline: a `Dataset` returning PIL images through
   `Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize()])` and a
   shuffling `DataLoader` with W workers, feeding the same model step;
4. data only: (2)'s indexing + `augment_batch` and (3)'s DataLoader (+ copy to the device),
   without the model, in images/s: what bounds an epoch once the model step is fast (GPUs).

The issue's target: on the CPU, (2) costs at most 10% more than (1). Pipelines run interleaved
(one pass of each per round, in a rotating order, so drift hits them alike); the first round is a
discarded warm-up, and each figure is the median of `--repeats` rounds; overheads are medians of
the per-round ratios to (1). On the CPU every step is timed as well, and the median step of each
pipeline is compared too: it shrugs off bursts of load from other processes.
Run `python bench/bench_data_pipeline.py --help` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.core.config import AugmentConfig, TrainConfig
from resnetlab.core.device import autocast, autocast_dtype, resolve_device
from resnetlab.data.augment import augment_batch
from resnetlab.data.normalize import Normalizer
from resnetlab.data.prepared import load_prepared
from resnetlab.models import build_model
from resnetlab.train import loop, schedule

MODEL = "model only (pre-made batches)"
RESNETLAB = "resnetlab, crop+flip"
DATA_ONLY = "data only: "
ROTATE_SHIFT = "resnetlab, crop+flip+rotation+channel shift"


class CifarArrays(torch.utils.data.Dataset):
    """The usual map-style dataset: one PIL image per item, per-sample transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images = images  # N x 32 x 32 x 3 uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bench_model(args: argparse.Namespace) -> torch.nn.Module:
    """A fresh `--model`, built with `--depth` unless it is 0 (models without a depth argument,
    e.g. resnet18), with CIFAR-10's 10 outputs: the benchmarks' images are CIFAR-10's."""
    return build_model(args.model, num_classes=10, **({"depth": args.depth} if args.depth else {}))


def bench_model_name(args: argparse.Namespace) -> str:
    """`--model` as the tables name it: "resnet_v1-20", or "resnet18" when `--depth` is 0."""
    return f"{args.model}-{args.depth}" if args.depth else args.model


class Bench:
    """The model, its initial weights and one optimiser step, shared by every pipeline."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.device = device
        self.channels_last = not args.no_channels_last
        self.amp_dtype = autocast_dtype(args.precision, device)
        torch.manual_seed(args.seed)
        self.model = bench_model(args).to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        # A constant learning rate: every step of every pass does the same work.
        self.cfg = TrainConfig(
            epochs=1,
            batch_size=args.batch_size,
            schedule="constant",
            device=str(device),
            precision=args.precision,
        )
        self.steps = args.batches

    def fresh(self) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        """The initial weights and a new optimiser/scheduler: every run trains the same way."""
        self.model.load_state_dict(self.initial)
        optimizer = schedule.build_optimizer(self.model, self.cfg)
        scheduler = schedule.build_scheduler(optimizer, self.cfg, self.steps)
        return self.model, optimizer, scheduler

    def step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
        """One training step, as `loop.train_epoch` does it, minus the data and bookkeeping."""
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum") * (1.0 / len(y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@dataclass
class Timing:
    seconds: float  # one run, end to end
    steps: list[float] = field(default_factory=list)  # per-step seconds, where recorded


class Clock:
    """Times one run; with `per_step`, also each step (on the CPU every op is synchronous, so the
    time between two steps is exactly that step's cost)."""

    def __init__(self, device: torch.device, per_step: bool):
        self.device = device
        self.per_step = per_step

    def start(self) -> Clock:
        sync(self.device)
        self.steps: list[float] = []
        self.t0 = self.last = time.perf_counter()
        return self

    def tick(self, *_: Any) -> None:
        if self.per_step:
            now = time.perf_counter()
            self.steps.append(now - self.last)
            self.last = now

    def stop(self) -> Timing:
        sync(self.device)
        return Timing(time.perf_counter() - self.t0, self.steps)


Run = Callable[[int], Timing]


def make_pipelines(
    args: argparse.Namespace,
    bench: Bench,
    images: np.ndarray,
    labels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[dict[str, Run], list[Any]]:
    """name -> run(round), one pass over the N batches (`--data-passes` passes for the data-only
    runs); plus the DataLoaders, whose persistent workers live as long as they do."""
    import torchvision.transforms as T

    device, batch = bench.device, args.batch_size
    per_step = device.type == "cpu"
    n_images = len(images)
    x_dev = torch.from_numpy(images).to(device)
    y_dev = torch.from_numpy(labels).to(device)
    normalize = Normalizer(mean, std, device, bench.channels_last)
    no_aug = AugmentConfig(crop_padding=0, flip=False, cutout_size=0)
    crop_flip = AugmentConfig(crop_padding=4, flip=True, cutout_size=0)
    cutout = AugmentConfig(crop_padding=4, flip=True, cutout_size=args.cutout)
    # The write-ups' extra augmentations: a random rotation and a per-channel brightness shift.
    rotate_shift = AugmentConfig(
        crop_padding=4, flip=True, rotation=args.rotation, channel_shift=args.channel_shift
    )

    # (1) Pre-made, augmented, normalised batches on the device.
    gen = torch.Generator(device=device).manual_seed(args.seed)
    premade = [
        (augment_batch(x_dev[idx], crop_flip, normalize, gen), y_dev[idx])
        for idx in loop.batches(n_images, batch, gen, device, 1)
    ]
    # Warm-up: one step and one augmented batch (allocator, kernels, autocast caches).
    _, opt, _ = bench.fresh()
    bench.step(opt, *premade[0])
    augment_batch(x_dev[:batch], cutout, normalize, gen)
    sync(device)

    def model_only(r: int) -> Timing:
        _, optimizer, _ = bench.fresh()
        clock = Clock(device, per_step).start()
        for x, y in premade:
            bench.step(optimizer, x, y)
            clock.tick()
        return clock.stop()

    def resnetlab(aug: AugmentConfig) -> Run:
        cfg = TrainConfig(
            epochs=1,
            batch_size=batch,
            schedule="constant",
            augment=aug,
            device=str(device),
            precision=args.precision,
            channels_last=bench.channels_last,
        )

        def run(r: int) -> Timing:
            model, optimizer, scheduler = bench.fresh()
            generator = torch.Generator(device=device).manual_seed(args.seed + r)
            clock = Clock(device, per_step).start()
            loop.train_epoch(
                model,
                optimizer,
                scheduler,
                x_dev,
                y_dev,
                cfg,
                normalize,
                generator,
                amp_dtype=bench.amp_dtype,
                # Per-step times on the CPU, where the per-step .item() costs nothing extra;
                # elsewhere the engine's default (a host sync every 50 steps).
                sync_every=1 if per_step else 50,
                on_progress=clock.tick if per_step else None,
            )
            return clock.stop()

        return run

    def augment_only(aug: AugmentConfig) -> Run:
        def run(r: int) -> Timing:
            generator = torch.Generator(device=device).manual_seed(args.seed + r)
            clock = Clock(device, per_step=False).start()
            for _ in range(args.data_passes):
                for idx in loop.batches(n_images, batch, generator, device, 1):
                    _ = augment_batch(x_dev[idx], aug, normalize, generator), y_dev[idx]
            return clock.stop()

        return run

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    dataset = CifarArrays(images, labels, transform)
    memory_format = torch.channels_last if bench.channels_last else torch.contiguous_format
    loaders = []

    def torchvision(workers: int, with_model: bool) -> Run:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,  # start-up is paid in the discarded warm-up round
            generator=torch.Generator().manual_seed(args.seed),
        )
        loaders.append(loader)

        def run(r: int) -> Timing:
            optimizer = bench.fresh()[1] if with_model else None
            clock = Clock(device, per_step and with_model).start()
            for _ in range(1 if with_model else args.data_passes):
                for x, y in loader:
                    x = x.to(device, non_blocking=True, memory_format=memory_format)
                    y = y.to(device, non_blocking=True)
                    if optimizer is not None:
                        bench.step(optimizer, x, y)
                        clock.tick()
            return clock.stop()

        return run

    c = args.cutout
    pipelines: dict[str, Run] = {
        MODEL: model_only,
        "resnetlab, no augmentation": resnetlab(no_aug),
        RESNETLAB: resnetlab(crop_flip),
        f"resnetlab, crop+flip+cutout{c}": resnetlab(cutout),
        ROTATE_SHIFT: resnetlab(rotate_shift),
    }
    for w in args.workers:
        pipelines[f"torchvision DataLoader, workers={w}"] = torchvision(w, with_model=True)
    pipelines[f"{DATA_ONLY}resnetlab crop+flip"] = augment_only(crop_flip)
    pipelines[f"{DATA_ONLY}resnetlab crop+flip+cutout{c}"] = augment_only(cutout)
    pipelines[f"{DATA_ONLY}{ROTATE_SHIFT}"] = augment_only(rotate_shift)
    for w in args.workers:
        pipelines[f"{DATA_ONLY}torchvision, workers={w}"] = torchvision(w, with_model=False)
    return pipelines, loaders


def load_images(args: argparse.Namespace, n: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    if args.synthetic:
        rng = np.random.default_rng(args.seed)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.int64)
        x = images.reshape(-1, 3) / 255.0
        return images, labels, x.mean(0).tolist(), x.std(0).tolist()
    if not (Path(args.data) / "meta.json").exists():
        sys.exit(f"{args.data}: no prepared data; pass --data DIR (from `resnetlab prepare`)")
    data = load_prepared(Path(args.data), splits=("train",))
    images, labels = data.images["train"], data.labels["train"]
    if len(images) < n:
        sys.exit(f"{args.data}: {len(images)} training images, the benchmark needs {n}")
    # A contiguous copy of the first n: the device pipeline and the Dataset see the same images.
    return np.ascontiguousarray(images[:n]), labels[:n].copy(), list(data.mean), list(data.std)


def summarise(runs: dict[str, list[Timing]], n: int, data_passes: int) -> dict[str, Any]:
    """Medians per pipeline; overheads as medians of per-round ratios to the model-only run."""
    floor = [t.seconds for t in runs[MODEL]]
    base = [t.seconds for t in runs[RESNETLAB]]
    floor_steps = [s for t in runs[MODEL] for s in t.steps]
    floor_step = statistics.median(floor_steps) if floor_steps else None
    floor_best = min(floor_steps) if floor_steps else None
    results: dict[str, Any] = {}
    for name, timings in runs.items():
        secs = [t.seconds for t in timings]
        e: dict[str, Any] = {"seconds": secs, "median_s": statistics.median(secs)}
        passes = data_passes if name.startswith(DATA_ONLY) else 1
        e["images_per_s"] = passes * n / e["median_s"]
        if not name.startswith(DATA_ONLY):
            e["overhead_vs_model"] = statistics.median(
                t / f - 1 for t, f in zip(secs, floor, strict=True)
            )
            e["ratio_vs_resnetlab"] = statistics.median(
                t / b for t, b in zip(secs, base, strict=True)
            )
            steps = [s for t in timings for s in t.steps]
            if steps and floor_step:
                e["step_median_ms"] = 1000 * statistics.median(steps)
                e["step_overhead_vs_model"] = statistics.median(steps) / floor_step - 1
                # The fastest step: an estimate of the cost on an otherwise idle machine.
                e["step_min_ms"] = 1000 * min(steps)
                e["step_min_overhead_vs_model"] = min(steps) / floor_best - 1
        results[name] = e
    return results


def print_table(results: dict[str, Any], args: argparse.Namespace, device: torch.device) -> None:
    print()
    print(
        f"{'pipeline':42} {'s/pass':>7} {'images/s':>9} {'vs model':>9} "
        f"{'ms/step':>8} {'vs model':>9} {'vs resnetlab':>12}"
    )
    print(f"{'':42} {'(median of passes)':>27} {'(median of steps)':>18}")
    for name, e in results.items():
        cells = [f"{name:42} {e['median_s']:7.3f} {e['images_per_s']:9.0f}"]
        cells.append(f"{e['overhead_vs_model']:+9.1%}" if "overhead_vs_model" in e else " " * 9)
        if "step_median_ms" in e:
            cells.append(f"{e['step_median_ms']:8.1f} {e['step_overhead_vs_model']:+9.1%}")
        else:
            cells.append(" " * 18)
        if "ratio_vs_resnetlab" in e:
            cells.append(f"{e['ratio_vs_resnetlab']:11.2f}x")
        print(" ".join(cells).rstrip())
    print(f"(data-only rows: {args.data_passes} passes over the same images, no model step)")

    rl = results[RESNETLAB]
    print("\nresnetlab crop+flip overhead over the model step, target <= 10% on the CPU:")
    print(f"  median of passes: {rl['overhead_vs_model']:+.1%}")
    if "step_overhead_vs_model" in rl:
        print(f"  median of steps:  {rl['step_overhead_vs_model']:+.1%}")
        print(
            f"  fastest step:     {rl['step_min_overhead_vs_model']:+.1%} "
            f"({rl['step_min_ms']:.1f} vs {results[MODEL]['step_min_ms']:.1f} ms)"
        )
    aug = results[f"{DATA_ONLY}resnetlab crop+flip"]["images_per_s"]
    for w in args.workers:
        e2e = results[f"torchvision DataLoader, workers={w}"]
        tv = results[f"{DATA_ONLY}torchvision, workers={w}"]["images_per_s"]
        step = (
            f", per step {e2e['step_median_ms'] / rl['step_median_ms']:.2f}x"
            if "step_median_ms" in e2e
            else ""
        )
        print(
            f"torchvision, workers={w}: epoch {e2e['ratio_vs_resnetlab']:.2f}x resnetlab's{step};"
            f" data alone {aug / tv:.1f}x slower ({tv:.0f} vs {aug:.0f} images/s on {device})"
        )


def add_training_args(p: argparse.ArgumentParser, batches: int) -> None:
    """The options every training bench takes: the images (`load_images`), the model
    (`bench_model`), the batches per pass (`batches` by default), the batch size, the device."""
    p.add_argument("--data", default="data/prepared", help="prepared CIFAR-10 (resnetlab prepare)")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images instead of --data")
    p.add_argument("--model", default="resnet_v1")
    p.add_argument("--depth", type=int, default=20, help="0: the model takes no depth argument")
    p.add_argument(
        "--batches", type=int, default=batches, help=f"batches per pass (default {batches})"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(p, batches=20)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up round")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--cutout", type=int, default=16, help="Cutout hole size of the Cutout variant")
    p.add_argument(
        "--rotation", type=float, default=10.0, help="max degrees of the rotation variant"
    )
    p.add_argument(
        "--channel-shift", type=float, default=0.05, help="its max per-channel brightness shift"
    )
    p.add_argument(
        "--workers",
        default=f"0,{min(os.cpu_count() or 1, 8)}",
        help="comma-separated DataLoader worker counts (default 0,min(cpus, 8))",
    )
    p.add_argument(
        "--data-passes", type=int, default=5, help="passes per data-only run (default 5)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if min(args.batches, args.repeats, args.batch_size, args.data_passes) < 1:
        p.error("--batches, --batch-size, --repeats and --data-passes must be >= 1")
    if args.precision == "fp16":
        p.error("--precision fp16 needs a GradScaler; use bf16 or fp32")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.batches * args.batch_size
    images, labels, mean, std = load_images(args, n)
    bench = Bench(args, device)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "amp_dtype": str(bench.amp_dtype),
        "channels_last": bench.channels_last,
    }
    print(
        f"{args.model}{f' depth={args.depth}' if args.depth else ''} on {env['device_name']} "
        f"({env['cpus']} cpus, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"autocast {env['amp_dtype']}, channels_last {env['channels_last']}); "
        f"{args.batches} batches x {args.batch_size} = {n} "
        f"{'synthetic' if args.synthetic else 'CIFAR-10 training'} images per pass; "
        f"1 warm-up + {args.repeats} timed rounds",
        flush=True,
    )
    pipelines, loaders = make_pipelines(args, bench, images, labels, mean, std)
    runs: dict[str, list[Timing]] = {name: [] for name in pipelines}
    t0 = time.perf_counter()
    names = list(pipelines)
    for r in range(args.repeats + 1):
        # Each round starts one pipeline later, so no pipeline always follows the same one.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            timing = pipelines[name](r)
            if r > 0:  # round 0 is the warm-up
                runs[name].append(timing)
        done = "warm-up" if r == 0 else f"round {r}/{args.repeats}"
        print(f"  {done} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    pipelines.clear()  # the closures hold the loaders; persistent workers exit with them
    loaders.clear()
    results = summarise(runs, n, args.data_passes)
    print_table(results, args, device)
    report = {"args": {**vars(args), "json": str(args.json)}, "env": env, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

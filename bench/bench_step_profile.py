"""Where a training step's time goes: `torch.profiler` over one pass of `loop.train_epoch`.

Trains the bench's model (ResNet-20 by default) as the train stage does (uint8 images resident
on the device, batched crop + flip, channels_last, `--precision` and `--compile` resolved as the
stage resolves `train.precision` and `train.compile` for a full run) for a warm-up pass, which
also compiles, then profiles a second pass over the same `--batches` batches and sums each
operator's own time (time inside it, less the operators it calls) into a few parts:

  convolution forward / backward   the convolution kernels (oneDNN)
  compiled kernels                 the kernels `torch.compile` generated (batch norm, ReLU, the
                                   additions, forward and backward), named `..._cpp_fused_...`
  everything else                  the optimiser step, augmentation, indexing, autograd's and
                                   Python's bookkeeping

It also gives arithmetic rates: the convolutions' FLOPs (as `torch.utils.flop_counter` counts
them) over their own time, and the whole step's (convolutions and matrix products) over all
operators' time, each also as a share of the rate of 2048 x 2048 matrix products in the same
precision (`bench_throughput.matmul_rate`). The profiler adds some
time of its own; the shares are what the script is for.

The CPU only: on CUDA the kernels' names do not say which operator launched them.

    .venv/bin/python bench/bench_step_profile.py --data data/prepared
    .venv/bin/python bench/bench_step_profile.py --synthetic --model resnet18 --depth 0 --batches 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_pipeline import add_training_args, bench_model, bench_model_name, load_images, sync
from bench_throughput import full_run_steps, matmul_rate, step_flops

from resnetlab.core.allocator import keep_freed_memory
from resnetlab.core.config import AugmentConfig, TrainConfig
from resnetlab.core.device import autocast_dtype, resolve_device, use_compile
from resnetlab.data.normalize import Normalizer
from resnetlab.train import loop, schedule

PARTS = ("convolution forward", "convolution backward", "compiled kernels", "everything else")


def part(name: str) -> str:
    """The part of `PARTS` an operator's profiler event belongs to."""
    if "convolution_backward" in name:
        return "convolution backward"
    if "convolution" in name or name.startswith("mkldnn::_convolution"):
        return "convolution forward"
    # e.g. "graph_0_cpp_fused__native_batch_norm_legit_functional_..._3"
    if "cpp_fused" in name:
        return "compiled kernels"
    return "everything else"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(p, batches=20)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()  # as every stage does
    device = resolve_device(args.device)
    if device.type != "cpu":
        sys.exit(f"{device}: the profile's parts are the CPU's operators; run with --device cpu")
    # What the train stage resolves for a full run of the shipped recipe at this batch size.
    amp = autocast_dtype(args.precision, device)
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    setting = {"on": True, "off": False}.get(args.compile, "auto")
    compiled = use_compile(setting, device, full_run_steps(args.batch_size), amp)
    # Name the generated kernels in the profile (else their time hides in the compiled region).
    inductor_config.cpp.enable_kernel_profile = True

    n = args.batches * args.batch_size
    images, labels, mean, std = load_images(args, n)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)
    torch.manual_seed(args.seed)
    net = bench_model(args).to(device).to(memory_format=torch.channels_last)
    runner = torch.compile(net) if compiled else net
    cfg = TrainConfig(
        epochs=1,
        batch_size=args.batch_size,
        schedule="constant",
        augment=AugmentConfig(crop_padding=4, flip=True),
    )
    normalize = Normalizer(mean, std, device, channels_last=True)
    optimizer = schedule.build_optimizer(net, cfg)
    scheduler = schedule.build_scheduler(optimizer, cfg, 2 * args.batches)

    def one_pass(seed: int) -> float:
        generator = torch.Generator(device=device).manual_seed(seed)
        sync(device)
        start = time.perf_counter()
        loop.train_epoch(
            runner, optimizer, scheduler, x, y, cfg, normalize, generator, amp_dtype=amp
        )
        sync(device)
        return time.perf_counter() - start

    warm = one_pass(args.seed)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = one_pass(args.seed + 1)

    own: dict[str, float] = defaultdict(float)  # seconds
    for event in prof.key_averages():
        own[part(event.key)] += event.self_cpu_time_total / 1e6  # microseconds
    total = sum(own.values())
    flops = step_flops(args)
    reference = matmul_rate(amp or torch.float32, device)

    print(
        f"{bench_model_name(args)}, batch {args.batch_size}, {args.batches} batches, {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{'bf16 autocast' if precision == 'bf16' else 'fp32'}, "
        f"{'compiled' if compiled else 'eager'}"
    )
    print(f"warm-up pass {warm:.1f} s, profiled pass {seconds:.2f} s ({n / seconds:.0f} images/s)")
    print("| part | s | share | GFLOP/s over its own time | of the matmul rate |")
    print("|---|---:|---:|---:|---:|")
    rows = [(name, own[name], flops.get(name)) for name in PARTS]
    for name, secs, part_flops in [*rows, ("all operators", total, flops["step"])]:
        rate = part_flops * n / secs if part_flops and secs else None
        cells = f"{rate / 1e9:.0f} | {rate / reference:.0%}" if rate else "- | -"
        print(f"| {name} | {secs:.2f} | {secs / total:.0%} | {cells} |")
    print(
        f"\none image's step: {flops['step'] / 1e6:.0f} MFLOP (convolutions and matrix products); "
        f"2048 x 2048 matrix products in {precision}: {reference / 1e9:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()

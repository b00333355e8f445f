"""Does bf16 autocast train as well as fp32? The same short recipe in both precisions, over
several seeds, scored on the test set.

For each seed, and for fp32 and bf16 in turn, ResNet-20 (by default) is trained from the same
initial weights on the same `--images` training images (the first of the prepared train split)
in the same batch order with the same augmentation, for `--epochs` epochs of a one-cycle
schedule (the engine's own `train_epoch`), then scored on the whole test split in fp32. Printed:
test accuracy per seed and precision, mean ± sample std per precision, and the difference of the
means with two standard errors of it (Welch): a difference inside that band is noise.
Run `python bench/bench_precision_parity.py --help` for the options.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_pipeline import bench_model, bench_model_name

from resnetlab.core.config import TrainConfig
from resnetlab.data.normalize import Normalizer
from resnetlab.data.prepared import load_prepared
from resnetlab.evaluate.scoring import loss_and_accuracy, predict_logits
from resnetlab.train import loop, schedule

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def train_and_score(args: argparse.Namespace, data, seed: int, amp: torch.dtype | None) -> float:
    device = torch.device("cpu")
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule="onecycle",
        nesterov=True,
        weight_decay=5e-4,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = bench_model(args).to(memory_format=torch.channels_last)
    optimizer = schedule.build_optimizer(model, cfg)
    steps = loop.steps_per_epoch(args.images, cfg.batch_size, 1)
    scheduler = schedule.build_scheduler(optimizer, cfg, steps)
    normalize = Normalizer(data.mean, data.std, device)
    x = torch.from_numpy(data.images["train"][: args.images])
    y = torch.from_numpy(data.labels["train"][: args.images])
    for epoch in range(1, args.epochs + 1):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loop.train_epoch(
            model, optimizer, scheduler, x, y, cfg, normalize, generator, amp_dtype=amp
        )
    logits = predict_logits(
        model, torch.from_numpy(data.images["test"]), normalize, 1000, amp_dtype=None
    )
    return loss_and_accuracy(logits, torch.from_numpy(data.labels["test"]))[1]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/prepared", help="prepared CIFAR-10")
    p.add_argument("--model", default="resnet_v1")
    p.add_argument("--depth", type=int, default=20, help="0: the model takes no depth argument")
    p.add_argument("--images", type=int, default=10_000, help="training images used")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="one-cycle peak learning rate")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", type=Path, help="write the accuracies here")
    args = p.parse_args(argv)
    data = load_prepared(Path(args.data), splits=("train", "test"))
    results: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for seed in args.seeds:
        for name, amp in PRECISIONS.items():
            start = time.perf_counter()
            accuracy = train_and_score(args, data, seed, amp)
            results[name].append(accuracy)
            seconds = time.perf_counter() - start
            print(f"seed {seed} {name}: test accuracy {100 * accuracy:.2f}% ({seconds:.0f} s)")

    model = bench_model_name(args)
    print(
        f"\n{model}, {args.images} training images, {args.epochs} epochs "
        f"one-cycle (peak lr {args.lr}), batch {args.batch_size}, seeds {args.seeds}"
    )
    print("| precision | test accuracy, mean ± std | per seed |\n|---|---:|---|")
    for name, accs in results.items():
        per_seed = ", ".join(f"{100 * a:.2f}" for a in accs)
        print(f"| {name} | {_mean_std(accs)} | {per_seed} |")
    a, b = results["bf16"], results["fp32"]
    diff = 100 * (statistics.mean(a) - statistics.mean(b))
    if len(a) > 1:
        se = 100 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
        verdict = "within noise" if abs(diff) <= 2 * se else "outside noise"
        print(f"\nbf16 - fp32: {diff:+.2f} points (2 standard errors: {2 * se:.2f}): {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "accuracy": results}, indent=2
            )
        )


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.2f}%"
    return f"{mean:.2f}% ± {100 * statistics.stdev(values):.2f}%"


if __name__ == "__main__":
    main()

"""Data-only cost of the batched augmentations: crop + flip, + Cutout 16, + rotation 10 degrees
and channel shift 5%, through `augment_batch` on 20 batches of 128 random uint8 images on the
CPU, interleaved, median of 6 timed rounds after a warm-up; prints images/s and each
configuration's cost relative to crop + flip. `python bench/bench_augment.py`
"""

from __future__ import annotations

import statistics
import time

import torch

from resnetlab.core.config import AugmentConfig
from resnetlab.data.augment import augment_batch
from resnetlab.data.normalize import Normalizer

torch.manual_seed(0)
x = torch.randint(0, 256, (20, 128, 32, 32, 3), dtype=torch.uint8)
norm = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), True)
cfgs = {
    "crop+flip": AugmentConfig(),
    "crop+flip+cutout16": AugmentConfig(cutout_size=16),
    "crop+flip+rotation10+shift0.05": AugmentConfig(rotation=10.0, channel_shift=0.05),
}
times = {k: [] for k in cfgs}
for r in range(7):
    for k, c in list(cfgs.items()) if r % 2 else list(cfgs.items())[::-1]:
        g = torch.Generator().manual_seed(r)
        t = time.perf_counter()
        for b in x:
            augment_batch(b, c, norm, g)
        times[k].append(time.perf_counter() - t)
for k, v in times.items():
    med = statistics.median(v[1:])
    print(
        f"{k}: {20 * 128 / med:,.0f} images/s (median of 6 rounds, {med * 1000 / 20:.2f} ms/batch)"
    )
base = times["crop+flip"][1:]
for k in cfgs:
    ratios = [a / b for a, b in zip(times[k][1:], base, strict=True)]
    print(f"{k}: {statistics.median(ratios):.2f}x crop+flip")

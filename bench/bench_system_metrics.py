"""What MLflow's system metrics (`log_system_metrics`, on in every training run) cost an epoch.

Two measurements on the same machine:

1. Direct: the monitor's work per sample, timed over `--samples` samples: psutil's CPU, memory,
   disk and network readings (`collect_metrics`), their aggregation, and the `log_batch` of the
   `system/*` metrics into a SQLite store, as the train stage's monitor does. Its share of an
   epoch is that cost divided by the sampling interval (MLflow's default: 10 s), whatever the
   epoch's length: the sampler thread's time, an upper bound on what it takes from training.
2. A/B: the same training passes (ResNet-20, `--batches` batches of 128 synthetic images, SGD,
   on the CPU) with the monitor off and on, interleaved in alternating order; the first round is
   a discarded warm-up; the result is the median of the per-round ratios. The monitor samples
   every `--ab-interval` s (default 1 s: ten times MLflow's rate, so that a pass of seconds sees
   several samples; at 10 s the share is a tenth of that). Whole-pass times on a loaded machine
   are noisy: read the direct figure as the answer and the A/B as its sanity check.

    python bench/bench_system_metrics.py            # ~1 min on 2 idle CPU cores, more when busy
    python bench/bench_system_metrics.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=12, help="batches per training pass")
    parser.add_argument("--repeats", type=int, default=4, help="timed A/B rounds")
    parser.add_argument("--samples", type=int, default=30, help="monitor samples timed")
    parser.add_argument("--ab-interval", type=float, default=1.0, help="sampling, A/B (s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    import torch
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

    from resnetlab.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench-sysmetrics-")
    uri = f"sqlite:///{Path(tmp.name) / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("bench")

    # 1. Direct: one sample = collect + aggregate + log_batch (what one monitor loop does).
    run_id = client.create_run(exp_id).info.run_id
    monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
    monitor.collect_metrics()  # psutil's first cpu_percent() call primes its counters
    costs = []
    for _ in range(args.samples):
        start = time.perf_counter()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        costs.append(time.perf_counter() - start)
    sample_s = statistics.median(costs)

    # 2. A/B over training passes.
    torch.manual_seed(0)
    model = build_model("resnet_v1", depth=20, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(args.batches, 128, 3, 32, 32)
    y = torch.randint(0, 10, (args.batches, 128))

    def one_pass() -> float:
        start = time.perf_counter()
        for i in range(args.batches):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
        return time.perf_counter() - start

    def monitored_pass() -> float:
        run = client.create_run(exp_id).info.run_id
        mon = SystemMetricsMonitor(run, sampling_interval=args.ab_interval, tracking_uri=uri)
        mon.start()
        try:
            return one_pass()
        finally:
            mon.finish()
            client.set_terminated(run)

    off, on = [], []
    for r in range(args.repeats + 1):
        order = [(off, one_pass), (on, monitored_pass)]
        if r % 2:
            order.reverse()
        times = {id(box): fn() for box, fn in order}
        if r == 0:
            continue  # warm-up
        for box, _ in order:
            box.append(times[id(box)])
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    epoch_s = statistics.median(off)
    result = {
        "sample_ms": round(1000 * sample_s, 3),
        "share_at_10s": sample_s / 10.0,
        "share_at_ab_interval": sample_s / args.ab_interval,
        "pass_off_s": off,
        "pass_on_s": on,
        "pass_median_off_s": epoch_s,
        "pass_median_on_s": statistics.median(on),
        "ab_overhead": statistics.median(ratios) - 1,
        "ab_interval_s": args.ab_interval,
        "batches": args.batches,
        "env": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load": os.getloadavg(),
        },
    }
    print(f"monitor sample (psutil readings + log_batch to SQLite): {result['sample_ms']:.2f} ms")
    print(f"  share of training time at MLflow's 10 s interval: {100 * sample_s / 10:.3f}%")
    print(f"  at {args.ab_interval:g} s: {100 * result['share_at_ab_interval']:.3f}%")
    print(
        f"A/B, {args.batches} batches of 128, ResNet-20, CPU: off {epoch_s:.2f} s, on "
        f"{result['pass_median_on_s']:.2f} s (median of {args.repeats}); median per-round "
        f"overhead {100 * result['ab_overhead']:+.2f}% at {args.ab_interval:g} s sampling"
    )
    print(f"load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

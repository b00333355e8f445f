"""Run a study as a DVC experiment and keep what it produced as a committed record.

    python bench/record_study.py --out results/cpu-study -- \
        dvc exp run -n cpu-study -S 'run_variants=[plain20,plain56,resnet20,resnet56]' ...

Runs the command after `--` in the project root, stamps every DVC stage it starts ("Running
stage '...'") with the wall-clock, and then writes to --out:

- `README.md`: the command, the commit, the machine (CPU model, cores, memory, torch, the
  precision and compilation the runs resolved to), the wall-clock per stage and in total, the
  leaderboard, the measured-vs-published report with its claims, and the figures;
- copies of the compare stage's outputs (`leaderboard.{md,csv}`, `runs.csv`, `curves.csv`,
  `published_vs_measured.{md,csv}`, `figures/*.png`);
- `stage_times.csv` (stage, seconds), `machine.json`, `command.log` (the command's output)
  and `workspace.diff` (uncommitted edits the command ran with, e.g. a local `data.url`).

Nothing in the record is typed by hand: it is the pipeline's own output plus measurements of
the run. The command must end with the compare stage's reports in `reports/` (a `dvc exp run`
or `dvc repro` of the whole pipeline does).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
REPORTS = (
    "leaderboard.md",
    "leaderboard.csv",
    "runs.csv",
    "curves.csv",
    "published_vs_measured.md",
    "published_vs_measured.csv",
)
FIGURES = ("degradation.png", "test_accuracy.png")


def run_stamped(command: Sequence[str], cwd: Path, log_path: Path) -> tuple[list[dict], float]:
    """Run `command`, echoing and logging its output; returns (stages with their seconds, total
    seconds). A stage lasts until the next one starts or the command ends."""
    starts: list[tuple[str, float]] = []
    begin = time.monotonic()
    with (
        subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
        log_path.open("w") as log,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            stamped = f"{now - begin:8.1f}s {line}"
            sys.stdout.write(stamped)
            log.write(relative(stamped, cwd))
            match = STAGE_LINE.match(line)
            if match:
                starts.append((match.group(1), now))
        code = proc.wait()
    end = time.monotonic()
    if code != 0:
        raise SystemExit(f"the study command failed (exit {code}); see {log_path}")
    stages = [
        {"stage": name, "seconds": round((starts[i + 1][1] if i + 1 < len(starts) else end) - t, 1)}
        for i, (name, t) in enumerate(starts)
    ]
    return stages, end - begin


def relative(text: str, root: Path) -> str:
    """`text` with the project's absolute path written relative to it: the log of a record
    reads the same whichever folder the study ran in."""
    return text.replace(f"{root.resolve()}/", "").replace(str(root.resolve()), ".")


def machine(root: Path) -> dict[str, Any]:
    """What ran the study: CPU model and cores, memory, versions, and whether the CPU computes
    bf16 natively (what `precision: auto` keys on; each run logs its resolved precision and
    compilation as the MLflow params `resolved.precision` and `resolved.compile`)."""
    import torch

    from resnetlab.core.device import native_bf16

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(kib / 2**20, 1)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "native_bf16_cpu": native_bf16(torch.device("cpu")),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit,
        "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def write_record(
    out: Path, command: Sequence[str], stages: list[dict], total: float, info: dict, root: Path
) -> None:
    reports = root / "reports"
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    for name in REPORTS:
        shutil.copyfile(reports / name, out / name)
    for name in FIGURES:
        shutil.copyfile(reports / "figures" / name, out / "figures" / name)
    with (out / "stage_times.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["stage", "seconds"])
        writer.writeheader()
        writer.writerows(stages)
    (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")

    shell = " ".join(_quote(a) for a in command)
    changes = (
        ", with the uncommitted edits in [workspace.diff](workspace.diff)"
        if info.get("uncommitted_changes")
        else ""
    )
    rows = "\n".join(f"| `{s['stage']}` | {_minutes(s['seconds'])} |" for s in stages)
    published = (out / "published_vs_measured.md").read_text().split("\n", 1)[1].strip()
    text = f"""# Study record: `{_study_name(command) or out.name}`

Produced by `bench/record_study.py`; every number below comes from this run.

```sh
{shell}
```

- **Machine:** {info["cpu"]}, {info["cores"]} cores, {info["memory_gib"]} GiB,
  GPU: {info["gpu"] or "none"}; bf16 native on the CPU: {info["native_bf16_cpu"]}
- **Software:** torch {info["torch"]}, Python {info["python"]}, {info["os"]}
- **Code:** commit `{info["commit"][:12]}`{changes}; finished {info["finished_utc"]}
- **Wall-clock of the command:** {_minutes(total)}

## Wall-clock per stage

| stage | wall-clock |
|:---|---:|
{rows}

## Leaderboard

{(out / "leaderboard.md").read_text().strip()}

## Training and test error (He et al. 2015, Fig. 6)

![training and test error per epoch](figures/degradation.png)

![test accuracy](figures/test_accuracy.png)

## Measured vs published

{published}
"""
    (out / "README.md").write_text(text)


def _study_name(command: Sequence[str]) -> str | None:
    """The experiment's name in `dvc exp run -n NAME ...` (or --name), if the command gives one."""
    for i, arg in enumerate(command[:-1]):
        if arg in ("-n", "--name"):
            return command[i + 1]
    found = next((a for a in command if a.startswith("--name=")), None)
    return found.split("=", 1)[1] if found else None


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the record")
    p.add_argument("--root", type=Path, default=ROOT, help="project root (default: this one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the study command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the study command after --")
    out = args.out if args.out.is_absolute() else args.root / args.out
    out.mkdir(parents=True, exist_ok=True)
    # What the command ran on besides the commit: uncommitted edits (e.g. data.url pointing at
    # a local copy of the archive), kept in the record.
    diff = subprocess.run(
        ["git", "diff", "HEAD"], cwd=args.root, capture_output=True, text=True, check=True
    ).stdout
    (out / "workspace.diff").write_text(diff)
    stages, total = run_stamped(command, args.root, out / "command.log")
    info = {**machine(args.root), "uncommitted_changes": bool(diff)}
    write_record(out, command, stages, total, info, args.root)
    print(f"record -> {out}")


if __name__ == "__main__":
    main()

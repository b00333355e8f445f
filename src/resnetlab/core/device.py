"""Which device, autocast precision and compilation a run uses: `train.device`,
`train.precision` and `train.compile`; and, for runs in parallel (`dvc queue start -j N`), a
device of its own for each.

Parallel runs with `device: auto` lease their device: each takes an exclusive lock file
(`fcntl.flock`, released by the OS when the process ends, even killed) under a machine-wide
folder, so N queue workers on N GPUs each get their own GPU, with no coordinator and nothing to
clean up. Every `auto` run on CUDA leases a GPU, named by its UUID, whichever index it has under
the worker's CUDA_VISIBLE_DEVICES; a run finding all taken waits for one to be released, also on
a machine with one GPU. On the CPU, where every run could use every core,
`RESNETLAB_CPU_WORKERS=N` splits the cores into N groups: each run leases a group, is pinned to
its cores and runs that many threads, so N workers do not fight over the same cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch

from resnetlab.core.errors import ResnetlabError

log = logging.getLogger(__name__)

CPU_WORKERS_ENV = "RESNETLAB_CPU_WORKERS"
# Machine-wide: the devices are the machine's, whichever project or clone a run comes from.
LOCK_DIR = Path(tempfile.gettempdir()) / "resnetlab-devices"
_POLL_S = 2.0  # how often a run waiting for a device tries again

# `compile: auto` compiles a run of at least this many optimiser steps. Measured on a 2-core
# CPU (ResNet-20, batch 256, bf16; docs/performance.md, "Compiling"): compiling costs ~24 s
# with an empty cache and every later step is ~5% faster (273 -> 260 ms), so it pays back after
# ~1,850 steps.
# On a CPU training in fp32 it never paid: compiled steps ran at -2% to +2% of eager ones in
# every run of the throughput bench, so `auto` does not compile them.
COMPILE_MIN_STEPS = 2000
# On CUDA, where compiling also captures the step in CUDA graphs (`use_cuda_graphs`). Estimated,
# not measured (no GPU has run this project yet): eager ResNet-20 at batch 128 launches ~300
# kernels a step, ~3 ms of host time at ~10 us each, for ~1 ms of GPU work, so a captured step
# saves ~2 ms; Inductor compiles forward and backward in ~40 s with an empty cache: paid back
# after ~20,000 steps. Deeper nets take longer to compile and save more per step alike. The
# paper recipes (~64,000 steps) compile, the `*_fast` ones (~5,000) stay eager.
# `bench/gpu_check.py` measures each network's "pays after steps", which replaces this.
CUDA_COMPILE_MIN_STEPS = 20_000
TRITON_MIN_CAPABILITY = (7, 0)  # Volta: the oldest GPU Triton generates code for


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda, then mps, then cpu; anything else is taken as given (and checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ResnetlabError(f"train.device={name!r} but CUDA is not available; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ResnetlabError(f"train.device={name!r} but MPS is not available; use auto or cpu")
    return device


def native_bf16(device: torch.device) -> bool:
    """Does `device` compute in bf16 natively (so that autocast to it is faster, not emulated)?

    CUDA: Ampere or newer. CPU: x86 with AVX-512 BF16 or AMX (oneDNN's bf16 kernels); elsewhere
    (AVX2-only x86, ARM) bf16 would be converted in software and run slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)  # this GPU's, not GPU 0's
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


# What each autocast dtype is called in `train.precision` and the runs' `resolved.precision`.
PRECISION_NAMES: dict[torch.dtype | None, str] = {
    None: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (None = plain fp32). `auto` = bf16 where the device
    computes it natively (parity with fp32 measured: docs/performance.md); on a GPU without it
    (T4, V100) fp16, which its tensor cores run, with a GradScaler (the trainer's) against
    underflowing gradients: the standard mixed-precision recipe; fp32 elsewhere."""
    if precision == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {name: dtype for dtype, name in PRECISION_NAMES.items()}[precision]


def use_compile(
    setting: bool | str,
    device: torch.device,
    total_steps: int,
    amp: torch.dtype | None,
    sync_batchnorm: bool = False,
) -> bool:
    """Whether to `torch.compile` a run of `total_steps` optimiser steps under autocast dtype
    `amp` (None = fp32): `auto` compiles on CUDA, and on the CPU in bf16, once the run is long
    enough to repay the compilation (CUDA_COMPILE_MIN_STEPS, COMPILE_MIN_STEPS); never a model
    with SyncBatchNorm (DDP on CUDA), where the graph breaks at every such layer and Inductor
    has open crash reports."""
    if setting != "auto":
        return bool(setting)
    if sync_batchnorm:
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < TRITON_MIN_CAPABILITY:
        return False  # Inductor's GPU code is Triton, which cannot target this GPU
    if device.type == "cuda":
        return total_steps >= CUDA_COMPILE_MIN_STEPS
    return device.type == "cpu" and amp == torch.bfloat16 and total_steps >= COMPILE_MIN_STEPS


def use_cuda_graphs(
    setting: bool | str, device: torch.device, compiled: bool, distributed: bool
) -> bool:
    """Whether the compiled training model also captures its forward and backward passes in
    CUDA graphs (`torch.compile(mode="reduce-overhead")`): one launch replays the step's
    hundreds of small kernels, whose launches otherwise keep a fast GPU waiting on the host for
    networks this small. Only a compiled model on CUDA can; `auto` also leaves DDP runs out,
    where the gradient all-reduce runs between the captured pieces."""
    if not compiled or device.type != "cuda":
        return False
    if setting == "auto":
        return not distributed
    return bool(setting)


@contextlib.contextmanager
def fast_cuda_math(device: torch.device) -> Iterator[None]:
    """On CUDA, for the duration of a training run: cuDNN picks its fastest convolution for the
    (fixed) shapes, and fp32 matmuls and convolutions use TF32 tensor cores. Restored after, so
    nothing else in the process is affected; a no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    flags = (torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32")
    flags += ((torch.backends.cuda.matmul, "allow_tf32"),)
    before = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, True)
        yield
    finally:
        for (owner, name), value in zip(flags, before, strict=True):
            setattr(owner, name, value)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; a no-op for plain fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Placement:
    """Where a run computes: its device, and for a leased CPU share its cores. Holds the lease's
    lock file open for as long as the process lives."""

    device: torch.device
    cores: tuple[int, ...] | None = None  # the CPU cores the process is pinned to, if any
    lock: IO[bytes] | None = field(default=None, repr=False)

    def describe(self) -> str:
        """As the run's `device` tag: `cuda:1`, `cpu`, or `cpu (cores 2-3)`."""
        if self.cores is None:
            return str(self.device)
        first, last = self.cores[0], self.cores[-1]
        return f"cpu (cores {first}-{last})" if last != first else f"cpu (core {first})"


def place(name: str, parallel_aware: bool = True) -> Placement:
    """The device for `train.device` = `name`. `auto` leases one where runs may compete for
    devices (module docstring); an explicit device, or `parallel_aware=False` (torchrun gives
    each process its device), is taken as it is."""
    device = resolve_device(name)
    if name != "auto" or not parallel_aware:
        return Placement(device)
    if device.type == "cuda":
        # Keyed by the physical GPU, not the index this process sees: workers started with
        # different CUDA_VISIBLE_DEVICES see one GPU under different indices. One GPU is leased
        # too: two runs on it would contend for its memory and each run slower, so a second
        # waits. A run meant to share it says so (`device: cuda`, never leased).
        slots = [f"cuda-{_gpu_id(i)}" for i in range(torch.cuda.device_count())]
        i, lock = _lease(slots)
        torch.cuda.set_device(i)  # its context, bf16 check and any stray tensor land there
        return Placement(torch.device("cuda", i), lock=lock)
    workers = _cpu_workers()
    if device.type == "cpu" and workers >= 2:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < workers:
            raise ResnetlabError(
                f"{CPU_WORKERS_ENV}={workers} but this process may use {len(cores)} core(s); "
                f"set it to at most {len(cores)}"
            )
        i, lock = _lease([f"cpu-{w}-of-{workers}" for w in range(workers)])
        share = tuple(cores[i * len(cores) // workers : (i + 1) * len(cores) // workers])
        os.sched_setaffinity(0, share)
        torch.set_num_threads(len(share))
        return Placement(device, cores=share, lock=lock)
    return Placement(device)


def _gpu_id(index: int) -> str:
    """The physical identity of visible GPU `index`: its UUID (what `nvidia-smi -L` prints), or
    the index where the driver reports none."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid) if uuid else f"index{index}"


def _cpu_workers() -> int:
    raw = os.environ.get(CPU_WORKERS_ENV, "")
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ResnetlabError(f"{CPU_WORKERS_ENV}={raw!r}: expected a whole number >= 1")
    return int(raw)


def _lease(slots: list[str]) -> tuple[int, IO[bytes]]:
    """The index of the first free slot, and its lock file (held open: the lease). Waits while
    every slot is taken."""
    import fcntl

    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i, slot in enumerate(slots):
            fh = (LOCK_DIR / f"{slot}.lock").open("ab")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            return i, fh
        if not waited:
            log.info("all %d devices are taken by other runs; waiting for one", len(slots))
            waited = True
        time.sleep(_POLL_S)

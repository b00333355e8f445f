"""Which device, autocast precision and compilation a run uses: `train.device`,
`train.precision` and `train.compile`."""

from __future__ import annotations

import contextlib

import torch

from resnetlab.errors import ResnetlabError

# `compile: auto` compiles a run of at least this many optimiser steps. Measured on a 2-core
# CPU (ResNet-20, batch 256, bf16): the first compiled step takes ~33 s and every later one is
# ~25% faster (319 -> 253 ms), so compiling pays back after ~500 steps; the margin covers the
# recompilations of a last partial batch and of deeper nets. On a GPU it pays back sooner.
COMPILE_MIN_STEPS = 2000


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
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (None = plain fp32). `auto` = bf16 where the device
    computes it natively (parity with fp32 measured: README, "Performance"), fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def use_compile(setting: bool | str, device: torch.device, total_steps: int) -> bool:
    """Whether to `torch.compile` a run of `total_steps` optimiser steps: `auto` compiles on
    CPU and CUDA once the run is long enough to repay the compilation (COMPILE_MIN_STEPS)."""
    if setting != "auto":
        return bool(setting)
    return device.type in ("cpu", "cuda") and total_steps >= COMPILE_MIN_STEPS


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; a no-op for plain fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""resnetlab.core.allocator: in a stage process glibc serves a batch's activations from its heap and
keeps them for the next pass, instead of mapping (and the kernel zeroing) fresh pages each time.

Each check runs in a fresh interpreter: malloc's settings are the process's, and a test must not
change pytest's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33 only (mallinfo2)"
)

# Then: malloc one 8 MiB block (ResNet-20's activation per layer at a batch of 256, bf16), see
# whether it got an mmap of its own, free it, and see how much more free memory the heap keeps.
PROBE = """
import ctypes, json
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
block = libc.malloc(8 << 20)
mapped = libc.mallinfo2().hblks - before.hblks
libc.free(block)
kept = libc.mallinfo2().fordblks - before.fordblks
print(json.dumps({"applied": applied, "mapped": mapped, "kept": kept}))
"""


KEEP = "from resnetlab.core.allocator import keep_freed_memory\napplied = keep_freed_memory()\n"


def probe(setup: str, env: dict[str, str] | None = None) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", setup + PROBE],
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.splitlines()[-1])


def test_glibc_defaults_map_each_large_block_afresh():
    # Why the module exists: without it, the block has an mmap of its own, returned on free.
    out = probe("applied = None\n")
    assert out["mapped"] == 1
    assert out["kept"] < 1 << 20


def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    out = probe(KEEP)
    assert out["applied"] is True
    assert out["mapped"] == 0
    assert out["kept"] > 6 << 20  # the block, less what the heap had free already


def test_a_users_own_malloc_settings_win():
    out = probe(KEEP, env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert out["applied"] is False
    assert out["mapped"] == 1


def test_every_stage_command_runs_with_freed_memory_kept(tmp_path):
    # A stage that fails on its first step (no params file) has already been set up.
    setup = (
        "from resnetlab import cli\n"
        f"code = cli.main(['download', '--params', {str(tmp_path / 'none.yaml')!r}, "
        f"'--out', {str(tmp_path / 'raw')!r}])\n"
        "assert code == 1, code\n"
        "applied = None\n"
    )
    out = probe(setup)
    assert out["mapped"] == 0
    assert out["kept"] > 6 << 20  # the block, less what the heap had free already

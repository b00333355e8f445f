"""The CIFAR depth rules (He et al. 2015, section 4.2), in one place.

A CIFAR net is a stem convolution, three stages of ``n`` blocks and a classifier, so its depth
(the weighted layers on the main path) is ``3 * layers_per_block * n + 2`` with ``n >= 1``:
``6n+2`` for basic blocks (two 3x3 convolutions) and ``9n+2`` for bottleneck blocks
(1x1-3x3-1x1). Every ``18k+2`` depth (20, 38, 56, 110, 164, ...) is both.

Pure Python on purpose: :mod:`resnetlab.core.config` imports it and must not import torch.
"""

from __future__ import annotations

__all__ = [
    "BASIC_DEPTHS",
    "BASIC_RULE",
    "BOTTLENECK_DEPTHS",
    "BOTTLENECK_RULE",
    "MAX_DEPTH",
    "MAX_DEPTH_RULE",
    "basic_blocks",
    "bottleneck_blocks",
    "too_deep",
]

# What the validation messages say is allowed ("expected <this>"); tests/test_depths.py checks
# that every depth listed here fits its rule.
BASIC_RULE = "6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"
BOTTLENECK_RULE = "9n+2 (11, 20, 29, 56, 110, 164, 1001, ...)"
BASIC_DEPTHS = f"a depth of the form {BASIC_RULE}"
BOTTLENECK_DEPTHS = f"a depth of the form {BOTTLENECK_RULE}"

# The deepest published CIFAR nets: ResNet-1202 (v1) and pre-act ResNet-1001 (v2). A deeper one
# would take minutes to build (a depth of 6e9 ran 96 s into a SystemError); refused up front.
MAX_DEPTH = 1202
MAX_DEPTH_RULE = f"a depth of at most {MAX_DEPTH} (ResNet-1202, the deepest published CIFAR net)"


def too_deep(depth: object) -> bool:
    """Whether ``depth`` is an integer beyond MAX_DEPTH (the rules above say nothing of size)."""
    return isinstance(depth, int) and not isinstance(depth, bool) and depth > MAX_DEPTH


def _blocks(depth: object, layers_per_block: int) -> int | None:
    """``n`` with ``depth == 3 * layers_per_block * n + 2`` and ``n >= 1``, else None."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        return None
    n, rest = divmod(depth - 2, 3 * layers_per_block)
    return n if rest == 0 and n >= 1 else None


def basic_blocks(depth: object) -> int | None:
    """Blocks per stage of a basic-block net of ``depth`` (6n+2), or None if it does not fit."""
    return _blocks(depth, 2)


def bottleneck_blocks(depth: object) -> int | None:
    """Blocks per stage of a bottleneck net of ``depth`` (9n+2), or None if it does not fit."""
    return _blocks(depth, 3)

"""The CIFAR depth rules (resnetlab.core.depths) and the light imports of depths and config."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from resnetlab.core.depths import BASIC_DEPTHS, BOTTLENECK_DEPTHS, basic_blocks, bottleneck_blocks


@pytest.mark.parametrize(
    ("depth", "basic", "bottleneck"),
    [
        # Hand-computed: basic 6n+2, bottleneck 9n+2, n >= 1.
        (8, 1, None),
        (11, None, 1),
        (20, 3, 2),
        (32, 5, None),
        (56, 9, 6),
        (110, 18, 12),
        (164, 27, 18),
        (1001, None, 111),
        (1202, 200, None),
        (9, None, None),
        (21, None, None),
        (2, None, None),  # n = 0: no blocks at all
        (0, None, None),
        (-4, None, None),  # -4 = 6 * -1 + 2
        (-7, None, None),  # -7 = 9 * -1 + 2
    ],
)
def test_blocks_per_stage(depth: int, basic: int | None, bottleneck: int | None) -> None:
    assert basic_blocks(depth) == basic
    assert bottleneck_blocks(depth) == bottleneck


@pytest.mark.parametrize("depth", ["20", 20.0, True, None, [20]])
def test_non_integers_fit_no_rule(depth: object) -> None:
    assert basic_blocks(depth) is None
    assert bottleneck_blocks(depth) is None


def test_the_depths_listed_in_the_messages_fit_their_rule() -> None:
    for description, blocks in [
        (BASIC_DEPTHS, basic_blocks),
        (BOTTLENECK_DEPTHS, bottleneck_blocks),
    ]:
        listed = [int(d) for d in re.findall(r"\b\d+\b(?!n)", description.split("(", 1)[1])]
        assert len(listed) >= 5, description
        assert listed == sorted(listed)
        assert all(blocks(d) is not None for d in listed), description


@pytest.mark.parametrize(
    "module", ["resnetlab.core.depths", "resnetlab.core.config", "resnetlab.core.params"]
)
def test_importing_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"

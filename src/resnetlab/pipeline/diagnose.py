"""`resnetlab diagnose`: per-layer gradient norms of freshly initialised plain and residual nets
(params: `diagnose.gradient_depths`, `diagnose.seed`) -> gradient_profile.csv.

An experiment of its own (He et al. 2015 argue deep plain nets are hard to optimise although
their gradients do not vanish); the compare stage draws the figure from this table.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from resnetlab.core.params import load_params

log = logging.getLogger(__name__)

COLUMNS = ("label", "layer_index", "layer", "grad_norm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params).diagnose
    write_gradient_profile(args.out, cfg.gradient_depths, cfg.seed)
    log.info("gradient profile of depths %s -> %s", list(cfg.gradient_depths), args.out)


def write_gradient_profile(path: Path, depths: Sequence[int], seed: int = 0) -> Path:
    """``path``: one row per (net, layer): label, layer_index (1 at the input), layer name,
    grad_norm. No depths: the header alone."""
    import pandas as pd

    from resnetlab.report.gradients import gradient_profiles

    profiles = gradient_profiles(depths, seed=seed)
    rows = [
        {"label": label, "layer_index": i, "layer": layer, "grad_norm": norm}
        for label, norms in profiles.items()
        for i, (layer, norm) in enumerate(norms.items(), start=1)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return path

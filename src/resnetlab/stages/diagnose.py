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

from resnetlab.config import load_params

log = logging.getLogger(__name__)

# The profile contrasts plain and residual nets of He et al.'s CIFAR depths.
GRADIENT_MODELS = ("plain", "resnet_v1")
GRADIENT_BATCH = 32  # images in the one random batch the gradients are taken on
COLUMNS = ("label", "layer_index", "layer", "grad_norm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params).diagnose
    write_gradient_profile(args.out, cfg.gradient_depths, cfg.seed)
    log.info("gradient profile of depths %s -> %s", list(cfg.gradient_depths), args.out)


def gradient_profiles(
    depths: Sequence[int], models: Sequence[str] = GRADIENT_MODELS, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per-layer gradient norms (input -> output) of freshly initialised ``models`` at ``depths``,
    on one seeded random batch of CIFAR-shaped images; keys like ``"plain-20"``."""
    import torch

    from resnetlab.diagnostics import gradient_norms
    from resnetlab.models import build_model

    torch.manual_seed(seed)
    x = torch.randn(GRADIENT_BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (GRADIENT_BATCH,))
    profiles = {}
    for depth in depths:
        for name in models:
            # Reseeded per model so each net's initial weights do not depend on the loop order.
            torch.manual_seed(seed)
            model = build_model(name, depth=depth)
            profiles[f"{name}-{depth}"] = gradient_norms(model, (x, y))
    return profiles


def write_gradient_profile(path: Path, depths: Sequence[int], seed: int = 0) -> Path:
    """``path``: one row per (net, layer): label, layer_index (1 at the input), layer name,
    grad_norm. No depths: the header alone."""
    import pandas as pd

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

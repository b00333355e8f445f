"""Test-time augmentation view sets compared on the validation split of trained models.

`evaluate.tta` offers none, flip (2 views), flip_translate (6 views: each flip also shifted
2 px up-left and down-right) and flip_grid (18 views: each flip shifted by -1, 0 or +1 px in
each direction). Other sets are conceivable: shifts of 1 px, both diagonals, the four axis
directions, a 3 x 3 grid of 2 px. This script scores the shipped sets and such candidates on
trained models, so that a set is chosen on held-out training images, as every other setting
is, and never on the test set: it reads the validation split by default, `--split test` only to
show what a choice made on validation does there.

Every view of the union of all sets runs once per model through `inference.Scorer`, as the
evaluate stage scores (the model's device, precision and eval batches); a set's accuracy
averages its views' logits, as the evaluate stage does. The table gives each model's accuracy,
the mean over models and each set's mean gain over flip_translate (the first set with shifts),
with the number of views: the evaluate stage's forward passes grow in proportion.

    .venv/bin/python bench/bench_tta_views.py --data data/prepared \
        --model models/resnet20_fast/seed0 --model models/resnet20_fast/seed1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from resnetlab.core.records import ModelRecord
from resnetlab.data.prepared import load_prepared
from resnetlab.evaluate.scoring import Scorer, loss_and_accuracy
from resnetlab.evaluate.tta import TTA_VIEWS, View, mirrored

BASELINE = "flip_translate"


# Candidates beside the shipped sets. Shifts stay within the training crops' +-4 px.
CANDIDATES: dict[str, tuple[View, ...]] = {
    "diagonal 1 px": mirrored([(0, 0), (-1, -1), (1, 1)]),
    "both diagonals 1 px": mirrored([(0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1)]),
    "both diagonals 2 px": mirrored([(0, 0), (-2, -2), (2, 2), (-2, 2), (2, -2)]),
    "axes 1 px": mirrored([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]),
    "axes 2 px": mirrored([(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2)]),
    "grid 3x3, 2 px": mirrored([(dy, dx) for dy in (0, -2, 2) for dx in (0, -2, 2)]),
}


def view_sets() -> dict[str, tuple[View, ...]]:
    return {**TTA_VIEWS, **CANDIDATES}


def score(model_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy of the model in `model_dir` on uint8 NHWC `images` under every view set."""
    scorer = Scorer.of(ModelRecord.read(model_dir / "model.pt"), model_dir / "model.pt")
    sets = view_sets()
    union = list(dict.fromkeys(v for views in sets.values() for v in views))
    logits = scorer.views(images.to(scorer.device), union)
    labels = labels.to(scorer.device)
    row = {v: i for i, v in enumerate(union)}
    return {
        name: loss_and_accuracy(logits[[row[v] for v in views]].mean(0), labels)[1]
        for name, views in sets.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="a train stage's output folder (model.pt), e.g. models/resnet20_fast/seed0",
    )
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--json", type=Path, help="write every accuracy here")
    args = p.parse_args()

    data = load_prepared(args.data, splits=(args.split,))
    images = torch.from_numpy(data.images[args.split])
    labels = torch.from_numpy(data.labels[args.split])
    results = {}
    for model_dir in args.model:
        results[str(model_dir)] = score(model_dir, images, labels)
        print(f"scored {model_dir}", flush=True)
    sets = view_sets()
    names = list(results)
    print(f"\nAccuracy (%) on the {args.split} split; gain = mean minus {BASELINE}'s mean\n")
    print("| views | set | " + " | ".join(names) + " | mean | gain |")
    print("|---:|---|" + "---:|" * (len(names) + 2))
    base = statistics.mean(results[n][BASELINE] for n in names)
    for name, views in sets.items():
        accs = [results[n][name] for n in names]
        mean = statistics.mean(accs)
        cells = " | ".join(f"{100 * a:.2f}" for a in accs)
        gain = 100 * (mean - base)
        print(f"| {len(views)} | {name} | {cells} | {100 * mean:.2f} | {gain:+.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "accuracy": results}, indent=2))


if __name__ == "__main__":
    main()

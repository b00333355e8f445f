"""`resnetlab prepare`: the selected dataset -> stratified train/val/test arrays (params: data.*:
the dataset, its folder and image size, the split and the subset)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from resnetlab.core.atomic import check_replaceable, cleanup_on_sigterm
from resnetlab.core.params import load_params
from resnetlab.data.prepared import PREPARED_FILES, Raw, prepare, save_prepared

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--raw", type=Path, required=True, help="folder holding the fetched archive")
    p.add_argument("--out", type=Path, required=True, help="folder for the prepared arrays")


def run(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    check_replaceable(args.out, PREPARED_FILES)  # before seconds of reading, not after
    start = time.perf_counter()
    archive = data.source
    raw: Raw
    if archive is not None:
        from resnetlab.data.archive import read_archive

        raw = read_archive(args.raw / archive.archive_name, archive)
    else:
        from resnetlab.data.folder import read_folder

        raw = read_folder(
            Path(data.path),
            image_size=data.image_size,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
        )
    prepared = prepare(
        raw, val_size=data.val_size, subset=data.subset, seed=data.seed, dataset=data.dataset
    )
    with cleanup_on_sigterm():  # SIGTERM mid-write: the previous arrays stay whole
        save_prepared(prepared, args.out)
    counts = ", ".join(f"{s} {len(y)}" for s, y in prepared.labels.items())
    log.info("prepared %s in %.1f s -> %s", counts, time.perf_counter() - start, args.out)

"""`resnetlab prepare`: archive -> stratified train/val/test arrays (params: data.val_size,
data.seed, data.subset)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from resnetlab.core.atomic import check_replaceable, cleanup_on_sigterm
from resnetlab.core.params import load_params
from resnetlab.data.archive import read_archive
from resnetlab.data.cifar10 import ARCHIVE_NAME
from resnetlab.data.prepared import PREPARED_FILES, prepare, save_prepared

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--raw", type=Path, required=True, help="folder holding " + ARCHIVE_NAME)
    p.add_argument("--out", type=Path, required=True, help="folder for the prepared arrays")


def run(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    check_replaceable(args.out, PREPARED_FILES)  # before seconds of reading, not after
    start = time.perf_counter()
    raw = read_archive(args.raw / ARCHIVE_NAME)
    prepared = prepare(raw, val_size=data.val_size, subset=data.subset, seed=data.seed)
    with cleanup_on_sigterm():  # SIGTERM mid-write: the previous arrays stay whole
        save_prepared(prepared, args.out)
    counts = ", ".join(f"{s} {len(y)}" for s, y in prepared.labels.items())
    log.info("prepared %s in %.1f s -> %s", counts, time.perf_counter() - start, args.out)

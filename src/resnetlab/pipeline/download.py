"""`resnetlab download`: fetch and verify an archive dataset's archive (params: data.dataset,
data.url, data.md5). A folder dataset has nothing to fetch: `prepare` reads it in place."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from resnetlab.core.params import load_params
from resnetlab.data.download import fetch_archive

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--out", type=Path, required=True, help="folder for the verified archive")


def run(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    archive = data.source
    if archive is None:
        # The stage's output folder must exist for DVC; archives fetched before stay in it.
        args.out.mkdir(parents=True, exist_ok=True)
        log.info(
            "data.dataset=%s is read in place from %s: nothing to fetch", data.dataset, data.path
        )
        return
    url, md5 = data.archive_source()
    fetch_archive(url, md5, args.out, archive)

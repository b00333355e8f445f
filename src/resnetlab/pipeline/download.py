"""`resnetlab download`: fetch and verify the CIFAR-10 archive (params: data.url, data.md5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetlab.core.params import load_params
from resnetlab.data.download import fetch_archive


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--out", type=Path, required=True, help="folder for the verified archive")


def run(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    fetch_archive(data.url, data.md5, args.out)

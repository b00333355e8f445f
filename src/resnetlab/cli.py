"""`resnetlab <stage>`: the pipeline stages as sub-commands (also `python -m resnetlab`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from resnetlab.errors import ResnetlabError

# Sub-command -> module under resnetlab.stages. Imported lazily: `resnetlab download` should not
# pay for importing MLflow.
STAGES = ("download", "prepare", "train", "evaluate", "compare", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab", description="Residual networks on CIFAR-10: the pipeline's stages."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        try:
            module = importlib.import_module(f"resnetlab.stages.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"resnetlab.stages.{name}":
                continue  # stage not part of this build
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        args._run(args)
    except ResnetlabError as exc:
        print(f"resnetlab {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resnetlab {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0

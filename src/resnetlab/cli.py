"""`resnetlab <stage>`: the pipeline stages as sub-commands (also `python -m resnetlab`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from resnetlab.core.allocator import keep_freed_memory
from resnetlab.core.errors import ResnetlabError

# Sub-command -> (its package, one-line help). Each lives in the module
# resnetlab.<package>.<name> (with `add_arguments(parser)` and `run(args)`): `pipeline` holds the
# DVC stages, `tools` the commands DVC never runs. A module is imported only when its command
# runs: torch, torchvision, scikit-learn and MLflow take seconds to import, and a command needs
# few of them.
COMMANDS = {
    "download": (
        "pipeline",
        "fetch the dataset's archive (data.dataset, data.url) and check data.md5",
    ),
    "prepare": ("pipeline", "split the archive into train/val/test arrays under --out"),
    "train": ("pipeline", "train one variant (resumes an interrupted run)"),
    "evaluate": ("pipeline", "evaluate a trained variant on the test set"),
    "diagnose": (
        "pipeline",
        "per-layer gradient norms of plain vs residual nets at initialisation",
    ),
    "compare": ("pipeline", "leaderboard and every figure, over all variants"),
    "predict": ("tools", "classify image files with a trained variant or an MLflow model"),
    "relog": ("tools", "record a trained variant in MLflow from its files (after tracking failed)"),
    "app": (
        "tools",
        "the web app (Streamlit): classify uploads, a model's mistakes, compare variants",
    ),
    "serve": (
        "tools",
        "serve a logged model over HTTP (MLflow's scoring server), after checking its files",
    ),
    "launch": (
        "tools",
        "what the MLproject's entry points run: check the variant and seed, name the run, "
        "dvc repro",
    ),
}


def command_module(name: str) -> str:
    """The module that implements sub-command `name`, e.g. `resnetlab.pipeline.train`."""
    return f"resnetlab.{COMMANDS[name][0]}.{name}"


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The parser; `stage`'s own arguments are added (importing its module) when given."""
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Residual networks on CIFAR-10, CIFAR-100 or your own images: the stages.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in COMMANDS.items():
        if name != stage:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(command_module(name))
        p = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the docstring's layout
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resnetlab")
    except PackageNotFoundError:
        from resnetlab import __version__

        return __version__


def _chosen_stage(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen_stage(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    keep_freed_memory()  # speed only: tensors' memory is reused, not mapped again each pass
    try:
        args._run(args)
    except ResnetlabError as exc:
        print(f"resnetlab {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resnetlab {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0

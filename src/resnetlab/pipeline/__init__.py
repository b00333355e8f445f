"""The DVC stages, one thin module each: parse arguments, do the I/O, call the library.

Each module exposes `add_arguments(parser)` and `run(args)`; `resnetlab.cli` wires them up and
holds their one-line help. `dvc.yaml` runs exactly these.
"""

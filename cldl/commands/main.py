"""The ``cldl`` command line: the top-level parser and the dispatch to one module per command.

Each command module of :mod:`cldl.commands` declares its own flags (``add_parser(subparsers)``) next to the code
that uses them (``run(args, reporter)``); :mod:`cldl.commands.common` holds what several share. Errors are one line
on stderr (``cldl: error: ...``) and a non-zero exit status (2 for usage, 1 otherwise); with ``--progress jsonl``
they are also sent as an ``{"event": "error"}`` line on stdout. Importing this module loads no torch (``cldl info``
reports on a missing one).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from ..events import Reporter
from . import ablate, datasets, demo, evaluate, info, models, prepare, sample, segment, synth, train
from .common import quiet_image_libraries, run_command, sigterm_stops, warn

#: The commands in the order ``cldl --help`` lists them.
COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "segment": segment,
    "prepare": prepare,
    "train": train,
    "evaluate": evaluate,
    "datasets": datasets,
    "synth": synth,
    "sample": sample,
    "models": models,
    "info": info,
    "ablate": ablate,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="cldl", description="Curriculum label distribution learning for 3D segmentation."
    )
    parser.add_argument("--version", action="version", version=f"cldl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cldl`` console script and ``python -m cldl``."""
    args = build_parser().parse_args(argv)
    reporter = Reporter(getattr(args, "progress", "none") if getattr(args, "progress", None) else "none")
    handler = COMMANDS[args.command].run  # looked up now: a test may replace a command's run
    if args.command not in ("models", "info"):
        quiet_image_libraries()
    with warnings.catch_warnings(), sigterm_stops():
        warnings.showwarning = lambda message, *_args, **_kw: warn(reporter, message)
        code = run_command(handler, args, reporter)
    if args.command == "train":
        from ..training.distributed import end_launched_process, launched_by_torchrun

        if launched_by_torchrun():
            end_launched_process(code)  # see its docstring: torch's gloo threads can abort interpreter finalisation
    return code


if __name__ == "__main__":
    sys.exit(main())

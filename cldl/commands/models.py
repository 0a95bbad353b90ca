"""``cldl models list``: the model registry."""

from __future__ import annotations

import argparse

from ..events import Reporter


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl models`` command and its flags."""
    models = subparsers.add_parser("models", help="the model registry")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    models_commands.add_parser("list", help="list registered models")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl models list``."""
    from ..registry import list_models

    for row in list_models():
        state = "available" if row["available"] else "not downloaded"
        default = "  (default)" if row["default"] else ""
        print(f"{row['name']}{default}  [{row['task']}, {row['source']}, {state}]\n    {row['description']}")
    return 0

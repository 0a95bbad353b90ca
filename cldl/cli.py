"""The old home of the command line, kept for console scripts installed before :mod:`cldl.commands` existed.

The ``cldl`` command is :func:`cldl.commands.main.main` (its parser and dispatch); each command lives in its own
module of :mod:`cldl.commands`. Only ``main`` is re-exported here.
"""

from .commands.main import main

__all__ = ["main"]

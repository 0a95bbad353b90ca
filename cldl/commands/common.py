"""What several ``cldl`` commands share: the ``--progress`` and ``--max-image-gb`` flags, argument types, the
error and warning lines, stop signals, output checks and strict JSON."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import defaults
from ..events import PROGRESS_MODES, Reporter
from ..files.atomic_writes import FileState


def add_progress(parser: argparse.ArgumentParser) -> None:
    """The shared ``--progress`` option."""
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="bar",
        help="bar: a progress bar on stderr; jsonl: one JSON event per line on stdout; none",
    )


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_image_limit(parser: argparse.ArgumentParser) -> None:
    """The shared ``--max-image-gb`` option."""
    parser.add_argument(
        "--max-image-gb",
        type=float,
        metavar="GB",
        help="refuse an image file whose header promises more voxel data than this, before reading it "
        f"(default {defaults.MAX_IMAGE_GB:g}; a small compressed file can inflate to gigabytes)",
    )


def quiet_image_libraries() -> None:
    """Keep ITK's and nibabel's own diagnostics (multi-line, naming C++ sources) off stderr: what matters about a
    file is reported as one ``cldl:`` line."""
    import logging

    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    logging.getLogger("nibabel").setLevel(logging.ERROR)


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM from a batch scheduler or ``kill``): the command stops as on Ctrl+C, cleaning up."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


def _raise_stopped(number: int, _frame: object) -> None:
    """The SIGTERM handler: stop the command where it is."""
    raise Stopped(number)


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Stopped` during the block (``cldl train`` and ``ablate`` put their graceful stop in
    its place while they train)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def warn(reporter: Reporter, message: Warning | str) -> None:
    """A Python warning as one line on stderr (and a ``log`` event with ``--progress jsonl``)."""
    if reporter.mode == "jsonl":
        reporter.emit("log", message=f"warning: {message}")
    print(f"cldl: warning: {message}", file=sys.stderr)


def run_command(
    handler: Callable[[argparse.Namespace, Reporter], int], args: argparse.Namespace, reporter: Reporter
) -> int:
    """Run a command; expected failures become one ``cldl: error:`` line and exit status 1."""
    try:
        return handler(args, reporter)
    except KeyboardInterrupt as exc:
        reporter.close()
        if isinstance(exc, Stopped):
            print(f"cldl: stopped by {exc}", file=sys.stderr)
            return 128 + exc.number  # the shell's status of a process ended by that signal (SIGTERM: 143)
        print("cldl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # every expected failure is one of these
        reporter.close()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reporter.mode == "jsonl":
            reporter.emit("error", message=message)
        print(f"cldl: error: {message}", file=sys.stderr)
        return 1
    finally:
        reporter.close()


def error_line(reporter: Reporter, message: str) -> None:
    """A failure that does not end the command (one case of many): a ``cldl: error:`` line and a ``log`` event."""
    if reporter.mode == "jsonl":
        reporter.emit("log", message=f"error: {message}")
    print(f"cldl: error: {message}", file=sys.stderr)


def check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> dict[Path, FileState]:
    """Refuse outputs that would replace an input, collide, exist (without overwrite) or cannot be written; returns
    their state now, which the final move checks (:mod:`cldl.files.atomic_writes`: nothing that appears meanwhile
    is replaced)."""
    from ..files.atomic_writes import file_states
    from ..files.images import IMAGE_SUFFIXES, ensure_writable, is_image_path

    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for path in outputs:
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a folder; give a file name such as {path / 'seg.nii.gz'}")
        if not is_image_path(path):
            raise ValueError(f"output {path}: unknown image format; use one of {', '.join(IMAGE_SUFFIXES)}")
        resolved = path.resolve()
        if resolved in resolved_inputs:
            raise ValueError(f"output {path} is one of the inputs; choose another file name")
        if resolved in seen:
            raise ValueError(f"output {path} is given twice")
        seen.add(resolved)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        ensure_writable(path)
    return file_states(outputs)


def clean_json(value: object) -> object:
    """NaN/Inf as null, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def json_float(value: object) -> object:
    """JSON fallback for numpy scalars."""
    return value.item() if hasattr(value, "item") else str(value)

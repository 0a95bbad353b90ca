"""Progress events shared by the CLI and the Slicer modules: a tqdm bar for people, JSON lines for programs.

Every JSON line is one object with an ``"event"`` key: ``progress`` (``stage``, ``done``, ``total``),
``metrics`` (``stage``, ``epoch``, values), ``log`` (``message``), ``result`` (paths and figures) or
``error`` (``message``).

A reader that goes away (Slicer closed) does not stop the engine: once stdout is a broken pipe, events are dropped
there and still appended to :attr:`Reporter.log_file` (the run folder's ``events.jsonl``) when one is set.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

PROGRESS_MODES = ("bar", "jsonl", "none")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/Inf become None, numpy/torch scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reporter:
    """Sends events to stdout as JSON lines, to a tqdm bar on stderr, or nowhere."""

    def __init__(self, mode: str = "bar", stream: TextIO | None = None) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream
        self._bar = None
        self._bar_stage: str | None = None
        #: JSON-lines file that also receives every event but ``progress`` (e.g. a run folder's ``events.jsonl``).
        self.log_file: Path | None = None
        #: Set once the output stream is gone (the reading process closed its end of the pipe).
        self.stream_gone = False

    def emit(self, event: str, **fields: Any) -> None:
        """Send one event."""
        line = json.dumps(_clean({"event": event, **fields})) + "\n"
        if self.log_file is not None and event != "progress":
            self._append_log(line)
        if self.stream_gone:
            return
        try:
            if self.mode == "jsonl":
                stream = self.stream or sys.stdout
                stream.write(line)
                stream.flush()
            elif self.mode == "bar":
                self._show(event, fields)
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed in this process
            self._lose_stream()

    def _append_log(self, line: str) -> None:
        """Append one event to :attr:`log_file` if its folder exists (a full disk must not end the run)."""
        try:
            if self.log_file.parent.is_dir():
                with self.log_file.open("a") as handle:
                    handle.write(line)
        except OSError:
            pass

    def _lose_stream(self) -> None:
        """Stop writing to a broken stream; point a broken stdout/stderr at the null device so exit flushes work."""
        self.stream_gone = True
        self._bar = None
        stream = self.stream or (sys.stdout if self.mode == "jsonl" else sys.stderr)
        try:
            fd = stream.fileno()
        except (OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)

    def progress(self, stage: str, done: int, total: int, **fields: Any) -> None:
        """Report ``done`` of ``total`` steps of ``stage``."""
        self.emit("progress", stage=stage, done=done, total=total, **fields)

    def log(self, message: str) -> None:
        """A human-readable message."""
        self.emit("log", message=message)

    def close(self) -> None:
        """Close a progress bar if one is open."""
        if self._bar is not None:
            try:
                self._bar.close()
            except (BrokenPipeError, ValueError):
                self._lose_stream()
            self._bar = None

    def _show(self, event: str, fields: dict[str, Any]) -> None:
        """Human output: a tqdm bar per stage, other events as lines on stderr."""
        stream = self.stream or sys.stderr
        if event == "progress":
            from tqdm import tqdm

            if self._bar is None or self._bar_stage != fields["stage"] or self._bar.total != fields["total"]:
                self.close()
                self._bar = tqdm(total=fields["total"], desc=fields["stage"], file=stream, leave=False)
                self._bar_stage = fields["stage"]
            self._bar.update(fields["done"] - self._bar.n)
            extra = {k: v for k, v in fields.items() if k not in ("stage", "done", "total")}
            if extra:
                self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in extra.items()})
            self._bar.refresh()
            if fields["done"] >= fields["total"]:
                self.close()
        elif event in ("log", "error"):
            self.close()
            stream.write(("error: " if event == "error" else "") + str(fields.get("message")) + "\n")
        elif event == "metrics":
            self.close()
            parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
            stream.write("  ".join(parts) + "\n")

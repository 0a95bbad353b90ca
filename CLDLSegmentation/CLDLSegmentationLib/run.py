"""One engine run seen from Slicer: status, progress, log, polling and the end of the run, shared by segmentation
jobs and training runs (which keep only what differs: their events and what a finished run yields).

``status`` goes ``running`` -> a final state set by :meth:`EngineRun._finish`. Any exception while handling
events (a bad event, a failed import, a callback that raises) also ends the run: ``failed`` with the error,
the engine killed, :meth:`EngineRun._cleanup` called (e.g. the temporary folder removed) and ``onFinished``
called, so that a run never stays ``running`` for ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .process import EXIT_EVENT, JsonLinesProcess, pollUntilDone


class EngineRun:
    """Base class of a ``cldl`` subprocess driven by :meth:`poll` (from a Qt timer) or :meth:`wait`."""

    logPrefix = "CLDL"

    def __init__(
        self,
        process: JsonLinesProcess,
        onProgress: Callable[[float, str], None] | None = None,
        onLog: Callable[[str], None] | None = None,
        onFinished: Callable[[Any], None] | None = None,
    ) -> None:
        self.process = process
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.status = "running"
        self.progress = 0.0
        self.stage = "starting"
        self.error: Exception | None = None
        self.started = time.monotonic()

    @property
    def running(self) -> bool:
        """Whether the run has not ended yet."""
        return self.status == "running"

    def poll(self) -> bool:
        """Handle new engine events (finishing the run after the last one); True while still running."""
        if self.status != "running":
            return False
        try:
            for event in self.process.poll():
                if event.get("event") == EXIT_EVENT:
                    self._end(self._finish)
                    break
                self._onEvent(event)
        except Exception as exc:  # any failure must end the run in a clear state
            self.process.cancel()
            self._end(self._fail, exc)
        return self.status == "running"

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Block until the run ends; raises its error if it failed, else returns :meth:`_outcome`."""
        pollUntilDone(self.poll, timeout, interval, self._onTimeout, f"{self.logPrefix} run still running")
        if self.error is not None:
            raise self.error
        return self._outcome()

    # -- for subclasses --------------------------------------------------------------------------------------------

    def _onEvent(self, event: dict[str, Any]) -> None:
        """One engine event before the exit (default: log and error lines)."""
        kind = event.get("event")
        if kind in ("log", "error"):
            self._log(("error: " if kind == "error" else "") + str(event.get("message", "")))

    def _finish(self) -> None:
        """Set the final status once the engine has exited (may raise: the run then fails)."""
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Release what the run holds (temporary files); called once, whatever the outcome."""

    def _outcome(self) -> Any:
        """What :meth:`wait` returns on success."""
        return self

    def _onTimeout(self) -> None:
        """What :meth:`wait` does before raising TimeoutError (default: leave the run going)."""

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        self.status, self.error = "failed", error
        try:  # the callbacks may be what failed: the run still ends
            self._log(f"error: {error}")
            self._report(self.progress, "failed")
        except Exception:  # noqa: BLE001
            logging.exception("%s: reporting the failure failed too", self.logPrefix)

    def _end(self, decide: Callable[..., None], *args: Any) -> None:
        """Run ``decide(*args)`` (it sets the final status), then clean up and tell the caller, whatever happens."""
        try:
            decide(*args)
        except Exception as exc:  # noqa: BLE001 - e.g. importing the results failed
            self._fail(exc)
        finally:
            if self.status == "running":
                self.status = "failed"
            try:
                self._cleanup()
            finally:
                if self.onFinished is not None:
                    self.onFinished(self)

    def _report(self, fraction: float, text: str) -> None:
        self.progress, self.stage = fraction, text
        if self.onProgress is not None:
            self.onProgress(fraction, text)

    def _log(self, message: str) -> None:
        logging.info("%s: %s", self.logPrefix, message)
        if self.onLog is not None:
            self.onLog(message)

"""Running the ``cldl`` engine out of process: JSON-lines events, stderr capture and process-tree cancel.

No Qt and no MRML here, so this runs (and is tested) in any Python. The engine prints one JSON object per line
on stdout (``--progress jsonl``): ``{"event": "progress" | "log" | "metrics" | "result" | "error", ...}``.
A reader thread parses the lines into a queue; :meth:`JsonLinesProcess.poll` hands the new events over in the
caller's thread (the Slicer main thread, from a timer), so callbacks may touch MRML nodes.

>>> process = JsonLinesProcess(engineCommand(["models", "list"]))
>>> process.start()
>>> returncode = process.wait()
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EventCallback = Callable[[dict[str, Any]], None]

#: Event added after the last line of a process: ``{"event": "exit", "returncode": N, "cancelled": bool}``.
EXIT_EVENT = "exit"
#: Whether processes are Windows processes (a module constant, so that tests exercise the Windows branches).
WINDOWS = os.name == "nt"
#: Windows process creation flags (``subprocess`` defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def popenOptions(newGroup: bool = True) -> dict[str, Any]:
    """``subprocess`` keywords for every process CLDL starts: no console window on Windows (``CREATE_NO_WINDOW``),
    and with ``newGroup`` its own process group (Windows) or session (elsewhere), so that the tree can be ended."""
    if WINDOWS:
        return {"creationflags": CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if newGroup else 0)}
    return {"start_new_session": True} if newGroup else {}


class ProcessError(RuntimeError):
    """An engine run that failed: the engine's message, its exit status and the tail of its stderr."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class CancelledError(RuntimeError):
    """The run was cancelled by the user."""


def engineRoot() -> Path:
    """The folder that holds the ``cldl`` package (inside the extension, or the development checkout)."""
    spec = importlib.util.find_spec("cldl")
    if spec is None or spec.origin is None:
        raise ProcessError("the cldl engine is not installed: reinstall the CLDL extension")
    return Path(spec.origin).resolve().parent.parent


def pythonExecutable() -> str:
    """The Python that runs the engine: ``$CLDL_PYTHON``, Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    override = os.environ.get("CLDL_PYTHON")
    if override:
        return override
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):  # inside the Slicer application
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def engineEnvironment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine subprocess: unbuffered output and the engine's folder on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(engineRoot())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def engineCommand(arguments: Sequence[str], python: str | None = None) -> list[str]:
    """``[python, -m, cldl, *arguments]`` as an argument list (never a shell string)."""
    return [python or pythonExecutable(), "-m", "cldl", *[str(a) for a in arguments]]


def parseEventLine(line: str) -> dict[str, Any]:
    """One stdout line as an event; anything that is not a JSON event becomes a ``log`` event."""
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            return event
    return {"event": "log", "message": text}


def _descendants(pid: int) -> list[int]:
    """Process ids of every descendant of ``pid`` (psutil if available, else /proc on Linux; may be empty)."""
    try:
        import psutil

        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    except ImportError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1:
            parents[int(fields[1])].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def killProcessTree(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Kill a process and all its descendants (grandchildren too), then reap it."""
    if process.poll() is not None and WINDOWS:
        return
    if WINDOWS:
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            **popenOptions(newGroup=False),
        )
    else:
        children = _descendants(process.pid)  # before killing: orphans are re-parented and lost to the scan
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the whole session/group started for the engine
        except (ProcessLookupError, PermissionError):
            pass
        for pid in children:  # descendants that left the group (setsid, start_new_session)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class JsonLinesProcess:
    """A subprocess whose stdout is JSON lines: start, poll events, wait, request a stop, or cancel the tree.

    Events are dicts; after the process ends, one last ``{"event": "exit", "returncode": N, "cancelled": bool}``.
    Lines on stderr are kept (the last ``stderrLines``) and also reported as ``log`` events with
    ``"stream": "stderr"``.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        onEvent: EventCallback | None = None,
        stderrLines: int = 200,
        stopFile: str | Path | None = None,
    ) -> None:
        self.command = [str(c) for c in command]
        self.stopFile = Path(stopFile) if stopFile is not None else None
        self.env = env
        self.cwd = str(cwd) if cwd is not None else None
        self.onEvent = onEvent
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self.events: list[dict[str, Any]] = []  # every event handed out by poll(), in order
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderrLines)
        self._threads: list[threading.Thread] = []
        self._exitSent = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> JsonLinesProcess:
        """Start the process (in its own process group, so that the whole tree can be cancelled)."""
        if self.process is not None:
            raise RuntimeError("process already started")
        kwargs = popenOptions(newGroup=True)
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as exc:
            raise ProcessError(f"cannot start {self.command[0]}: {exc.strerror or exc}") from None
        for target, stream in ((self._readStdout, self.process.stdout), (self._readStderr, self.process.stderr)):
            thread = threading.Thread(target=target, args=(stream,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _readStdout(self, stream) -> None:
        for line in stream:
            if line.strip():
                self._queue.put(parseEventLine(line))
        stream.close()

    def _readStderr(self, stream) -> None:
        for line in stream:
            text = line.rstrip("\n")
            if text.strip():
                self._stderr.append(text)
                self._queue.put({"event": "log", "message": text, "stream": "stderr"})
        stream.close()

    @property
    def running(self) -> bool:
        """Whether the process was started and its exit has not been reported yet."""
        return self.process is not None and not self._exitSent

    @property
    def returncode(self) -> int | None:
        """Exit status once finished."""
        return None if self.process is None else self.process.poll()

    @property
    def stderr(self) -> str:
        """The last lines the process wrote on stderr."""
        return "\n".join(self._stderr)

    def poll(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call (callback called for each), ending with ``exit`` when done."""
        new: list[dict[str, Any]] = []
        with self._lock:
            while True:
                try:
                    new.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if (
                self.process is not None
                and not self._exitSent
                and self.process.poll() is not None
                and not any(t.is_alive() for t in self._threads)
            ):
                while not self._queue.empty():  # lines that arrived while checking
                    new.append(self._queue.get_nowait())
                new.append({"event": EXIT_EVENT, "returncode": self.process.returncode, "cancelled": self.cancelled})
                self._exitSent = True
        new = [e for e in new if e is not None]
        self.events.extend(new)
        if self.onEvent is not None:
            for event in new:
                self.onEvent(event)
        return new

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int:
        """Block (polling events) until the process ends; returns its exit status."""
        if self.process is None:
            raise RuntimeError("process not started")

        def running() -> bool:
            if self.running:
                self.poll()
            return self.running

        pollUntilDone(running, timeout, interval, lambda: None, f"{self.command[:4]} still running")
        return self.process.returncode

    def requestStop(self, signalName: str = "SIGTERM") -> None:
        """Ask the engine to stop by itself: ``signalName`` to the whole process group, or on Windows create the
        stop file the engine polls (``stopFile``, e.g. ``cldl train --stop-file``; without one, a hard stop).

        The group, not the started process: inside Slicer that process is ``PythonSlicer``, a launcher that runs
        the real Python as a child and forwards no signal. The engine finishes its step, checkpoints and exits;
        the launcher simply dies. Windows has no such signal for a windowless process group (CTRL_BREAK_EVENT
        needs a console, which a process started from Slicer does not have), hence the file.
        """
        if self.process is None or self.process.poll() is not None:
            return
        if WINDOWS:
            if self.stopFile is None:
                self.cancel()
            else:
                self.stopFile.parent.mkdir(parents=True, exist_ok=True)
                self.stopFile.write_text("stop requested by CLDL\n")
            return
        number = getattr(signal, signalName)
        try:
            os.killpg(self.process.pid, number)  # start() made the process the leader of a new session/group
        except ProcessLookupError:
            pass
        except PermissionError:  # not our group (should not happen): at least the process itself
            self.process.send_signal(number)

    def cancel(self) -> None:
        """Kill the process and every process it started."""
        if self.process is None:
            return
        self.cancelled = True
        if self.process.poll() is None or not WINDOWS:
            killProcessTree(self.process)

    # -- results ---------------------------------------------------------------------------------------------------

    def errorMessage(self) -> str:
        """What went wrong, for people: the engine's error event, else its ``cldl: error:`` line, else stderr."""
        for event in reversed(self.events):
            if event.get("event") == "error" and event.get("message"):
                return str(event["message"])
        lines = list(self._stderr)
        for line in reversed(lines):
            if line.startswith("cldl: error:"):
                return line[len("cldl: error:") :].strip()
        if lines:
            return " | ".join(lines[-3:])
        return f"the engine stopped with exit status {self.returncode}"

    def result(self) -> dict[str, Any] | None:
        """The last ``result`` event, if any."""
        for event in reversed(self.events):
            if event.get("event") == "result":
                return event
        return None

    def raiseForStatus(self) -> None:
        """Raise :class:`CancelledError` or :class:`ProcessError` unless the process ended successfully."""
        if self.cancelled:
            raise CancelledError("cancelled by the user")
        code = self.returncode
        if code != 0:
            raise ProcessError(f"{self.errorMessage()} (exit status {code})", returncode=code, stderr=self.stderr)


def pollUntilDone(
    poll: Callable[[], bool],
    timeout: float | None,
    interval: float,
    onTimeout: Callable[[], None],
    stillRunning: str,
) -> None:
    """Block, calling ``poll`` every ``interval`` seconds while it returns True (the blocking twin of
    :func:`schedulePolling`); after ``timeout`` seconds call ``onTimeout`` and raise ``TimeoutError``
    (``"<stillRunning> after <timeout> s"``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while poll():
        if deadline is not None and time.monotonic() > deadline:
            onTimeout()
            raise TimeoutError(f"{stillRunning} after {timeout} s")
        time.sleep(interval)


def schedulePolling(poll: Callable[[], bool], singleShot: Callable[[int, Callable[[], None]], None], ms: int = 200):
    """Call ``poll`` every ``ms`` milliseconds through ``singleShot`` (e.g. ``qt.QTimer.singleShot``) while it
    returns True. Keeps this module free of Qt: the module file passes Qt's timer in."""

    def tick() -> None:
        if poll():
            singleShot(ms, tick)

    singleShot(ms, tick)

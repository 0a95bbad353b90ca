"""The subprocess runner shared by both Slicer modules: JSON-lines events, stderr and exit codes, tree cancel."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)

# isort: split
from CLDLSegmentationLib.process import (
    CancelledError,
    JsonLinesProcess,
    ProcessError,
    engineCommand,
    engineEnvironment,
    engineRoot,
    parseEventLine,
    schedulePolling,
)


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc, else kill 0)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc").is_dir():
        try:
            text = stat.read_text()
        except OSError:
            return False
        return text[text.rfind(")") + 2] not in "ZX"
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def test_events_stderr_and_exit_status(tmp_path: Path) -> None:
    """JSON events arrive in order, other stdout lines become log events, stderr is kept and reported, the exit
    status and the engine's error message surface in ProcessError."""
    child = _script(
        tmp_path,
        "child.py",
        """
        import json, sys
        print(json.dumps({"event": "progress", "stage": "inference", "done": 1, "total": 2}), flush=True)
        print("a plain line", flush=True)
        print("{not json", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        print(json.dumps({"event": "metrics", "stage": "epoch", "epoch": 1, "loss_total": 0.5}), flush=True)
        print(json.dumps({"event": "error", "message": "model 'brats' expects 4 images, got 3"}), flush=True)
        print("cldl: error: model 'brats' expects 4 images, got 3", file=sys.stderr, flush=True)
        sys.exit(1)
        """,
    )
    seen = []
    process = JsonLinesProcess([sys.executable, str(child)], onEvent=seen.append).start()
    assert process.wait(timeout=30) == 1
    stdout = [e for e in seen if e.get("stream") != "stderr"]  # stderr lines interleave in any order
    assert [e["event"] for e in stdout] == ["progress", "log", "log", "metrics", "error", "exit"]
    assert stdout[1] == {"event": "log", "message": "a plain line"}
    assert seen[-1] == {"event": "exit", "returncode": 1, "cancelled": False}
    assert {"event": "log", "message": "a warning", "stream": "stderr"} in seen
    assert "a warning" in process.stderr
    assert process.errorMessage() == "model 'brats' expects 4 images, got 3"
    with pytest.raises(ProcessError, match=r"expects 4 images, got 3 \(exit status 1\)") as info:
        process.raiseForStatus()
    assert info.value.returncode == 1 and "cldl: error:" in info.value.stderr
    assert process.poll() == [] and not process.running


def test_error_message_without_an_error_event(tmp_path: Path) -> None:
    """A crash that prints only a traceback is summarised from stderr."""
    child = _script(tmp_path, "crash.py", "raise SystemExit('something broke badly')\n")
    process = JsonLinesProcess([sys.executable, str(child)]).start()
    process.wait(timeout=30)
    assert "something broke badly" in process.errorMessage()
    assert parseEventLine('{"event": "result", "labelmap": "x"}') == {"event": "result", "labelmap": "x"}
    assert parseEventLine('["event"]') == {"event": "log", "message": '["event"]'}


def test_cancel_kills_child_and_grandchildren(tmp_path: Path) -> None:
    """Cancelling kills the engine process and every process it started: a grandchild in its process group and
    one that left it (new session), then reports an exit event with cancelled=True."""
    grandchild = _script(tmp_path, "grandchild.py", "import time\nwhile True:\n    time.sleep(0.2)\n")
    child = _script(
        tmp_path,
        "child.py",
        f"""
        import json, subprocess, sys, time
        same_group = subprocess.Popen([sys.executable, {str(grandchild)!r}])
        own_session = subprocess.Popen([sys.executable, {str(grandchild)!r}], start_new_session=True)
        print(json.dumps({{"event": "log", "message": "pids", "pids": [same_group.pid, own_session.pid]}}), flush=True)
        while True:
            time.sleep(0.2)
        """,
    )
    process = JsonLinesProcess([sys.executable, str(child)]).start()
    pids, deadline = None, time.monotonic() + 30
    while pids is None and time.monotonic() < deadline:
        for event in process.poll():
            pids = event.get("pids") or pids
        time.sleep(0.05)
    assert pids, "the child did not report its grandchildren"
    everyone = [process.process.pid, *pids]
    assert all(_alive(pid) for pid in everyone)

    process.cancel()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in everyone) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in everyone), [pid for pid in everyone if _alive(pid)]
    process.wait(timeout=10)
    assert process.events[-1]["event"] == "exit" and process.events[-1]["cancelled"] is True
    with pytest.raises(CancelledError):
        process.raiseForStatus()


def test_request_stop_sends_sigterm(tmp_path: Path) -> None:
    """A stop request lets the engine end by itself (SIGTERM handler runs, exit status 0)."""
    child = _script(
        tmp_path,
        "graceful.py",
        """
        import json, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print(json.dumps({"event": "log", "message": "stopping"}),
                                                        flush=True), sys.exit(0)))
        print(json.dumps({"event": "log", "message": "ready"}), flush=True)
        while True:
            time.sleep(0.1)
        """,
    )
    process = JsonLinesProcess([sys.executable, str(child)]).start()
    deadline = time.monotonic() + 30
    while not any(e.get("message") == "ready" for e in process.events) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    process.requestStop()
    assert process.wait(timeout=30) == 0
    assert [e.get("message") for e in process.events if e["event"] == "log"] == ["ready", "stopping"]
    process.raiseForStatus()


def test_engine_command_and_environment() -> None:
    """`python -m cldl ...` with the engine's folder first on PYTHONPATH; it runs and lists the demo model."""
    command = engineCommand(["models", "list"], python=sys.executable)
    assert command[:3] == [sys.executable, "-m", "cldl"]
    env = engineEnvironment({"CLDL_TEST": "1"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(engineRoot())
    assert (engineRoot() / "cldl" / "commands" / "main.py").is_file()
    assert env["PYTHONUNBUFFERED"] == "1" and env["CLDL_TEST"] == "1"
    process = JsonLinesProcess(command, env=env).start()
    assert process.wait(timeout=60) == 0
    assert any("brats-phantom-demo" in str(e.get("message")) for e in process.events)


def test_schedule_polling_until_done() -> None:
    """schedulePolling re-arms the timer while poll() returns True (Qt's singleShot in Slicer)."""
    calls, timers = [], []
    schedulePolling(lambda: calls.append(1) or len(calls) < 3, lambda ms, fn: timers.append((ms, fn)), ms=50)
    while timers:
        ms, fn = timers.pop(0)
        assert ms == 50
        fn()
    assert len(calls) == 3


def test_request_stop_reaches_the_engine_behind_a_launcher(tmp_path: Path) -> None:
    """Inside Slicer the started process is PythonSlicer, a launcher that runs the real Python as a child with the
    same stdout and forwards no signal. A stop request must reach that child: it checkpoints and says so."""
    engine = _script(
        tmp_path,
        "engine.py",
        """
        import json, signal, sys, time
        def stop(*args):
            print(json.dumps({"event": "result", "stopped": True}), flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        while True:
            print(json.dumps({"event": "progress", "stage": "train", "done": 1, "total": 2}), flush=True)
            time.sleep(0.1)
        """,
    )
    launcher = _script(
        tmp_path,
        "launcher.py",
        """
        import subprocess, sys
        sys.exit(subprocess.call(sys.argv[1:]))  # inherited stdout; no signal handling, nothing forwarded
        """,
    )
    process = JsonLinesProcess([sys.executable, str(launcher), sys.executable, str(engine)]).start()
    try:
        deadline = time.monotonic() + 30
        while not process.events and time.monotonic() < deadline:
            process.poll()
            time.sleep(0.05)
        process.requestStop()
        process.wait(timeout=20)
        assert process.result() == {"event": "result", "stopped": True}
    finally:
        process.cancel()

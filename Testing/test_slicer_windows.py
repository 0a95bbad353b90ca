"""Stop and hidden windows on Windows (issue 21 item 7), exercised here with ``process.WINDOWS`` set and fakes
where a Windows API cannot run: Stop creates the run's stop file, which ``cldl train --stop-file`` polls (finish
the step, checkpoint, exit 0), instead of ``taskkill /F``; every process CLDL starts gets ``CREATE_NO_WINDOW``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib import process as processModule
from CLDLSegmentationLib.process import JsonLinesProcess, popenOptions
from CLDLTrainingLib.logic import STOP_FILE, TrainingLogic, trainCommand
from conftest import tiny_config

from cldl.checkpoint import load_checkpoint
from cldl.training.distributed import StopSignals

ROOT = Path(__file__).resolve().parents[1]


def test_stop_signals_also_watch_a_stop_file(tmp_path: Path) -> None:
    stop = StopSignals(names=(), stop_file=tmp_path / "stop")
    assert not stop()
    (tmp_path / "stop").write_text("")
    assert stop() and stop.received == "stop file"


def test_cldl_train_stops_after_the_step_when_the_stop_file_appears(tmp_path: Path) -> None:
    """The engine side of Windows' Stop: exit status 0, a resumable mid-epoch ``last.pt``."""
    config = tmp_path / "config.json"
    values = tiny_config(epochs=2, iters_per_epoch=500, max_val_cases=1).to_dict()
    config.write_text(json.dumps(values))
    stopFile = tmp_path / "run" / STOP_FILE
    command = [sys.executable, "-m", "cldl", "train", "--config", str(config), "--out", str(tmp_path / "run")]
    process = subprocess.Popen(
        [*command, "--stop-file", str(stopFile), "--progress", "jsonl"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    events = []
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1].get("stage") == "train" and events[-1]["done"] == 2:
                stopFile.write_text("")
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    result = next(e for e in events if e["event"] == "result")
    assert result["stopped"] and result["epochs"] == 0 and result["stopped_at_iteration"] >= 2
    state = load_checkpoint(tmp_path / "run" / "last.pt").training_state
    assert (state["epoch"], state["iteration"]) == (0, result["stopped_at_iteration"])


def test_popen_options_hide_the_console_window_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processModule, "WINDOWS", True)
    assert popenOptions() == {"creationflags": 0x08000000 | 0x00000200}  # CREATE_NO_WINDOW | NEW_PROCESS_GROUP
    assert popenOptions(newGroup=False) == {"creationflags": 0x08000000}
    monkeypatch.setattr(processModule, "WINDOWS", False)
    assert popenOptions() == {"start_new_session": True} and popenOptions(newGroup=False) == {}


#: A stand-in for ``python -m cldl train`` that stops (with a checkpoint, exit 0) once its stop file exists and
#: ignores SIGTERM, as a Windows process would never get one.
FAKE_ENGINE = """#!{python}
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stop = Path(sys.argv[sys.argv.index("--stop-file") + 1])
print(json.dumps({{"event": "progress", "stage": "train", "epoch": 1, "done": 1, "total": 9}}), flush=True)
for _ in range(600):
    if stop.exists():
        print(json.dumps({{"event": "result", "stopped": True}}), flush=True)
        sys.exit(0)
    time.sleep(0.05)
sys.exit(3)
"""


def test_stop_on_windows_creates_the_stop_file_and_the_run_ends_as_stopped(monkeypatch, tmp_path: Path) -> None:
    """TrainingHandle.stop() with the Windows branch: no taskkill, the engine checkpoints and exits by itself."""
    engine = tmp_path / "python"
    engine.write_text(FAKE_ENGINE.format(python=sys.executable))
    engine.chmod(0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STOP_FILE).write_text("")  # left over by an earlier stop: must not stop the new run
    killed: list = []
    monkeypatch.setattr(processModule, "killProcessTree", lambda process: killed.append(process))
    logic = TrainingLogic(python=str(engine), charts=False)
    config = {"task": "brats", "phantoms": {"train_seeds": [0]}, "epochs": 1}
    handle = logic.train(None, "brats", tmp_path / "run", config=config)
    command = handle.process.command
    assert command[command.index("--stop-file") + 1] == str(tmp_path / "run" / STOP_FILE)
    while handle.poll() and not handle.progress:
        time.sleep(0.02)
    assert not (tmp_path / "run" / STOP_FILE).exists(), "the stale stop file was removed before the start"
    monkeypatch.setattr(processModule, "WINDOWS", True)
    handle.stop()
    assert (tmp_path / "run" / STOP_FILE).is_file() and not killed
    monkeypatch.setattr(processModule, "WINDOWS", False)  # wait() below uses POSIX process calls
    handle.wait(timeout=30)
    assert handle.status == "stopped" and handle.process.returncode == 0 and not killed
    assert handle.result == {"stopped": True}


def test_without_a_stop_file_a_windows_stop_ends_the_tree(monkeypatch, tmp_path: Path) -> None:
    process = JsonLinesProcess([sys.executable, "-c", "import time; time.sleep(60)"]).start()
    monkeypatch.setattr(processModule, "WINDOWS", True)
    calls: list = []

    def taskkill(command, **kwargs):
        calls.append((command, kwargs))
        process.process.kill()  # what taskkill /F /T would do
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(processModule.subprocess, "run", taskkill)
    process.requestStop()
    ((command, kwargs),) = calls
    assert command[:4] == ["taskkill", "/F", "/T", "/PID"] and kwargs["creationflags"] == 0x08000000
    monkeypatch.setattr(processModule, "WINDOWS", False)
    process.wait(timeout=10)
    assert process.cancelled


def test_train_command_passes_the_stop_file() -> None:
    command = trainCommand("c.json", "run", python="py", stopFile="run/.cldl-stop")
    assert command[command.index("--stop-file") + 1] == "run/.cldl-stop" and command[-2:] == ["--progress", "jsonl"]


LIB_FILES = sorted(p for m in ("CLDLSegmentation", "CLDLTraining") for p in (ROOT / m).glob("*Lib/*.py"))


def test_every_process_the_lib_starts_hides_its_window() -> None:
    """Every ``subprocess.Popen``/``run`` call (and ``run(...)`` injected for it) passes ``**popenOptions(...)``."""
    calls = []
    for path in LIB_FILES:
        tree = ast.parse(path.read_text())
        options = {  # names assigned popenOptions(...)
            t.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and ast.unparse(n.value).startswith("popenOptions(")
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("subprocess.Popen", "subprocess.run", "run"):
                spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
                hidden = any(s.startswith("popenOptions(") or s in options for s in spread)
                calls.append((path.name, ast.unparse(node.func), hidden))
    assert {(f, c) for f, c, _ in calls} >= {("process.py", "subprocess.Popen"), ("process.py", "subprocess.run")}
    assert all(hidden for *_, hidden in calls), [c for c in calls if not c[2]]

"""The engine outlives its reader (issue 9): a closed stdout neither ends training nor loses the run's events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_config

from cldl.events import Reporter


class _Closed:
    """A stream whose reader is gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no descriptor")


def test_reporter_drops_a_broken_stream_and_keeps_the_log(tmp_path: Path) -> None:
    reporter = Reporter("jsonl", stream=_Closed())
    reporter.log_file = tmp_path / "events.jsonl"
    reporter.log("first")
    reporter.progress("train", 1, 2)
    reporter.emit("result", out="x")
    assert reporter.stream_gone
    events = [json.loads(line) for line in reporter.log_file.read_text().splitlines()]
    assert [e["event"] for e in events] == ["log", "result"]


def test_training_survives_a_closed_stdout(tmp_path: Path) -> None:
    """Slicer quits mid-run: the engine's stdout pipe has no reader; training ends normally with its checkpoints."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(epochs=2).to_dict()))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cldl", "train", "--config", str(config), "--out", str(out)]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen([*command, "--progress", "jsonl"], stdout=subprocess.PIPE, stderr=stderr)
        first = process.stdout.readline()
        process.stdout.close()  # the reader is gone before the first epoch ends
        returncode = process.wait(timeout=300)
    assert json.loads(first)["event"] in ("log", "progress")
    assert returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events.count("metrics") == 2 and events[-1] == "result"
    assert "BrokenPipeError" not in (tmp_path / "stderr.txt").read_text()

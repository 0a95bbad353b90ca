"""Helpers shared by the benchmarks: the command line, the machine, peak memory and child-process runs."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "


def command_line() -> str:
    """The command that started this benchmark, as one could retype it (a wrapper script may set it)."""
    return os.environ.get("CLDL_BENCH_COMMAND") or " ".join(
        shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]
    )


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """One line: CPU count and model, memory, torch version, GPU if any."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        memory = f", {pages:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = ""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPUs ({cpu_model()}){memory}, torch {torch.__version__}{gpu}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def emit_result(values: dict[str, Any]) -> None:
    """Print a child's result as one tagged JSON line (read back by :func:`run_child`)."""
    print(RESULT_PREFIX + json.dumps(values), flush=True)


def run_child(args: list[str], timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a Python child process (its own peak RSS is honest) and return its tagged JSON result."""
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result.setdefault("wall_s", time.perf_counter() - started)
            return result
    raise RuntimeError(f"{' '.join(args)} printed no result:\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}")

"""Multi-process training on CPU: ``torchrun`` with 1 vs 2 processes (gloo), throughput and identical weights.

Both runs use the same cores: one process with all torch threads, or N processes with ``OMP_NUM_THREADS`` =
cores / N. Each process trains on its own patches, so a step of N processes consumes N batches; throughput is
patches per second over the steps after ``--warmup`` (timed from rank 0's progress events). Every rank hashes its
weights after every epoch and the run fails if any two differ; the digests of the N-process run are printed.

Run: .venv/bin/python benchmarks/ddp_cpu.py [--processes 1 2] [--width 8] [--patch 48] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, command_line, machine_summary


def run(processes: int, args: argparse.Namespace, folder: Path) -> dict:
    """One ``torchrun`` training run; returns throughput, wall time and the result event."""
    config = {
        "task": "brats",
        "phantoms": {"train_seeds": [0, 4], "val_seeds": [10_000, 10_002], "shape": [args.patch + 16] * 3},
        "model": {"base_width": args.width},
        "patch_size": [args.patch] * 3,
        "batch_size": 1,
        "epochs": 1,
        "iters_per_epoch": args.warmup + args.steps,
        "max_val_cases": 2,
        "device": "cpu",
        "seed": 0,
        "cache": None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"config{processes}.json"
    path.write_text(json.dumps(config))
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "cldl", "train", "--config", str(path), "--out", str(folder / f"run{processes}")]
    command += ["--progress", "jsonl"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    steps: list[float] = []
    result: dict = {}
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["event"] == "progress" and event["stage"] == "train":
            steps.append(time.perf_counter())
        elif event["event"] == "result":
            result = event
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    measured = steps[args.warmup - 1 :]
    rate = (len(measured) - 1) / (measured[-1] - measured[0])
    return {
        "processes": processes,
        "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "steps_per_s": rate,
        "patches_per_s": rate * processes,
        "wall_s": time.perf_counter() - started,
        "weights_sha256": result.get("weights_sha256"),
        "world_size": result.get("world_size"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run each process count (alternating over repeats) and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, default=8, help="network base width (30: the full network)")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="base width 4, 32^3 patches, 4 steps (for CI)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.patch, args.steps, args.warmup = 4, 32, 4, 1
    args.warmup = max(1, args.warmup)
    runs: dict[int, list[dict]] = {n: [] for n in args.processes}
    with tempfile.TemporaryDirectory(prefix="cldl-bench-ddp-") as folder:
        for repeat in range(args.repeats):
            order = args.processes if repeat % 2 == 0 else list(reversed(args.processes))
            for processes in order:
                runs[processes].append(run(processes, args, Path(folder) / f"r{repeat}"))
    best = {n: max(r["patches_per_s"] for r in v) for n, v in runs.items()}
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    print(f"network base width {args.width}, patch {args.patch}^3, batch 1 per process; {args.steps} timed steps")
    base = best[args.processes[0]]
    for n, results in runs.items():
        last = results[-1]
        rates = ", ".join(f"{r['patches_per_s']:.3f}" for r in results)
        print(
            f"  {n} process(es) x {last['threads_per_process']} thread(s): {best[n]:.3f} patches/s (runs: {rates}), "
            f"x{best[n] / base:.2f}; weights {last['weights_sha256'][:16]} (identical on all {n} ranks)"
        )
    if args.json:
        figures = {"command": command_line(), "machine": machine_summary(), "date": time.strftime("%Y-%m-%d")}
        figures.update({"runs": {str(n): v for n, v in runs.items()}, "best_patches_per_s": best})
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

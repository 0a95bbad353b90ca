"""Whole-folder segmentation against one `cldl segment` per case: cases per minute (CPU, or a GPU with --device).

Both run the installed command line in child processes, as a user would: once with the dataset folder
(`cldl segment -i DATASET -o OUT`: one start-up, one model load, the next case read while one runs) and once per case
with its four files. Same model (default: the phantom model, 64^3 windows), same cases (BraTS-like phantoms in the
BraTS layout), same precision. The pure-compute bound is the sum of ``Predictor.predict`` times on the same cases,
already in memory, in this process (after one warm-up case): no start-up, reading or writing.

Run: .venv/bin/python benchmarks/folder_segmentation.py [--cases 8] [--size 96 | --shape 155 240 240]
     [--device cpu|cuda] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, machine_summary

from cldl.data.phantoms import brats_phantom, write_case
from cldl.inference.predictor import Predictor
from cldl.registry import resolve_model

CLDL = [sys.executable, "-m", "cldl"]


def _run(args: list[str]) -> float:
    """Seconds one command takes (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(CLDL + args, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def compute_bound(model: str, device: str, cases: list) -> float:
    """Seconds ``Predictor.predict`` takes for ``cases`` (in memory, one warm-up first)."""
    predictor = Predictor(resolve_model(model), device=device)
    predictor.predict(cases[0].images, geometry=cases[0].geometry)
    started = time.perf_counter()
    for case in cases:
        predictor.predict(case.images, geometry=case.geometry)
    return time.perf_counter() - started


def main() -> int:
    """Print cases per minute both ways and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="phantom edge length in voxels")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), help="phantom shape instead of --size")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default="brats-phantom-demo")
    parser.add_argument("--quick", action="store_true", help="2 cases of 48^3 (seconds; for CI)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    cases = 2 if args.quick else args.cases
    shape = (48,) * 3 if args.quick else tuple(args.shape or (args.size,) * 3)
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    common = ["--model", args.model, "--device", args.device, "--progress", "none"]
    phantoms = [brats_phantom(seed, shape=shape) for seed in range(30_000, 30_000 + cases)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for phantom in phantoms:
            write_case(phantom, data)
        folder_s = _run(["segment", "-i", str(data), "-o", str(Path(tmp) / "folder"), *common])
        single_s = 0.0
        for case in sorted(data.iterdir()):
            files = [str(next(case.glob(f"*_{m}.nii.gz"))) for m in ("flair", "t1", "t1ce", "t2")]
            single_s += _run(["segment", "-i", *files, "-o", str(Path(tmp) / f"{case.name}.nii.gz"), *common])
    compute_s = compute_bound(args.model, args.device, phantoms)
    seconds = {"folder": folder_s, "one_by_one": single_s, "compute_bound": compute_s}
    per_minute = {name: 60 * cases / value for name, value in seconds.items()}
    print(f"{cases} cases of {' x '.join(map(str, shape))}, model {args.model}, device {args.device}")
    print(f"  folder:        {folder_s:.1f} s ({per_minute['folder']:.1f} cases/min)")
    print(f"  one by one:    {single_s:.1f} s ({per_minute['one_by_one']:.1f} cases/min)")
    print(f"  compute bound: {compute_s:.1f} s ({per_minute['compute_bound']:.1f} cases/min)")
    print(f"  speed-up folder / one by one: {single_s / folder_s:.2f}x")
    print(f"  folder at {compute_s / folder_s:.0%} of the compute bound")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, **per_minute, "device": args.device}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

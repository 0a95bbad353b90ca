"""Sliding-window overlap: inference time vs Dice, the measurement behind the predictor's default overlap.

A trained model is needed for Dice to mean anything; the only one here is the bundled demo model (base width 8,
trained on 96^3 phantoms with 64^3 patches). At its own 64^3 window a 96^3 phantom's ~78^3 head crop gets two
windows per axis whatever the overlap, so the measurement uses a 48^3 window: head/window ~1.6, the same ratio
as a BraTS head crop (~125 x 207 x 197) to the full network's 128^3 window. Every overlap sees the same cases.

Run: .venv/bin/python benchmarks/overlap.py [--cases 12] [--window 48] [--overlaps 0,0.25,0.5,0.625,0.75]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _common import command_line, machine_summary

from cldl.data.phantoms import brats_phantom
from cldl.evaluation.overlap import dice
from cldl.inference.predictor import Predictor
from cldl.registry import PHANTOM_MODEL, resolve_model


def main(argv: list[str] | None = None) -> int:
    """Print mean Dice per region and seconds per case for each overlap."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: the bundled demo model)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=20_000)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--window", type=int, default=48, help="cubic window edge (multiple of 16)")
    parser.add_argument("--overlaps", default="0,0.25,0.5,0.625,0.75")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overlaps = [float(v) for v in args.overlaps.split(",")]
    predictors = {
        o: Predictor(resolve_model(args.model or PHANTOM_MODEL), device="cpu", overlap=o, window_batch=1)
        for o in overlaps
    }
    for predictor in predictors.values():
        predictor.window = (args.window,) * 3
    task = next(iter(predictors.values())).task
    dices: dict[float, list[list[float]]] = {o: [] for o in overlaps}
    seconds: dict[float, list[float]] = {o: [] for o in overlaps}
    windows: dict[float, list[int]] = {o: [] for o in overlaps}
    for seed in range(args.first_seed, args.first_seed + args.cases):
        case = brats_phantom(seed, shape=tuple(args.shape))
        reference = task.labels_to_classes(case.labels)
        for overlap in overlaps:  # interleaved, so a busy machine slows every overlap alike
            calls: list[int] = []
            started = time.perf_counter()
            prediction = predictors[overlap].predict(
                case.images, progress=lambda done, total, seen=calls: seen.append(total)
            )
            seconds[overlap].append(time.perf_counter() - started)
            windows[overlap].append(calls[-1] if calls else 0)
            dices[overlap].append(
                [dice(np.isin(prediction.classes, r.classes), np.isin(reference, r.classes)) for r in task.regions]
            )
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    print(
        f"model: {args.model or PHANTOM_MODEL}; window {args.window}^3; {args.cases} phantoms {tuple(args.shape)}, "
        f"seeds {args.first_seed}..{args.first_seed + args.cases - 1}; CPU, {torch.get_num_threads()} threads"
    )
    names = [r.name for r in task.regions]
    print(f"{'overlap':>8} {'windows':>8} {'s/case':>8} " + " ".join(f"{'Dice ' + n:>9}" for n in names) + "  mean")
    base = np.mean(seconds[overlaps[0]])
    for overlap in overlaps:
        values = np.array(dices[overlap])
        means = values.mean(0)
        print(
            f"{overlap:>8.3g} {np.mean(windows[overlap]):>8.1f} {np.mean(seconds[overlap]):>8.3f} "
            + " ".join(f"{m:>9.4f}" for m in means)
            + f"  {means.mean():.4f}  (time x{np.mean(seconds[overlap]) / base:.2f})"
        )
    reference_overlap = 0.5 if 0.5 in overlaps else overlaps[-1]
    ref = np.array(dices[reference_overlap]).mean(1)
    for overlap in overlaps:
        diff = np.array(dices[overlap]).mean(1) - ref
        print(
            f"mean Dice, overlap {overlap:g} minus {reference_overlap:g}: {diff.mean():+.4f} "
            f"(per-case std {diff.std():.4f}, worst {diff.min():+.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plot a model's learning curve: the training loss along a chain of warm-started runs, and comparison-set Dice.

Usage: .venv/bin/python scripts/plot_learning_curve.py OUT.png --run [NAME=]RUN_DIR[:LAST_EPOCH[+ITERATIONS]]
           [--run ...] [--point LABEL=RUN:EPOCH=results.json ...] [--averaged LABEL=RUN:EPOCH=results.json ...]
Runs are given in the order they were warm-started from one another; a run's steps start where the previous run's
LAST_EPOCH (plus ITERATIONS of the next epoch, for a run stopped mid-epoch) ended (``iters_per_epoch`` from its
``config.json``). A point is the ``results.json`` of
``benchmarks/real_anatomy_accuracy.py`` for the state at EPOCH of run number RUN (1 = the first ``--run``);
``--averaged`` marks a mean of states, drawn at its last state. The bundled model's curve is in
docs/default_model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")
COLOURS = {"WT": "tab:green", "TC": "tab:orange", "ET": "tab:red"}


@dataclass
class RunSegment:
    """The epochs of one run that the chain used, placed on the chain's step axis."""

    name: str
    first_step: int
    iters_per_epoch: int
    epochs: np.ndarray
    loss: np.ndarray
    lr: np.ndarray


@dataclass
class Point:
    """A comparison-set evaluation of one state (or of a mean of states)."""

    label: str
    step: int
    dice: dict[str, float]
    healthy_ml: float | None
    averaged: bool
    grid_ceiling: dict[str, float] | None  # Dice of a perfect segmentation on the model's grid (newer results)


def read_runs(specs: list[str]) -> list[RunSegment]:
    """Each run's per-epoch loss and learning rate up to its last used epoch, offset along the chain."""
    segments, step = [], 0
    for spec in specs:
        name, _, rest = spec.rpartition("=")
        folder, _, last = rest.partition(":")
        last, _, extra = last.partition("+")
        path = Path(folder)
        metrics = path / "metrics.jsonl"
        if not metrics.is_file():
            raise SystemExit(f"error: {metrics} not found (give a training run folder)")
        iters = int(json.loads((path / "config.json").read_text())["iters_per_epoch"])
        rows = {}
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            rows[int(row["epoch"])] = row  # a resumed epoch written twice keeps its last line
        if not rows:
            raise SystemExit(f"error: {metrics} records no finished epoch yet")
        if not (last or "0").isdigit() or not (extra or "0").isdigit():
            raise SystemExit(f"error: --run {spec!r}: expected [NAME=]RUN_DIR[:LAST_EPOCH[+ITERATIONS]]")
        last_epoch = int(last) if last else max(rows)
        epochs = np.array(sorted(e for e in rows if e <= last_epoch))
        segments.append(
            RunSegment(
                name or path.name,
                step,
                iters,
                epochs,
                np.array([rows[e]["loss_total"] for e in epochs]),
                np.array([rows[e]["lr"] for e in epochs]),
            )
        )
        step += last_epoch * iters + int(extra or 0)
    return segments


def read_point(spec: str, segments: list[RunSegment], averaged: bool) -> Point:
    """LABEL=RUN:EPOCH=results.json as a point on the chain's step axis."""
    try:
        label, where, results = spec.split("=", 2)
        run, epoch = (int(v) for v in where.split(":"))
        segment = segments[run - 1]
    except (ValueError, IndexError):
        raise SystemExit(f"error: --point/--averaged {spec!r}: expected LABEL=RUN:EPOCH=results.json") from None
    try:
        data = json.loads(Path(results).read_text())
        dice = {r: data["generator"]["summary"][r]["dice"]["mean"] for r in REGIONS}
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"error: {results}: not a results.json of real_anatomy_accuracy.py ({error})") from None
    healthy = data.get("healthy", {}).get("mean_ml")
    ceiling = data["generator"].get("grid_ceiling_dice")
    return Point(label, segment.first_step + epoch * segment.iters_per_epoch, dice, healthy, averaged, ceiling)


def rolling_mean(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Trailing mean over ``window`` epochs (fewer at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts


def grid_ceiling(points: list[Point]) -> dict[str, float] | None:
    """The comparison set's Dice of a perfect segmentation on the model's grid, from the first result that has it."""
    return next((p.grid_ceiling for p in points if p.grid_ceiling), None)


def plot(segments: list[RunSegment], points: list[Point], ceiling: dict[str, float] | None, out: Path) -> None:
    """Loss and learning rate on top, comparison-set Dice below, one shared step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True)
    lr_axis = top.twinx()
    for segment in segments:
        steps = segment.first_step + segment.epochs * segment.iters_per_epoch
        (line,) = top.plot(steps, rolling_mean(segment.loss), lw=1.8, label=segment.name)
        top.plot(steps, segment.loss, lw=0.6, alpha=0.35, color=line.get_color())
        lr_axis.step(steps, segment.lr, where="post", color="grey", lw=0.8)
    lr_axis.set_yscale("log")
    lr_axis.set_ylabel("learning rate (grey)")
    top.set_ylabel("training loss (5-epoch mean)")
    top.legend(loc="upper right", fontsize=8)
    single = sorted((p for p in points if not p.averaged), key=lambda p: p.step)
    means = [p for p in points if p.averaged]
    for region in REGIONS:
        colour = COLOURS[region]
        bottom.plot([p.step for p in single], [p.dice[region] for p in single], "o-", color=colour, label=region)
        bottom.plot([p.step for p in means], [p.dice[region] for p in means], "*", ms=12, color=colour)
        if ceiling:
            bottom.axhline(ceiling[region], color=colour, ls="--", lw=0.8)
    if ceiling:
        bottom.set_ylim(top=max(ceiling.values()) + 0.01)
    bottom.set_ylabel("comparison-set Dice")
    bottom.set_title("o one state, * mean of states, -- perfect on the model's grid", fontsize=9)
    bottom.set_xlabel("training steps at 2 mm (batch 1)")
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    """Print the points' table and write the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the figure (.png)")
    parser.add_argument("--run", action="append", required=True, metavar="RUN_DIR[:LAST_EPOCH]")
    parser.add_argument("--point", action="append", default=[], metavar="LABEL=RUN:EPOCH=results.json")
    parser.add_argument("--averaged", action="append", default=[], metavar="LABEL=RUN:EPOCH=results.json")
    args = parser.parse_args()
    segments = read_runs(args.run)
    points = [read_point(s, segments, False) for s in args.point] + [
        read_point(s, segments, True) for s in args.averaged
    ]
    for segment in segments:
        last = segment.first_step + int(segment.epochs[-1]) * segment.iters_per_epoch
        print(
            f"{segment.name}: steps {segment.first_step}-{last}, lr {segment.lr.max():g}-{segment.lr.min():g},"
            f" loss {segment.loss[0]:.3f} -> {segment.loss[-1]:.3f}"
        )
    for point in sorted(points, key=lambda p: p.step):
        healthy = "" if point.healthy_ml is None else f", healthy brains {point.healthy_ml:.2f} ml"
        dice = " / ".join(f"{point.dice[r]:.3f}" for r in REGIONS)
        print(f"{point.step:>6} steps  {point.label}: WT / TC / ET {dice}{healthy}")
    ceiling = grid_ceiling(points)
    if ceiling:
        print("perfect on the model's grid: WT / TC / ET " + " / ".join(f"{ceiling[r]:.3f}" for r in REGIONS))
    plot(segments, points, ceiling, args.out)
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

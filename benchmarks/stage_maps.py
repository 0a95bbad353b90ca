"""Are the LDL stage maps right? Each stage's region proportions against the true ones, on cases with exact fractions.

Cases: BraTS phantoms (``--cases phantom``, seeds 20000..) or anatomy-based generator cases (``--cases anatomy``,
seeds 50000..), never used in training; both keep the exact per-class partial-volume fractions. Per LDL stage
(8, 4, 2 voxel regions), on the stage's own grid over the network's crop (full cells only):

- **MAE**: mean absolute error of the predicted class proportions against the true ones (the fractions
  average-pooled over each region), over all cells and over the mixed cells (true proportions not all 0 or 1);
- **calibration**: the predicted proportions (every class, every cell) in 10 bins; the error is the cell-weighted
  mean |mean predicted - mean true| over the bins (an ECE for proportions);
- **AUC**: how well region ambiguity (normalised entropy of the predicted proportions) ranks the true boundary
  cells (mixed: the true largest proportion below 0.99) above the pure ones.

The network grid must be the input grid (no reorientation or resampling), as for the phantoms and generator cases.

Run: .venv/bin/python benchmarks/stage_maps.py [--model NAME_OR_PATH] [--cases phantom|anatomy] [--count 10]
     [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import command_line, machine_summary
from scipy.stats import rankdata

from cldl.inference.predictor import Predictor
from cldl.registry import PHANTOM_MODEL, resolve_model

PURE = 0.99
BINS = 10


def true_proportions(fractions: np.ndarray, bbox: tuple, region: int) -> np.ndarray:
    """The exact fractions of the crop average-pooled over full ``region``^3 cells (``K x cells``)."""
    crop = fractions[(slice(None), *(slice(a, b) for a, b in bbox))]
    return F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None], region)[0].numpy()


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); NaN without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_error(predicted: np.ndarray, true: np.ndarray) -> float:
    """Cell-weighted mean |mean predicted - mean true| over ``BINS`` bins of the predicted proportion."""
    bins = np.minimum((predicted * BINS).astype(int), BINS - 1)
    total = 0.0
    for b in range(BINS):
        chosen = bins == b
        if chosen.any():
            total += chosen.sum() * abs(predicted[chosen].mean() - true[chosen].mean())
    return float(total / predicted.size)


def make_case(kind: str, seed: int, quick: bool):
    """A phantom or a generator case with exact fractions."""
    if kind == "phantom":
        from cldl.data.phantoms import brats_phantom

        return brats_phantom(seed, shape=(48, 48, 48) if quick else (96, 96, 96))
    from cldl.data.anatomy import anatomy_case

    return anatomy_case(seed)


def stage_figures(predictor: Predictor, case) -> list[dict]:
    """Per stage: predicted and true proportions, ambiguity and the boundary mask of one case (flattened)."""
    prediction = predictor.predict(case.images, geometry=case.geometry, stage_maps="nearest")
    maps = prediction.stage_maps
    if maps.case.resampled or not maps.case.orientation.is_identity:
        raise SystemExit(
            "this benchmark needs the network grid to be the input grid (no reorientation/resampling): "
            f"this model resamples; use one trained at the data's spacing, e.g. {PHANTOM_MODEL}"
        )
    rows = []
    for stage in maps.stages:
        true = true_proportions(case.fractions, maps.case.bbox, stage.region)
        cells = tuple(slice(0, s) for s in true.shape[1:])
        predicted = stage.proportions[(slice(None), *cells)]
        rows.append(
            {
                "region": stage.region,
                "predicted": predicted.reshape(predicted.shape[0], -1),
                "true": true.reshape(true.shape[0], -1),
                "ambiguity": stage.ambiguity[cells].ravel(),
            }
        )
    return rows


def summarise(per_case: list[list[dict]]) -> list[dict]:
    """Pool every case's cells per stage and compute the figures."""
    result = []
    for index in range(len(per_case[0])):
        predicted = np.concatenate([case[index]["predicted"] for case in per_case], axis=1)
        true = np.concatenate([case[index]["true"] for case in per_case], axis=1)
        ambiguity = np.concatenate([case[index]["ambiguity"] for case in per_case])
        mixed = true.max(axis=0) < PURE
        error = np.abs(predicted - true)
        result.append(
            {
                "region": per_case[0][index]["region"],
                "cells": int(true.shape[1]),
                "mixed_cells": int(mixed.sum()),
                "mae": float(error.mean()),
                "mae_mixed": float(error[:, mixed].mean()) if mixed.any() else float("nan"),
                "calibration_error": calibration_error(predicted.ravel(), true.ravel()),
                "ambiguity_auc": auc(ambiguity, mixed),
            }
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=PHANTOM_MODEL,
        help="a model whose network grid is the input grid (the default brats-anatomy resamples to 1.5 mm: not yet)",
    )
    parser.add_argument("--cases", choices=("phantom", "anatomy"), default="phantom")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="one 48^3 phantom (for the tests)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    first = 20_000 if args.cases == "phantom" else 50_000
    count = 1 if args.quick else args.count
    predictor = Predictor(resolve_model(args.model), device=args.device)
    per_case = [stage_figures(predictor, make_case(args.cases, first + n, args.quick)) for n in range(count)]
    figures = summarise(per_case)
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    print(f"model: {args.model}; {count} {args.cases} case(s), seeds {first}..{first + count - 1}")
    print("| region (voxels) | cells | mixed cells | MAE | MAE (mixed cells) | calibration error | ambiguity AUC |")
    print("|---|---|---|---|---|---|---|")
    for row in figures:
        print(
            f"| {row['region']}^3 | {row['cells']} | {row['mixed_cells']} | {row['mae']:.4f} | "
            f"{row['mae_mixed']:.4f} | {row['calibration_error']:.4f} | {row['ambiguity_auc']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cases": args.cases, "stages": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Metrics of every task region of a case, and their summary over cases.

The metrics themselves live in :mod:`cldl.evaluation.overlap` (Dice, sensitivity, specificity and the empty-set
conventions), :mod:`cldl.evaluation.distances` (HD95, ASSD), :mod:`cldl.evaluation.lesions` (lesion-wise) and
:mod:`cldl.evaluation.calibration` (calibration and uncertainty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cldl.tasks import Task

from .distances import axis_spacing, crop_box, diagonal_length, distance_metrics
from .overlap import METRICS, overlap_metrics

# --------------------------------------------------------------------------------------------------------------
# regions, cases, folders


def region_metrics(
    pred_classes: np.ndarray,
    ref_classes: np.ndarray,
    task: Task,
    spacing: Sequence[float] | float | None = None,
    metrics: Sequence[str] = METRICS,
    empty: str = "brats",
    hd95_rule: str = "pooled",
) -> dict[str, dict[str, float]]:
    """Metrics of every task region (union of class indices) for two class-index maps: {region: {metric: value}};
    ``empty`` is the Dice of a region empty in both (:data:`EMPTY_RULES`; HD95/ASSD are 0 under both rules);
    ``hd95_rule``: :data:`cldl.evaluation.distances.HD95_RULES`."""
    pred_classes, ref_classes = np.asarray(pred_classes), np.asarray(ref_classes)
    if pred_classes.shape != ref_classes.shape:
        raise ValueError(f"prediction shape {pred_classes.shape} differs from reference shape {ref_classes.shape}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    spacing = axis_spacing(spacing, pred_classes.ndim)
    for name, arr in (("prediction", pred_classes), ("reference", ref_classes)):
        if arr.size and (arr.min() < 0 or arr.max() >= task.num_classes):
            raise ValueError(
                f"{name} has class indices outside 0..{task.num_classes - 1} of task {task.name!r}"
                " (map label values with task.labels_to_classes first)"
            )
    # every region is a subset of the foreground: crop once to the union of both foregrounds
    box = crop_box((pred_classes != 0) | (ref_classes != 0))
    full_shape, full_size = pred_classes.shape, pred_classes.size
    if box is not None:
        pred_classes, ref_classes = pred_classes[box], ref_classes[box]
    result: dict[str, dict[str, float]] = {}
    for region in task.regions:
        classes = np.asarray(region.classes)
        p = np.isin(pred_classes, classes) if box is not None else np.zeros((1,) * len(full_shape), bool)
        r = np.isin(ref_classes, classes) if box is not None else np.zeros_like(p)
        values = overlap_metrics(p, r, metrics, empty)
        if "specificity" in values:  # the crop's negatives are not all the image's negatives
            negatives = full_size - int(np.count_nonzero(r))
            fp = int(np.count_nonzero(p & ~r))
            values["specificity"] = 1.0 if negatives == 0 else (negatives - fp) / negatives
        distances = distance_metrics(p, r, spacing, metrics, hd95_rule)
        if distances and (p.any() != r.any()):  # diagonal of the whole image, not of the crop
            distances = {m: diagonal_length(full_shape, spacing) for m in distances}
        values.update(distances)
        result[region.name] = {m: float(values[m]) for m in metrics}
    return result


# --------------------------------------------------------------------------------------------------------------
# summaries


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, std (population) and median of every metric of every region over cases, ignoring NaN."""
    collected: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for region, values in result["regions"].items():
            for metric, value in values.items():
                collected.setdefault(region, {}).setdefault(metric, []).append(float(value))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for region, per_metric in collected.items():
        summary[region] = {}
        for metric, values in per_metric.items():
            arr = np.asarray(values, dtype=np.float64)
            arr = arr[~np.isnan(arr)]
            if arr.size:
                stats = {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr))}
            else:
                stats = {"mean": math.nan, "std": math.nan, "median": math.nan}
            summary[region][metric] = stats
    return summary

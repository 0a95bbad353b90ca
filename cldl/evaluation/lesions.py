"""Lesion-wise metrics: connected components of the prediction and the reference matched one to one, then
Dice and HD95 per matched lesion (:func:`lesion_wise_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .distances import axis_spacing, crop_box, distance_metrics
from .overlap import as_bool, checked_pair

LESION_METRICS = ("lw_dice", "lw_hd95", "lesions_tp", "lesions_fp", "lesions_fn", "lesions_f1")
LESION_MATCH_DICE = 1e-6  # the official glioma config: MaxBipartiteMatching on DSC, matching_threshold 0.000001
LESION_HD95_PENALTY = 373.0  # what the official report writes for an infinite HD95 ("diameter of the SRI cube")


# --------------------------------------------------------------------------------------------------------------
# lesion-wise (BraTS 2024+: the official ``brats-evaluation`` package, panoptica's glioma configuration)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a 2D/3D mask, fully connected (26 neighbours in 3D, as cc3d's default): labels, count."""
    import SimpleITK as sitk

    mask = as_bool(mask)
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    labelled = sitk.ConnectedComponent(image, True)
    labels = sitk.GetArrayFromImage(labelled).astype(np.int32)
    return labels, int(labels.max())


def _min_cost_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Rows and columns of a minimum-cost one-to-one assignment of every row (rows <= columns), Hungarian method."""
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: the row (1-based) assigned to column j, 0 = none
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], np.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    current = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if current < minv[j]:
                        minv[j], way[j] = current, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return [(int(owner[j]) - 1, j - 1) for j in range(1, m + 1) if owner[j]]


def lesion_wise_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float | None = None
) -> dict[str, float]:
    """Lesion-wise Dice and HD95 of one region as the official BraTS evaluation (``brats-evaluation``, config
    ``gli``) scores it: {"lw_dice", "lw_hd95", "lesions_tp", "lesions_fp", "lesions_fn", "lesions_f1"}.

    Lesions are the fully connected components of each mask; predicted and reference lesions are paired one-to-one
    by the assignment that maximises the summed Dice (pairs with Dice >= 1e-6 only, :data:`LESION_MATCH_DICE`);
    ``lw_dice``/``lw_hd95`` are the means over the matched pairs (segmentation quality), unmatched lesions count
    in ``lesions_f1`` (recognition quality). No matched pair: Dice 0 and HD95 :data:`LESION_HD95_PENALTY` (the
    package gives infinity, its report 373); both masks empty: no lesions, Dice/HD95/F1 NaN (left out of summaries).
    """
    pred, ref = checked_pair(pred, ref)
    spacing = axis_spacing(spacing, pred.ndim)
    box = crop_box(pred | ref)
    if box is None:
        return {**dict.fromkeys(LESION_METRICS, math.nan), "lesions_tp": 0.0, "lesions_fp": 0.0, "lesions_fn": 0.0}
    pred_labels, n_pred = connected_components(pred[box])
    ref_labels, n_ref = connected_components(ref[box])
    pairs: list[tuple[int, int, float]] = []  # (ref lesion, pred lesion, Dice), 0-based
    if n_pred and n_ref:
        both = (pred_labels > 0) & (ref_labels > 0)
        overlap = np.zeros((n_ref, n_pred))
        np.add.at(overlap, (ref_labels[both] - 1, pred_labels[both] - 1), 1)
        sizes_ref = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)[1:]
        sizes_pred = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
        dice_matrix = 2.0 * overlap / (sizes_ref[:, None] + sizes_pred[None, :])
        cost = np.where(dice_matrix >= LESION_MATCH_DICE, 1.0 - dice_matrix, 1.0 + 1e-6)
        transposed = n_ref > n_pred
        assignment = _min_cost_assignment(cost.T if transposed else cost)
        for row, col in assignment:
            r, p = (col, row) if transposed else (row, col)
            if cost[r, p] < 1.0:
                pairs.append((r, p, float(dice_matrix[r, p])))
    tp = len(pairs)
    fp, fn = n_pred - tp, n_ref - tp
    out = {"lesions_tp": float(tp), "lesions_fp": float(fp), "lesions_fn": float(fn)}
    out["lesions_f1"] = tp / (tp + 0.5 * (fp + fn))
    if not pairs:
        return {"lw_dice": 0.0, "lw_hd95": LESION_HD95_PENALTY, **out}
    distances = []
    for r, p, _ in pairs:
        ref_lesion, pred_lesion = ref_labels == r + 1, pred_labels == p + 1
        distances.append(distance_metrics(pred_lesion, ref_lesion, spacing, ("hd95",))["hd95"])
    return {"lw_dice": float(np.mean([d for *_, d in pairs])), "lw_hd95": float(np.mean(distances)), **out}

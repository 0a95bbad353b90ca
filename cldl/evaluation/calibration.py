"""Calibration and uncertainty metrics (``cldl evaluate --uncertainty``).

* calibration from the per-class probability maps, over the ``mask`` voxels (all voxels without a mask): the
  multi-class top-label ECE with 15 equal-width bins and the Brier score ``mean sum_k (p_k - [y = k])^2`` (region
  ``"all"``), and per region the same for the region's probability (the sum of its classes' probabilities);
* the QU-BraTS uncertainty score per region (Mehta et al., MELBA 2022; the thresholds, counts and areas follow the
  challenge's reference implementation): the uncertainty is put on a 0..100 scale, for the thresholds
  0, 2.5, ..., 100 (``num_points`` = 40 steps) the voxels above the threshold are removed, and the Dice of the rest,
  the ratio of filtered true positives and the ratio of filtered true negatives (both inside the brain mask) give
  three curves; their areas (divided by 100) combine as ``(AUC_Dice + (1 - AUC_FTP) + (1 - AUC_FTN)) / 3``. The
  uncertainty map is used for every region; without one, each region's normalised binary entropy.
"""

from __future__ import annotations

import math

import numpy as np

from .overlap import as_bool, checked_pair

ECE_BINS = 15
QU_POINTS = 40
QU_EPS = float(np.finfo(np.float32).eps)  # as the QU-BraTS reference implementation


# --------------------------------------------------------------------------------------------------------------
# calibration and uncertainty


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum over equal-width confidence bins (lo, hi] of |B|/N * |accuracy(B) - mean confidence(B)|."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hits = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != hits.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hits.shape} differ in size")
    if conf.size == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    sum_conf = np.bincount(index, weights=conf, minlength=bins)
    sum_hits = np.bincount(index, weights=hits, minlength=bins)
    return float(np.abs(sum_hits - sum_conf).sum() / conf.size)


def calibration(
    probabilities: np.ndarray, classes: np.ndarray, mask: np.ndarray | None = None, bins: int = ECE_BINS
) -> dict[str, float]:
    """Multi-class calibration over voxels (``mask`` or all): top-label ECE and the Brier score
    ``mean_voxels sum_k (p_k - [y = k])^2``; ``probabilities`` is ``K x ...``, ``classes`` holds 0..K-1."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1:] != np.shape(classes):
        raise ValueError(f"probabilities {probabilities.shape} do not match the labels {np.shape(classes)}")
    select = np.ones(np.shape(classes), bool) if mask is None else as_bool(mask)
    p = probabilities[:, select].astype(np.float64)  # K x N
    y = np.asarray(classes)[select]
    if y.size == 0:
        return {"ece": math.nan, "brier": math.nan}
    ece = expected_calibration_error(p.max(axis=0), p.argmax(axis=0) == y, bins)
    p_true = np.take_along_axis(p, y[np.newaxis].astype(np.int64), axis=0)[0]
    brier = float(np.mean(np.square(p).sum(axis=0) - 2.0 * p_true + 1.0))
    return {"ece": ece, "brier": brier}


def binary_calibration(
    probability: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, bins: int = ECE_BINS
) -> dict[str, float]:
    """Calibration of one region's probability: ECE of the binary decision (confidence ``max(p, 1 - p)``, correct
    when ``p >= 0.5`` agrees with the reference) and the Brier score ``mean (p - y)^2``."""
    select = np.ones(np.shape(truth), bool) if mask is None else as_bool(mask)
    p = np.asarray(probability, dtype=np.float64)[select]
    y = as_bool(truth)[select]
    if y.size == 0:
        return {"ece": math.nan, "brier": math.nan}
    ece = expected_calibration_error(np.maximum(p, 1.0 - p), (p >= 0.5) == y, bins)
    return {"ece": ece, "brier": float(np.mean(np.square(p - y)))}


def binary_entropy_uncertainty(probability: np.ndarray) -> np.ndarray:
    """Normalised binary entropy of a region probability, in [0, 1] (float32)."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    return h.astype(np.float32)


def qu_brats_thresholds(num_points: int = QU_POINTS) -> np.ndarray:
    """The uncertainty thresholds of the QU-BraTS evaluation (0, 100/num_points, ..., 100), ascending."""
    return np.arange(0.0, 100.0 + QU_EPS, 100.0 / num_points)


def qu_brats_curves(
    truth: np.ndarray,
    pred: np.ndarray,
    uncertainty: np.ndarray,
    mask: np.ndarray | None = None,
    num_points: int = QU_POINTS,
) -> dict[str, np.ndarray]:
    """Dice, filtered-true-positive ratio and filtered-true-negative ratio at each QU-BraTS threshold.

    Voxels with uncertainty (0..100) above a threshold are removed; the Dice is computed on the remaining voxels
    (1 when both remaining sets are empty); FTP = (TP - TP kept) / (TP + eps) and FTN likewise over the true
    negatives, both counted inside ``mask`` (the brain mask; all voxels when None). Counts come from sorted
    uncertainties, so all thresholds cost one sort.
    """
    truth, pred = checked_pair(pred, truth)[::-1]
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != truth.shape:
        raise ValueError(f"uncertainty {u.shape} does not match the labels {truth.shape}")
    inside = np.ones(truth.shape, bool) if mask is None else as_bool(mask)
    thresholds = qu_brats_thresholds(num_points)

    def kept(selection: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(u[selection]), thresholds, side="right").astype(np.float64)

    tp = truth & pred
    n_inter, n_truth, n_pred = kept(tp), kept(truth), kept(pred)
    union = n_truth + n_pred
    with np.errstate(invalid="ignore", divide="ignore"):
        dice_curve = np.where(union == 0, 1.0, 2.0 * n_inter / union)
    tp_in = tp & inside
    tn_in = ~truth & ~pred & inside
    tp_total, tn_total = float(np.count_nonzero(tp_in)), float(np.count_nonzero(tn_in))
    ftp = (tp_total - kept(tp_in)) / (tp_total + QU_EPS)
    ftn = (tn_total - kept(tn_in)) / (tn_total + QU_EPS)
    return {"thresholds": thresholds, "dice": dice_curve, "ftp": ftp, "ftn": ftn}


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal area under ``y(x)``."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def qu_brats_score(
    truth: np.ndarray,
    pred: np.ndarray,
    uncertainty: np.ndarray,
    mask: np.ndarray | None = None,
    num_points: int = QU_POINTS,
) -> dict[str, float]:
    """The QU-BraTS uncertainty score of one region: the areas under the Dice, FTP and FTN curves over the
    thresholds (divided by 100) and ``(AUC_Dice + (1 - AUC_FTP) + (1 - AUC_FTN)) / 3``."""
    curves = qu_brats_curves(truth, pred, uncertainty, mask, num_points)
    x = curves["thresholds"]
    auc = {name: _area(curves[name], x) / 100.0 for name in ("dice", "ftp", "ftn")}
    return {
        "unc_auc_dice": auc["dice"],
        "unc_auc_ftp": auc["ftp"],
        "unc_auc_ftn": auc["ftn"],
        "unc_score": (auc["dice"] + (1.0 - auc["ftp"]) + (1.0 - auc["ftn"])) / 3.0,
    }


def uncertainty_percent(values: np.ndarray) -> np.ndarray:
    """An uncertainty map on the QU-BraTS 0..100 scale: maps in 0..1 (as ``cldl segment`` writes) are scaled by
    100, maps already in 0..100 are kept; then clipped to [0, 100]."""
    values = np.asarray(values, dtype=np.float32)
    if values.size and float(np.nanmax(values)) <= 1.0 + 1e-6:
        values = values * np.float32(100.0)
    return np.clip(values, 0.0, 100.0)

"""Overlap metrics of two masks: Dice, sensitivity and specificity.

The functions take boolean (or 0/non-0) numpy arrays of the same shape and a voxel ``spacing`` in array axis order
(``Geometry.spacing_zyx`` for arrays read with :func:`cldl.files.images.read_image`).

Empty-set conventions (medpy raises or returns 0 here; challenge evaluations use these):

* both masks empty: Dice 1, HD95 0, ASSD 0, sensitivity 1, specificity 1 (``empty="brats"``, the default; with
  ``empty="authors"`` Dice is 0, as the authors' ``2|A∩B| / (|A|+|B|+1e-5)`` gives, e.g. ET of most LGG cases);
* exactly one mask empty: Dice 0 and HD95 = ASSD = the length of the image diagonal,
  ``sqrt(sum((shape_i * spacing_i) ** 2))``, the largest distance possible in the volume (373.13 mm for
  240x240x155 at 1 mm, the BraTS 2021+ convention); sensitivity 0 (reference non-empty and prediction empty: no
  true positive found; reference empty and prediction non-empty: counted as a failure like Dice, not as undefined);
* specificity is TN / (TN + FP) and 1 when the reference fills the whole image (no negatives).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METRICS = ("dice", "hd95", "assd", "sensitivity", "specificity")
EMPTY_RULES = ("brats", "authors")  # both masks empty: Dice 1 (BraTS) or 0 (the authors' 2|A∩B| / (|A|+|B|+1e-5))


# --------------------------------------------------------------------------------------------------------------
# helpers


def as_bool(array: np.ndarray) -> np.ndarray:
    """A boolean view/copy of a mask (non-zero = foreground)."""
    array = np.asarray(array)
    return array if array.dtype == np.bool_ else array != 0


def checked_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as booleans of the same shape, or a ValueError."""
    pred, ref = as_bool(pred), as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    return pred, ref


def _check_empty_rule(empty: str) -> None:
    """A ValueError naming the rules when ``empty`` is not one."""
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty-region rule must be one of {list(EMPTY_RULES)}, got {empty!r}")


def overlap_metrics(pred: np.ndarray, ref: np.ndarray, which: Iterable[str], empty: str = "brats") -> dict[str, float]:
    """Dice, sensitivity and specificity with the empty-set conventions (``empty``: :data:`EMPTY_RULES`)."""
    _check_empty_rule(empty)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp = n_pred - tp
    negatives = pred.size - n_ref
    out = {}
    for m in which:
        if m == "dice":
            both_empty = 1.0 if empty == "brats" else 0.0
            out[m] = both_empty if n_pred + n_ref == 0 else 2.0 * tp / (n_pred + n_ref)
        elif m == "sensitivity":
            out[m] = (1.0 if n_pred == 0 else 0.0) if n_ref == 0 else tp / n_ref
        elif m == "specificity":
            out[m] = 1.0 if negatives == 0 else (negatives - fp) / negatives
    return out


# --------------------------------------------------------------------------------------------------------------
# binary metrics


def dice(pred: np.ndarray, ref: np.ndarray, empty: str = "brats") -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); when both masks are empty 1 (``empty="brats"``) or 0 (``"authors"``)."""
    pred, ref = checked_pair(pred, ref)
    return overlap_metrics(pred, ref, ("dice",), empty)["dice"]


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True positive rate |P∩R| / |R|; 1 when both are empty, 0 when exactly one is empty."""
    pred, ref = checked_pair(pred, ref)
    return overlap_metrics(pred, ref, ("sensitivity",))["sensitivity"]


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True negative rate |~P∩~R| / |~R|; 1 when the reference has no negatives."""
    pred, ref = checked_pair(pred, ref)
    return overlap_metrics(pred, ref, ("specificity",))["specificity"]

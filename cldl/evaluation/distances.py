"""Segmentation metrics: Dice, HD95, ASSD, sensitivity and specificity, per task region, per case and summarised.

All functions take boolean (or 0/non-0) numpy arrays of the same shape and a voxel ``spacing`` in array axis order
(``Geometry.spacing_zyx`` for arrays read with :func:`cldl.files.images.read_image`); distances are in the unit of the
spacing (mm). Surface distances follow ``medpy.metric.binary`` exactly: the border of a mask is the set of its voxels
that have a face neighbour (6-connectivity in 3D) outside the mask, the image edge counting as outside; the distance
from a border voxel to the other mask is the exact Euclidean distance (anisotropic spacing honoured) to the nearest
border voxel of the other mask, computed in float64 by a separable exact distance transform (no scipy needed).

* ``hd95``: the 95th percentile (numpy's linear interpolation) of the distances of both directions pooled.
* ``assd``: the mean of the distances of both directions pooled, i.e. (sum d(a, B) + sum d(b, A)) / (|A| + |B|),
  the standard ASSD and what medpy >= 0.5 computes (medpy < 0.5 averaged the two directed means instead).

Empty-set conventions (medpy raises or returns 0 here; challenge evaluations use these):

* both masks empty: Dice 1, HD95 0, ASSD 0, sensitivity 1, specificity 1 (``empty="brats"``, the default; with
  ``empty="authors"`` Dice is 0, as the authors' ``2|A∩B| / (|A|+|B|+1e-5)`` gives, e.g. ET of most LGG cases);
* exactly one mask empty: Dice 0 and HD95 = ASSD = the length of the image diagonal,
  ``sqrt(sum((shape_i * spacing_i) ** 2))``, the largest distance possible in the volume (373.13 mm for
  240x240x155 at 1 mm, the BraTS 2021+ convention); sensitivity 0 (reference non-empty and prediction empty: no
  true positive found; reference empty and prediction non-empty: counted as a failure like Dice, not as undefined);
* specificity is TN / (TN + FP) and 1 when the reference fills the whole image (no negatives).

Uncertainty (``cldl evaluate --uncertainty``):

* calibration from the per-class probability maps, over the ``mask`` voxels (all voxels without a mask): the
  multi-class top-label ECE with 15 equal-width bins and the Brier score ``mean sum_k (p_k - [y = k])^2`` (region
  ``"all"``), and per region the same for the region's probability (the sum of its classes' probabilities);
* the QU-BraTS uncertainty score per region (Mehta et al., MELBA 2022; the thresholds, counts and areas follow the
  challenge's reference implementation): the uncertainty is put on a 0..100 scale, for the thresholds
  0, 2.5, ..., 100 (``num_points`` = 40 steps) the voxels above the threshold are removed, and the Dice of the rest,
  the ratio of filtered true positives and the ratio of filtered true negatives (both inside the brain mask) give
  three curves; their areas (divided by 100) combine as ``(AUC_Dice + (1 - AUC_FTP) + (1 - AUC_FTN)) / 3``. The
  uncertainty map is used for every region; without one, each region's normalised binary entropy.

Speed: surface distances are computed on the bounding box of ``pred | ref`` only (exactly equivalent, see
``_cropped``), so a 240x240x155 volume with a small structure costs milliseconds; no float64 copy of a whole volume
is made (float64 arrays of the box only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cldl.tasks import Task

METRICS = ("dice", "hd95", "assd", "sensitivity", "specificity")
EMPTY_RULES = ("brats", "authors")  # both masks empty: Dice 1 (BraTS) or 0 (the authors' 2|A∩B| / (|A|+|B|+1e-5))
ECE_BINS = 15
QU_POINTS = 40
QU_EPS = float(np.finfo(np.float32).eps)  # as the QU-BraTS reference implementation
LESION_METRICS = ("lw_dice", "lw_hd95", "lesions_tp", "lesions_fp", "lesions_fn", "lesions_f1")
LESION_MATCH_DICE = 1e-6  # the official glioma config: MaxBipartiteMatching on DSC, matching_threshold 0.000001
LESION_HD95_PENALTY = 373.0  # what the official report writes for an infinite HD95 ("diameter of the SRI cube")


# --------------------------------------------------------------------------------------------------------------
# helpers


def _as_bool(array: np.ndarray) -> np.ndarray:
    """A boolean view/copy of a mask (non-zero = foreground)."""
    array = np.asarray(array)
    return array if array.dtype == np.bool_ else array != 0


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as booleans of the same shape, or a ValueError."""
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    return pred, ref


def _spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    """Spacing as a tuple of ``ndim`` positive floats (None = 1 per axis)."""
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        values = (float(spacing),) * ndim
    else:
        values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {tuple(values)} has {len(values)} values for a {ndim}D array")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {tuple(values)} must be positive")
    return values


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The tight bounding box of the True voxels, or None when there is none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other) if other else mask)
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length (mm) of the image diagonal: the distance used when exactly one mask is empty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _border(mask: np.ndarray) -> np.ndarray:
    """Voxels of a mask with a face neighbour outside it or outside the array (``mask ^ erosion``, as medpy)."""
    inner = mask[(slice(1, -1),) * mask.ndim].copy()
    for axis in range(mask.ndim):
        for lo, hi in ((0, -2), (2, None)):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(lo, hi)
            inner &= mask[tuple(index)]
    border = mask.copy()
    border[(slice(1, -1),) * mask.ndim] ^= inner
    return border


def _first_pass(features: np.ndarray, weight2: float, axis: int) -> np.ndarray:
    """Squared 1D distance along ``axis`` to the nearest feature voxel (inf where the line has none)."""
    n = features.shape[axis]
    shape = [1] * features.ndim
    shape[axis] = n
    index = np.arange(n, dtype=np.int32).reshape(shape)
    big = np.int32(4 * n + 4)
    before = np.maximum.accumulate(np.where(features, index, -big), axis=axis)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(features, index, big), axis), axis=axis), axis)
    steps = np.minimum(index - before, after - index)
    return np.where(steps <= n, np.square(steps, dtype=np.float64) * weight2, np.inf)


def _envelope_pass(f: np.ndarray, weight2: float, axis: int) -> np.ndarray:
    """One exact pass ``g(x) = min_y f(y) + w2 * (x - y)**2`` along ``axis``.

    Felzenszwalb-Huttenlocher lower envelope of parabolas, vectorised over all lines at once: the envelope of each
    line is a linked list (``prev``) so that pushes are dense row writes and only pops need gathers.
    """
    moved = np.moveaxis(f, axis, 0)
    n = moved.shape[0]
    flat = moved.reshape(n, -1)
    out = np.full(flat.shape, np.inf)
    live = np.flatnonzero(np.isfinite(flat).any(axis=0))
    if not live.size:
        return np.moveaxis(out.reshape(moved.shape), 0, axis)
    g = flat[:, live]
    lines = g.shape[1]
    positions = np.arange(n, dtype=np.float64)
    h = g + weight2 * np.square(positions)[:, None]  # f(q) + w2 q², inf where there is no parabola
    prev = np.empty((n, lines), dtype=np.int32)  # parabola below q on the envelope when q was pushed
    left = np.empty((n, lines))  # left end of the interval where parabola q is lowest
    top = np.full(lines, -1, dtype=np.int32)  # rightmost parabola of the envelope so far
    top_h = np.full(lines, np.inf)
    top_left = np.full(lines, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        for q in range(n):
            hq = h[q]
            has = np.isfinite(hq)
            s = (hq - top_h) / (2.0 * weight2 * (q - top))
            pop = np.flatnonzero(has & (s <= top_left) & (top >= 0))
            while pop.size:
                below = prev[top[pop], pop]
                top[pop] = below
                top_h[pop] = h[below, pop]
                top_left[pop] = left[below, pop]
                s[pop] = (hq[pop] - top_h[pop]) / (2.0 * weight2 * (q - below))
                pop = pop[s[pop] <= top_left[pop]]  # the bottom parabola has left = -inf: never popped
            s[top < 0] = -np.inf
            prev[q] = top
            left[q] = s
            top = np.where(has, q, top).astype(np.int32, copy=False)
            top_h = np.where(has, hq, top_h)
            top_left = np.where(has, s, top_left)
    # walk each envelope from right to left
    cols = np.arange(lines)
    cur = top
    cur_left = top_left
    cur_g = g[cur, cols]
    result = np.empty_like(g)
    for x in range(n - 1, -1, -1):
        move = np.flatnonzero(cur_left > x)
        while move.size:
            below = prev[cur[move], move]
            cur[move] = below
            cur_left[move] = left[below, move]
            cur_g[move] = g[below, move]
            move = move[cur_left[move] > x]
        result[x] = cur_g + weight2 * np.square(x - cur)
    out[:, live] = result
    return np.moveaxis(out.reshape(moved.shape), 0, axis)


def _squared_edt(features: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Exact squared Euclidean distance (float64) from every voxel to the nearest True voxel of ``features``."""
    order = sorted(range(features.ndim), key=lambda a: -features.shape[a])  # longest lines first: cheapest
    f = _first_pass(features, spacing[order[0]] ** 2, order[0])
    for axis in order[1:]:
        if f.shape[axis] > 1:
            f = _envelope_pass(f, spacing[axis] ** 2, axis)
    return f


def _cropped(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both masks cut to the bounding box of their union (None if both are empty).

    No margin is needed: :func:`_border` counts the array edge as outside, and a mask voxel on the edge of the
    union's box has its outward neighbour outside both masks anyway; every border voxel lies in the box, so the
    distance transform of the box is that of the whole image at the border voxels.
    """
    box = _bbox(pred | ref)
    if box is None:
        return None
    return pred[box], ref[box]


def _directed(borders_from: np.ndarray, borders_to: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances from each voxel of ``borders_from`` to the nearest voxel of ``borders_to``."""
    return np.sqrt(_squared_edt(borders_to, spacing)[borders_from])


def _distances_of_crop(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances of two non-empty masks already cropped to their union."""
    pb, rb = _border(pred), _border(ref)
    return _directed(pb, rb, spacing), _directed(rb, pb, spacing)


def _distance_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], which: Iterable[str]
) -> dict[str, float]:
    """HD95 and/or ASSD with the empty-set conventions (pred/ref full-size booleans)."""
    which = [m for m in which if m in ("hd95", "assd")]
    if not which:
        return {}
    crop = _cropped(pred, ref)
    if crop is None:
        return {m: 0.0 for m in which}
    p, r = crop
    if not p.any() or not r.any():
        return {m: _diagonal(pred.shape, spacing) for m in which}
    d_pr, d_rp = _distances_of_crop(p, r, spacing)
    pooled = np.concatenate([d_pr, d_rp])
    out = {}
    if "hd95" in which:
        out["hd95"] = float(np.percentile(pooled, 95))
    if "assd" in which:
        out["assd"] = float(pooled.mean())
    return out


def _check_empty_rule(empty: str) -> None:
    """A ValueError naming the rules when ``empty`` is not one."""
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty-region rule must be one of {list(EMPTY_RULES)}, got {empty!r}")


def _overlap_metrics(pred: np.ndarray, ref: np.ndarray, which: Iterable[str], empty: str = "brats") -> dict[str, float]:
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
    pred, ref = _check_pair(pred, ref)
    return _overlap_metrics(pred, ref, ("dice",), empty)["dice"]


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True positive rate |P∩R| / |R|; 1 when both are empty, 0 when exactly one is empty."""
    pred, ref = _check_pair(pred, ref)
    return _overlap_metrics(pred, ref, ("sensitivity",))["sensitivity"]


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True negative rate |~P∩~R| / |~R|; 1 when the reference has no negatives."""
    pred, ref = _check_pair(pred, ref)
    return _overlap_metrics(pred, ref, ("specificity",))["specificity"]


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of pred to ref's border and from each border voxel of ref to pred's."""
    pred, ref = _check_pair(pred, ref)
    spacing = _spacing(spacing, pred.ndim)
    crop = _cropped(pred, ref)
    if crop is None:
        return np.zeros(0), np.zeros(0)
    p, r = crop
    if not p.any() or not r.any():
        raise ValueError("surface distances are undefined when exactly one mask is empty (hd95/assd use a convention)")
    return _distances_of_crop(p, r, spacing)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """95th percentile of the pooled surface distances of both directions (as medpy.metric.binary.hd95)."""
    pred, ref = _check_pair(pred, ref)
    return _distance_metrics(pred, ref, _spacing(spacing, pred.ndim), ("hd95",))["hd95"]


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """Average symmetric surface distance: mean of the pooled distances of both directions (as medpy >= 0.5)."""
    pred, ref = _check_pair(pred, ref)
    return _distance_metrics(pred, ref, _spacing(spacing, pred.ndim), ("assd",))["assd"]


# --------------------------------------------------------------------------------------------------------------
# lesion-wise (BraTS 2024+: the official ``brats-evaluation`` package, panoptica's glioma configuration)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a 2D/3D mask, fully connected (26 neighbours in 3D, as cc3d's default): labels, count."""
    import SimpleITK as sitk

    mask = _as_bool(mask)
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
    pred, ref = _check_pair(pred, ref)
    spacing = _spacing(spacing, pred.ndim)
    box = _bbox(pred | ref)
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
        distances.append(_distance_metrics(pred_lesion, ref_lesion, spacing, ("hd95",))["hd95"])
    return {"lw_dice": float(np.mean([d for *_, d in pairs])), "lw_hd95": float(np.mean(distances)), **out}


# --------------------------------------------------------------------------------------------------------------
# regions, cases, folders


def region_metrics(
    pred_classes: np.ndarray,
    ref_classes: np.ndarray,
    task: Task,
    spacing: Sequence[float] | float | None = None,
    metrics: Sequence[str] = METRICS,
    empty: str = "brats",
) -> dict[str, dict[str, float]]:
    """Metrics of every task region (union of class indices) for two class-index maps: {region: {metric: value}};
    ``empty`` is the Dice of a region empty in both (:data:`EMPTY_RULES`; HD95/ASSD are 0 under both rules)."""
    pred_classes, ref_classes = np.asarray(pred_classes), np.asarray(ref_classes)
    if pred_classes.shape != ref_classes.shape:
        raise ValueError(f"prediction shape {pred_classes.shape} differs from reference shape {ref_classes.shape}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    spacing = _spacing(spacing, pred_classes.ndim)
    for name, arr in (("prediction", pred_classes), ("reference", ref_classes)):
        if arr.size and (arr.min() < 0 or arr.max() >= task.num_classes):
            raise ValueError(
                f"{name} has class indices outside 0..{task.num_classes - 1} of task {task.name!r}"
                " (map label values with task.labels_to_classes first)"
            )
    # every region is a subset of the foreground: crop once to the union of both foregrounds
    box = _bbox((pred_classes != 0) | (ref_classes != 0))
    full_shape, full_size = pred_classes.shape, pred_classes.size
    if box is not None:
        pred_classes, ref_classes = pred_classes[box], ref_classes[box]
    result: dict[str, dict[str, float]] = {}
    for region in task.regions:
        classes = np.asarray(region.classes)
        p = np.isin(pred_classes, classes) if box is not None else np.zeros((1,) * len(full_shape), bool)
        r = np.isin(ref_classes, classes) if box is not None else np.zeros_like(p)
        values = _overlap_metrics(p, r, metrics, empty)
        if "specificity" in values:  # the crop's negatives are not all the image's negatives
            negatives = full_size - int(np.count_nonzero(r))
            fp = int(np.count_nonzero(p & ~r))
            values["specificity"] = 1.0 if negatives == 0 else (negatives - fp) / negatives
        distances = _distance_metrics(p, r, spacing, metrics)
        if distances and (p.any() != r.any()):  # diagonal of the whole image, not of the crop
            distances = {m: _diagonal(full_shape, spacing) for m in distances}
        values.update(distances)
        result[region.name] = {m: float(values[m]) for m in metrics}
    return result


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
    select = np.ones(np.shape(classes), bool) if mask is None else _as_bool(mask)
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
    select = np.ones(np.shape(truth), bool) if mask is None else _as_bool(mask)
    p = np.asarray(probability, dtype=np.float64)[select]
    y = _as_bool(truth)[select]
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
    truth, pred = _check_pair(pred, truth)[::-1]
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != truth.shape:
        raise ValueError(f"uncertainty {u.shape} does not match the labels {truth.shape}")
    inside = np.ones(truth.shape, bool) if mask is None else _as_bool(mask)
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

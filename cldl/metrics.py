"""Segmentation metrics: Dice, HD95, ASSD, sensitivity and specificity, per task region, per case and summarised.

All functions take boolean (or 0/non-0) numpy arrays of the same shape and a voxel ``spacing`` in array axis order
(``Geometry.spacing_zyx`` for arrays read with :func:`cldl.io.read_image`); distances are in the unit of the spacing
(mm). Surface distances follow ``medpy.metric.binary`` exactly: the border of a mask is the set of its voxels that
have a face neighbour (6-connectivity in 3D) outside the mask, the image edge counting as outside; the distance
from a border voxel to the other mask is the exact Euclidean distance (anisotropic spacing honoured) to the nearest
border voxel of the other mask, computed in float64 by a separable exact distance transform (no scipy needed).

* ``hd95``: the 95th percentile (numpy's linear interpolation) of the distances of both directions pooled.
* ``assd``: the mean of the distances of both directions pooled, i.e. (sum d(a, B) + sum d(b, A)) / (|A| + |B|),
  the standard ASSD and what medpy >= 0.5 computes (medpy < 0.5 averaged the two directed means instead).

Empty-set conventions (medpy raises or returns 0 here; challenge evaluations use these):

* both masks empty: Dice 1, HD95 0, ASSD 0, sensitivity 1, specificity 1;
* exactly one mask empty: Dice 0 and HD95 = ASSD = the length of the image diagonal,
  ``sqrt(sum((shape_i * spacing_i) ** 2))``, the largest distance possible in the volume (373.13 mm for
  240x240x155 at 1 mm, the BraTS 2021+ convention); sensitivity 0 (reference non-empty and prediction empty: no
  true positive found; reference empty and prediction non-empty: counted as a failure like Dice, not as undefined);
* specificity is TN / (TN + FP) and 1 when the reference fills the whole image (no negatives).

Speed: surface distances are computed on the bounding box of ``pred | ref`` only (exactly equivalent, see
``_cropped``), so a 240x240x155 volume with a small structure costs milliseconds; no float64 copy of a whole volume
is made (float64 arrays of the box only).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cldl.io import IMAGE_SUFFIXES, is_image_path, read_image
from cldl.tasks import Task

METRICS = ("dice", "hd95", "assd", "sensitivity", "specificity")
CASE_SUFFIX = re.compile(r"_(seg|label|pred)$", re.IGNORECASE)


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


def _overlap_metrics(pred: np.ndarray, ref: np.ndarray, which: Iterable[str]) -> dict[str, float]:
    """Dice, sensitivity and specificity with the empty-set conventions."""
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp = n_pred - tp
    negatives = pred.size - n_ref
    out = {}
    for m in which:
        if m == "dice":
            out[m] = 1.0 if n_pred + n_ref == 0 else 2.0 * tp / (n_pred + n_ref)
        elif m == "sensitivity":
            out[m] = (1.0 if n_pred == 0 else 0.0) if n_ref == 0 else tp / n_ref
        elif m == "specificity":
            out[m] = 1.0 if negatives == 0 else (negatives - fp) / negatives
    return out


# --------------------------------------------------------------------------------------------------------------
# binary metrics


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1 when both masks are empty."""
    pred, ref = _check_pair(pred, ref)
    return _overlap_metrics(pred, ref, ("dice",))["dice"]


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
# regions, cases, folders


def region_metrics(
    pred_classes: np.ndarray,
    ref_classes: np.ndarray,
    task: Task,
    spacing: Sequence[float] | float | None = None,
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, float]]:
    """Metrics of every task region (union of class indices) for two class-index maps: {region: {metric: value}}."""
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
        values = _overlap_metrics(p, r, metrics)
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


def case_id(path: str | Path) -> str:
    """Case id of an image file: the name minus its image suffix minus a trailing ``_seg``/``_label``/``_pred``."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return CASE_SUFFIX.sub("", name)


def evaluate_pair(pred_path: str | Path, ref_path: str | Path, task: Task) -> dict[str, Any]:
    """Metrics of one prediction against one reference label image (task label values): {"case", "regions"}."""
    pred_labels, pred_geometry = read_image(pred_path)
    ref_labels, ref_geometry = read_image(ref_path)
    if not pred_geometry.matches(ref_geometry):
        raise ValueError(
            f"geometry of prediction {pred_path} (size {pred_geometry.size}, spacing {pred_geometry.spacing}, "
            f"origin {pred_geometry.origin}) does not match reference {ref_path} (size {ref_geometry.size}, "
            f"spacing {ref_geometry.spacing}, origin {ref_geometry.origin}); resample the prediction first"
        )
    classes = []
    for path, labels in ((pred_path, pred_labels), (ref_path, ref_labels)):
        try:
            classes.append(task.labels_to_classes(labels, unknown="error"))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return {
        "case": case_id(ref_path),
        "regions": region_metrics(classes[0], classes[1], task, ref_geometry.spacing_zyx),
    }


def _images_by_id(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by case id; a ValueError if two files share an id."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_image_path(path):
            cid = case_id(path)
            if cid in found:
                raise ValueError(f"{folder}: {found[cid].name} and {path.name} have the same case id {cid!r}")
            found[cid] = path
    return found


def evaluate_folders_or_files(pred: str | Path, ref: str | Path, task: Task) -> list[dict[str, Any]]:
    """Evaluate one prediction file against one reference file, or every reference of a folder against the
    prediction with the same case id in another folder."""
    pred, ref = Path(pred), Path(ref)
    for what, path in (("prediction", pred), ("reference", ref)):
        if not path.exists():
            raise ValueError(f"{what} {path}: no such file or folder")
    if pred.is_file() and ref.is_file():
        return [evaluate_pair(pred, ref, task)]
    if not (pred.is_dir() and ref.is_dir()):
        raise ValueError(f"give two files or two folders, not {pred} and {ref}")
    preds, refs = _images_by_id(pred), _images_by_id(ref)
    if not refs:
        raise ValueError(f"{ref}: no reference images ({', '.join(IMAGE_SUFFIXES)})")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise ValueError(f"{pred}: no prediction for the reference case(s) {missing}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        warnings.warn(f"{pred}: predictions without a reference are ignored: {extra}", stacklevel=2)
    return [evaluate_pair(preds[cid], refs[cid], task) for cid in sorted(refs)]


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

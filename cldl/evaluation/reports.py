"""Evaluating files: case matching, per-case evaluation and the CSV / Markdown reports of ``cldl evaluate``.

The metric functions live in :mod:`cldl.evaluation.regions` and the modules it names; this module finds the cases
(two files, two folders, or a dataset folder as reference), reads them on one grid, applies the options of an
evaluation (the empty-region rule, the enhancing-tumour post-processing) and writes the reports.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cldl.evaluation.calibration import (
    ECE_BINS,
    QU_POINTS,
    binary_calibration,
    binary_entropy_uncertainty,
    calibration,
    qu_brats_score,
    uncertainty_percent,
)
from cldl.evaluation.lesions import lesion_wise_metrics
from cldl.evaluation.regions import region_metrics
from cldl.files.atomic_writes import atomic_path
from cldl.files.geometry import Geometry, labels_on_grid
from cldl.files.images import IMAGE_SUFFIXES, SEG_SUFFIX, is_image_path, read_channels, read_image, strip_image_suffix
from cldl.files.label_maps import read_labels
from cldl.tasks import Task

CASE_SUFFIX = re.compile(r"_(seg|label|pred)$", re.IGNORECASE)
MAP_SUFFIX = re.compile(r"_(uncertainty|probabilities|probs|prob)$", re.IGNORECASE)
MASK_SUFFIX = re.compile(r"_(brain_?mask|mask)$", re.IGNORECASE)
ET_CLASS, NCR_CLASS = 3, 1  # BraTS classes (labels 4 and 1)
METRIC_LABELS = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ece": "ECE",
    "brier": "Brier",
    "unc_auc_dice": "AUC Dice",
    "unc_auc_ftp": "AUC FTP",
    "unc_auc_ftn": "AUC FTN",
    "unc_score": "QU-BraTS score",
    "lw_dice": "Lesion-wise Dice",
    "lw_hd95": "Lesion-wise HD95 (mm)",
    "lesions_tp": "Lesions TP",
    "lesions_fp": "Lesions FP",
    "lesions_fn": "Lesions FN",
    "lesions_f1": "Lesion F1",
}
LESION_WISE_RULES = (
    "lesion-wise (official brats-evaluation, config gli): fully connected components, one-to-one matching "
    "maximising Dice (Dice >= 1e-6), lesion-wise Dice/HD95 = means over matched lesions, no match: Dice 0, "
    "HD95 373; unmatched lesions in the lesion F1; both empty: not counted"
)


def case_id(path: str | Path) -> str:
    """Case id of an image file: the name minus its image suffix minus a trailing ``_seg``/``_label``/``_pred``."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return CASE_SUFFIX.sub("", name)


# --------------------------------------------------------------------------------------------------------------
# evaluating files


@dataclass
class EvaluationCase:
    """The files of one evaluated case."""

    case: str
    pred: Path
    ref: Path
    probabilities: Path | None = None
    uncertainty: Path | None = None
    mask: Path | None = None
    mask_channel: int = 0
    label_map: tuple[tuple[int, int], ...] = ()
    unknown_labels: str = "error"


def _read_classes(
    path: Path, task: Task, label_map: tuple[tuple[int, int], ...] = (), unknown: str = "error"
) -> tuple[np.ndarray, Geometry]:
    """Class indices of a label file (label image or .seg.nrrd), with an optional value map."""
    from ..data.cases import map_label_values

    try:
        labels, geometry = read_labels(path, task)
        labels = map_label_values(labels, label_map)
        return task.labels_to_classes(labels, unknown=unknown), geometry
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _is_seg(path: Path) -> bool:
    """Whether a path names a Slicer segmentation file."""
    return path.name.lower().endswith(SEG_SUFFIX)


def _same_grid(path: Path, geometry: Geometry, ref_path: Path, ref_geometry: Geometry, what: str) -> None:
    """A ValueError when a file is not on the reference grid."""
    if not geometry.matches(ref_geometry):
        raise ValueError(
            f"geometry of {what} {path} ({geometry.describe(ref_geometry)}) does not match reference {ref_path} "
            f"({ref_geometry.describe(geometry)}); resample the {what} first"
        )


def relabel_small_et(classes: np.ndarray, task: Task, min_voxels: int) -> np.ndarray:
    """BraTS post-processing: a predicted enhancing tumour (class 3) of fewer than ``min_voxels`` voxels becomes
    necrosis (class 1), as the authors' ``postprocessing_brats`` and many BraTS entries do; other tasks unchanged."""
    if min_voxels <= 0 or task.name != "brats":
        return classes
    enhancing = classes == ET_CLASS
    if 0 < int(np.count_nonzero(enhancing)) < min_voxels:
        classes = np.where(enhancing, NCR_CLASS, classes).astype(classes.dtype)
    return classes


def conventions(
    empty: str = "brats", et_min_voxels: int = 0, lesion_wise: bool = False, hd95_rule: str = "pooled"
) -> dict[str, Any]:
    """The conventions of an evaluation, as every summary reports them."""
    both = "Dice 1, HD95/ASSD 0" if empty == "brats" else "Dice 0 (the authors' Dice), HD95/ASSD 0"
    out: dict[str, Any] = {
        "empty_regions": empty,
        "empty": f"both empty: {both}; one empty: Dice 0, HD95/ASSD = image diagonal (mm)",
    }
    if hd95_rule != "pooled":
        out["hd95"] = "HD95: the larger of the two directed 95th percentiles (robust Hausdorff)"
    if et_min_voxels > 0:
        out["et_postprocess"] = f"predicted ET below {et_min_voxels} voxels relabelled as necrosis"
    if lesion_wise:
        out["lesion_wise"] = LESION_WISE_RULES
    return out


def evaluate_case(
    item: EvaluationCase,
    task: Task,
    bins: int = ECE_BINS,
    num_points: int = QU_POINTS,
    empty: str = "brats",
    et_min_voxels: int = 0,
    lesion_wise: bool = False,
    hd95_rule: str = "pooled",
) -> dict[str, Any]:
    """Metrics of one case: overlap and distances per region; with probabilities, calibration (per region and
    multi-class as region ``"all"``); with an uncertainty map or probabilities, the QU-BraTS score per region.

    ``empty``: the Dice of a region empty in both (:data:`cldl.evaluation.overlap.EMPTY_RULES`); ``et_min_voxels``
    > 0 applies :func:`relabel_small_et` to the prediction first; ``lesion_wise`` adds
    :func:`cldl.evaluation.lesions.lesion_wise_metrics` per region; ``hd95_rule``:
    :data:`cldl.evaluation.distances.HD95_RULES`."""
    pred_classes, pred_geometry = _read_classes(item.pred, task)
    ref_classes, ref_geometry = _read_classes(item.ref, task, item.label_map, item.unknown_labels)
    if not pred_geometry.matches(ref_geometry):  # Slicer crops a .seg.nrrd to its segments' extent
        placed = labels_on_grid(pred_classes, pred_geometry, ref_geometry) if _is_seg(item.pred) else None
        if placed is not None:
            pred_classes = placed
        elif _is_seg(item.ref) and (placed := labels_on_grid(ref_classes, ref_geometry, pred_geometry)) is not None:
            ref_classes, ref_geometry = placed, pred_geometry
        else:
            _same_grid(item.pred, pred_geometry, item.ref, ref_geometry, "prediction")
    pred_classes = relabel_small_et(pred_classes, task, et_min_voxels)
    spacing = ref_geometry.spacing_zyx
    regions = region_metrics(pred_classes, ref_classes, task, spacing, empty=empty, hd95_rule=hd95_rule)
    if lesion_wise:
        for region in task.regions:
            classes = np.asarray(region.classes)
            regions[region.name].update(
                lesion_wise_metrics(
                    np.isin(pred_classes, classes), np.isin(ref_classes, classes), ref_geometry.spacing_zyx
                )
            )
    result: dict[str, Any] = {"case": item.case, "regions": regions}
    if item.probabilities is None and item.uncertainty is None:
        return result
    mask = None
    if item.mask is not None:
        channels, mask_geometry = read_channels(item.mask)
        _same_grid(item.mask, mask_geometry, item.ref, ref_geometry, "mask")
        mask = channels[min(item.mask_channel, channels.shape[0] - 1)] != 0
    probabilities = None
    if item.probabilities is not None:
        probabilities, geometry = read_channels(item.probabilities, np.float32)
        _same_grid(item.probabilities, geometry, item.ref, ref_geometry, "probabilities")
        _check_range(item.probabilities, probabilities, 1.0, "probabilities lie in 0..1")
        if probabilities.shape[0] != task.num_classes:
            raise ValueError(
                f"{item.probabilities}: {probabilities.shape[0]} probability maps; task {task.name} has "
                f"{task.num_classes} classes"
            )
        result["regions"]["all"] = calibration(probabilities, ref_classes, mask, bins)
    uncertainty = None
    if item.uncertainty is not None:
        values, geometry = read_image(item.uncertainty, np.float32)
        _same_grid(item.uncertainty, geometry, item.ref, ref_geometry, "uncertainty map")
        _check_range(item.uncertainty, values, 100.0, "an uncertainty map holds values in 0..1 (or 0..100)")
        uncertainty = uncertainty_percent(values)
    result["uncertainty_source"] = "map" if uncertainty is not None else "probabilities"
    for region in task.regions:
        classes = np.asarray(region.classes)
        truth, pred = np.isin(ref_classes, classes), np.isin(pred_classes, classes)
        values: dict[str, float] = {}
        region_probability = None
        if probabilities is not None:
            region_probability = probabilities[list(region.classes)].sum(axis=0)
            values.update(binary_calibration(region_probability, truth, mask, bins))
        region_uncertainty = uncertainty
        if region_uncertainty is None and region_probability is not None:
            region_uncertainty = uncertainty_percent(binary_entropy_uncertainty(region_probability))
        values.update(qu_brats_score(truth, pred, region_uncertainty, mask, num_points))
        regions[region.name].update(values)
    return result


def _check_range(path: Path, values: np.ndarray, top: float, rule: str) -> None:
    """Refuse a map with values outside ``[0, top]`` (an image given by mistake) or NaN/Inf voxels."""
    if not values.size:
        return
    low, high = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > top + 1e-3:
        raise ValueError(f"{path}: values run from {low:.4g} to {high:.4g}, but {rule}; is it the right file?")


def evaluate_pair(pred_path: str | Path, ref_path: str | Path, task: Task) -> dict[str, Any]:
    """Metrics of one prediction against one reference label image (task label values): {"case", "regions"}."""
    return evaluate_case(EvaluationCase(case_id(ref_path), Path(pred_path), Path(ref_path)), task)


def _images_by_id(folder: Path, pattern: re.Pattern | None = None) -> dict[str, Path]:
    """Image files of a folder keyed by case id (maps such as ``_uncertainty`` left out unless ``pattern`` selects
    them); a ValueError if two files share an id."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_image_path(path)):
            continue
        stem = strip_image_suffix(path.name)
        if pattern is None:
            if MAP_SUFFIX.search(stem):
                continue
            cid = case_id(path)
        else:
            match = pattern.search(stem)
            if match is None:
                continue
            cid = CASE_SUFFIX.sub("", stem[: match.start()])
        if cid in found:
            raise ValueError(f"{folder}: {found[cid].name} and {path.name} have the same case id {cid!r}")
        found[cid] = path
    return found


def _references(ref: Path, task: Task) -> dict[str, tuple[Path, tuple[tuple[int, int], ...], str]]:
    """Reference label maps by case id: a dataset folder in any known layout (its label-value mapping applied,
    e.g. MSD -> BraTS), or a folder of label files."""
    from ..data.discovery import detect_dataset
    from ..data.preprocess import InputError

    try:
        dataset = detect_dataset(ref, task)
    except InputError:
        dataset = None
    if dataset is not None and dataset.labelled:
        return {c.case_id: (c.label, c.label_map, c.unknown_labels) for c in dataset.labelled}  # type: ignore[misc]
    return {cid: (path, (), "error") for cid, path in _images_by_id(ref).items()}


def _maps(setting: str | Path | None, pred: Path, kind: str, ids: Sequence[str]) -> dict[str, Path]:
    """Uncertainty or probability maps by case id: ``"auto"`` looks next to the predictions
    (``<case>_uncertainty.*``, ``<case>_probabilities.*``), a folder is matched by case id, a file is the map of
    a single case."""
    if setting is None:
        return {}
    pattern = re.compile(rf"_({kind})$", re.IGNORECASE)
    if str(setting) == "auto":
        folder = pred if pred.is_dir() else pred.parent
        found = _images_by_id(folder, pattern)
        if pred.is_file():
            stem = case_id(pred)
            found = {ids[0]: found[stem]} if stem in found else {}
        return found
    path = Path(setting)
    if path.is_file():
        if len(ids) != 1:
            raise ValueError(f"{path}: one map file for {len(ids)} cases; give a folder of maps")
        return {ids[0]: path}
    if path.is_dir():
        by_id = _images_by_id(path, pattern)
        return by_id or _images_by_id(path)
    raise ValueError(f"{path}: no such file or folder")


def _masks(setting: str | Path | None, task: Task, ids: Sequence[str]) -> dict[str, tuple[Path, int]]:
    """Brain masks by case id: a file (one case), a folder of masks (``<case>_mask``), or a dataset folder whose
    first modality's non-zero voxels are used (as the QU-BraTS evaluation does with the T1 image)."""
    if setting is None:
        return {}
    from ..data.discovery import detect_dataset
    from ..data.preprocess import InputError

    path = Path(setting)
    if path.is_file():
        if len(ids) != 1:
            raise ValueError(f"{path}: one mask file for {len(ids)} cases; give a folder")
        return {ids[0]: (path, 0)}
    if not path.is_dir():
        raise ValueError(f"mask {path}: no such file or folder")
    try:
        dataset = detect_dataset(path, task)
        return {c.case_id: (c.images[0], (c.channels or (0,))[0]) for c in dataset.cases}
    except InputError:
        return {cid: (p, 0) for cid, p in _images_by_id(path, MASK_SUFFIX).items()} or {
            cid: (p, 0) for cid, p in _images_by_id(path).items()
        }


def match_cases(
    pred: str | Path,
    ref: str | Path,
    task: Task,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    mask: str | Path | None = None,
) -> list[EvaluationCase]:
    """Pair predictions with references (two files, or two folders matched by case id) and attach maps."""
    pred, ref = Path(pred), Path(ref)
    for what, path in (("prediction", pred), ("reference", ref)):
        if not path.exists():
            raise ValueError(f"{what} {path}: no such file or folder")
    if pred.is_file() and ref.is_file():
        items = [EvaluationCase(case_id(ref), pred, ref)]
    elif pred.is_dir() and ref.is_dir():
        preds, refs = _images_by_id(pred), _references(ref, task)
        if not refs:
            raise ValueError(f"{ref}: no reference images ({', '.join(IMAGE_SUFFIXES)})")
        missing = sorted(set(refs) - set(preds))
        if missing:
            raise ValueError(f"{pred}: no prediction for the reference case(s) {missing}")
        extra = sorted(set(preds) - set(refs))
        if extra:
            warnings.warn(f"{pred}: predictions without a reference are ignored: {extra}", stacklevel=3)
        items = [
            EvaluationCase(cid, preds[cid], refs[cid][0], label_map=refs[cid][1], unknown_labels=refs[cid][2])
            for cid in sorted(refs)
        ]
    else:
        raise ValueError(f"give two files or two folders, not {pred} and {ref}")
    ids = [item.case for item in items]
    probability_maps = _maps(probabilities, pred, "probabilities|probs|prob", ids)
    uncertainty_maps = _maps(uncertainty, pred, "uncertainty", ids)
    masks = _masks(mask, task, ids)
    for name, found, given in (
        ("probability map", probability_maps, probabilities),
        ("uncertainty map", uncertainty_maps, uncertainty),
        ("mask", masks, mask),
    ):
        missing = sorted(set(ids) - set(found))
        if given is not None and missing and (str(given) != "auto" or found):
            where = (
                f"next to the predictions in {pred if pred.is_dir() else pred.parent}"
                if str(given) == "auto"
                else given
            )
            raise ValueError(f"{where}: no {name} for the case(s) {missing}")
    if str(uncertainty) == "auto" and not uncertainty_maps and not probability_maps:
        raise ValueError(
            f"{pred}: no <case>_uncertainty or <case>_probabilities maps next to the predictions; "
            "give --uncertainty PATH or --probabilities PATH (cldl segment --uncertainty/--probabilities writes them)"
        )
    for item in items:
        item.probabilities = probability_maps.get(item.case)
        item.uncertainty = uncertainty_maps.get(item.case)
        if item.case in masks:
            item.mask, item.mask_channel = masks[item.case]
    return items


def evaluate_folders_or_files(
    pred: str | Path,
    ref: str | Path,
    task: Task,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    mask: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    empty: str = "brats",
    et_min_voxels: int = 0,
    lesion_wise: bool = False,
    hd95_rule: str = "pooled",
) -> list[dict[str, Any]]:
    """Evaluate one prediction file against one reference file, or every reference of a folder (a folder of label
    files, or a dataset folder in any layout cldl reads) against the prediction with the same case id.

    With folders, a case that cannot be evaluated (a damaged or unreadable file, another grid) is returned as
    ``{"case", "error"}`` and the other cases are still evaluated; with two files its error is raised.
    """
    items = match_cases(pred, ref, task, probabilities, uncertainty, mask)
    results = []
    for index, item in enumerate(items):
        try:
            options = {"empty": empty, "et_min_voxels": et_min_voxels, "lesion_wise": lesion_wise}
            results.append(evaluate_case(item, task, **options, hd95_rule=hd95_rule))
        except ValueError as exc:
            if not Path(pred).is_dir():
                raise
            results.append({"case": item.case, "error": str(exc).strip().splitlines()[0]})
        if progress is not None:
            progress(index + 1, len(items))
    return results


# --------------------------------------------------------------------------------------------------------------
# reports


def _metric_order(results: Sequence[dict[str, Any]]) -> list[str]:
    """Every metric that occurs, in the canonical order."""
    present = {m for r in results for values in r["regions"].values() for m in values}
    return [m for m in METRIC_LABELS if m in present] + sorted(present - set(METRIC_LABELS))


def result_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case and region: ``{"case", "region", metric: value, ...}``."""
    return [{"case": r["case"], "region": region, **values} for r in results for region, values in r["regions"].items()]


def write_csv(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The per-case CSV: columns case, region, then every metric (empty where it does not apply)."""
    path = Path(path)
    metrics = _metric_order(results)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "region", *metrics])
        for row in result_rows(results):
            writer.writerow(
                [row["case"], row["region"], *("" if row.get(m) is None else f"{row[m]:.6g}" for m in metrics)]
            )
    return path


def markdown_table(summary: dict[str, dict[str, dict[str, float]]], n_cases: int, task_name: str) -> str:
    """The summary as a Markdown table: one row per region, ``mean ± std`` per metric."""
    metrics = [m for m in METRIC_LABELS if any(m in values for values in summary.values())]
    metrics += sorted({m for values in summary.values() for m in values} - set(metrics))
    lines = [
        f"{n_cases} case(s), task {task_name}: mean ± std over cases",
        "",
        "| region | " + " | ".join(METRIC_LABELS.get(m, m) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for region, values in summary.items():
        cells = []
        for m in metrics:
            stats = values.get(m)
            if stats is None or math.isnan(stats["mean"]):
                cells.append("–")
            else:
                digits = 2 if m in ("hd95", "assd") else 4
                cells.append(f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}")
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

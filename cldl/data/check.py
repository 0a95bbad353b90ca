"""``cldl datasets check``: every file of every case read, and every problem found reported (:func:`check_dataset`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..files.geometry import labels_on_grid, overlap_fraction
from ..files.images import SEG_SUFFIX, ImageError, read_channels
from ..files.label_maps import read_labels
from ..tasks import Task
from .cases import mapped_label_values, mixup_problems, modality_arrays
from .layouts import CaseFiles, Dataset
from .preprocess import InputError, image_problems

# --------------------------------------------------------------------------------------------------------------
# checking


@dataclass
class CheckReport:
    """What ``cldl datasets check`` found."""

    dataset: Dataset
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_values: dict[int, int] = field(default_factory=dict)  # value (as in the files) -> number of cases
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    sizes: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = self.dataset
        return {
            "root": str(d.root),
            "layout": d.layout,
            "description": d.description,
            "task": d.task.name,
            "modalities": list(d.task.modalities),
            "cases": len(d.cases),
            "labelled": len(d.labelled),
            "label_values": {str(k): v for k, v in sorted(self.label_values.items())},
            "notes": d.notes,
            "problems": self.problems,
            "warnings": self.warnings,
            "ok": self.ok,
        }

    def lines(self) -> list[str]:
        """The human-readable report."""
        d = self.dataset
        out = [
            f"dataset: {d.root}",
            f"layout: {d.layout} - {d.description}",
            f"task: {d.task.name} (labels {', '.join(map(str, d.task.label_values))})",
            f"cases: {len(d.cases)} ({len(d.labelled)} with a label map, {len(d.cases) - len(d.labelled)} without)",
            f"modalities: {', '.join(d.task.modalities)} ({d.modality_files})",
        ]
        if self.label_values:
            found = ", ".join(f"{v} ({n} case{'s' if n != 1 else ''})" for v, n in sorted(self.label_values.items()))
            out.append(f"label values found: {found}")
        if self.spacings:
            spacing = np.asarray(self.spacings)
            low, high = spacing.min(axis=0), spacing.max(axis=0)
            out.append(
                "spacing (mm, x y z): "
                + " ".join(f"{a:.3g}" if a == b else f"{a:.3g}-{b:.3g}" for a, b in zip(low, high))
            )
            size = np.asarray(self.sizes)
            out.append(
                "size (x y z): "
                + " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(size.min(axis=0), size.max(axis=0)))
            )
        out += [f"note: {n}" for n in d.notes]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        out.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s) found")
        return out


def _check_case(case: CaseFiles, task: Task, report: CheckReport) -> None:
    """Read every file of a case and record every problem (never raises for data problems)."""
    prefix = f"case {case.case_id}: "
    arrays, geometries, names = [], [], []
    try:
        arrays, geometries, names = modality_arrays(case, task)
    except (ImageError, InputError) as exc:
        message = str(exc)
        report.problems.append(message if message.startswith("case ") else prefix + message)
        # keep checking the other files of the case one by one
        for path in case.images:
            if case.channels is None:
                try:
                    read_channels(path)
                except ImageError as inner:
                    if str(inner) not in message:
                        report.problems.append(prefix + str(inner))
        arrays = []
    if arrays and _same_shape(arrays):
        stacked = np.stack(arrays)
        errors, notes = mixup_problems(stacked, names)
        report.problems += [prefix + problem for problem in image_problems(stacked, names) + errors]
        report.warnings += [prefix + note for note in notes]
    if arrays and not _same_shape(arrays):
        for array, name in zip(arrays, names):
            for problem in image_problems(array[np.newaxis], [name]):
                report.problems.append(prefix + problem)
    reference = geometries[0] if arrays else None
    for geometry, name in zip(geometries[1:] if arrays else [], names[1:]):
        if not geometry.matches(reference):
            if overlap_fraction(geometry, reference) == 0.0:
                report.problems.append(prefix + f"{name} does not overlap {names[0]} ({geometry.describe()})")
            else:
                report.warnings.append(
                    prefix + f"{name} is not on the grid of {names[0]} ({geometry.describe(reference)} vs "
                    f"{reference.describe(geometry)}); it will be resampled onto it"
                )
    if reference is not None:
        report.spacings.append(reference.spacing)
        report.sizes.append(reference.size)
    if case.label is None:
        return
    try:
        raw, label_geometry = read_labels(case.label, task)
    except ImageError as exc:
        report.problems.append(prefix + str(exc))
        return
    for value in np.unique(raw).tolist():
        report.label_values[int(value)] = report.label_values.get(int(value), 0) + 1
    aligned = label_geometry.matches(reference) if reference is not None else True
    if not aligned and case.label.name.lower().endswith(SEG_SUFFIX):
        aligned = labels_on_grid(raw, label_geometry, reference) is not None
    if reference is not None and not aligned:
        if overlap_fraction(label_geometry, reference) == 0.0:
            report.problems.append(prefix + f"the label map does not overlap the images ({label_geometry.describe()})")
        else:
            report.warnings.append(
                prefix + f"the label map is not on the image grid ({label_geometry.describe(reference)} vs "
                f"{reference.describe(label_geometry)}); it will be resampled (nearest neighbour)"
            )
    try:
        _, notes = mapped_label_values(case, task, raw)
    except InputError as exc:
        report.problems.append(str(exc))
    else:
        report.warnings += [prefix + n for n in notes]


def _same_shape(arrays: list[np.ndarray]) -> bool:
    """Whether all arrays have the same shape."""
    return len({a.shape for a in arrays}) == 1


def check_dataset(dataset: Dataset, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Read every file of every case and report every problem found (never stops at the first)."""
    report = CheckReport(dataset, problems=list(dataset.problems))
    if not dataset.cases and not dataset.problems:
        report.problems.append("no cases found")
    total = len(dataset.cases)
    for index, case in enumerate(dataset.cases):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # everything is reported in the report instead
            _check_case(case, dataset.task, report)
        if progress is not None:
            progress(index + 1, total)
    if dataset.cases and not dataset.labelled:
        report.warnings.append("no case has a label map: this dataset can be segmented and evaluated, not trained on")
    return report

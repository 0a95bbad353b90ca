"""Label maps: any label image, or a Slicer segmentation (``.seg.nrrd``) read and written with its segments.

A ``.seg.nrrd`` is read with its segment names, colours and overlapping layers (:func:`read_segmentation`) and
matched to a task's classes by the CLDL class tag or the segment name (:func:`read_labels`); outputs carry the task's
segment names and colours (:func:`write_segmentation`). Plain label images go through :mod:`cldl.files.images`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry
from .images import (
    SEG_SUFFIX,
    ImageError,
    check_3d,
    copy_nrrd_space,
    ensure_writable,
    image_output,
    lower_name,
    read_image,
    read_sitk,
    write_image,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks import Task

CLASS_TAG = "CLDL.Class"  # segment tag holding the class abbreviation (shared with CLDLSegmentationLib)


# --------------------------------------------------------------------------------------------------------------
# label maps and Slicer segmentations


@dataclass
class Segment:
    """One segment of a Slicer segmentation file."""

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Segmentation:
    """A ``.seg.nrrd`` file: one label layer per set of non-overlapping segments, ``(L, z, y, x)``."""

    layers: np.ndarray
    geometry: Geometry
    segments: list[Segment]

    def to_labels(self, task: Task | None = None, path: str | Path = "") -> np.ndarray:
        """One label map: the task's label value of each segment (matched by class tag, then name), or the
        file's label values when no task is given (single layer only)."""
        if task is None:
            if self.layers.shape[0] != 1:
                raise ImageError(f"{path}: overlapping segments in {self.layers.shape[0]} layers; a task is needed")
            return self.layers[0]
        values = _segment_values(self.segments, task, path)
        dtype = np.uint8 if max(task.label_values) <= 255 else np.int16
        out = np.zeros(self.layers.shape[1:], dtype=dtype)
        written = np.zeros(out.shape, dtype=bool)
        overlap = 0
        for segment, value in zip(self.segments, values):
            if not 0 <= segment.layer < self.layers.shape[0]:
                raise ImageError(f"{path}: segment {segment.name!r} refers to a missing layer {segment.layer}")
            mask = self.layers[segment.layer] == segment.label_value
            overlap += int(np.count_nonzero(mask & written))
            out[mask] = value
            written |= mask
        if overlap:
            warnings.warn(
                f"{path}: {overlap} voxels belong to several segments; the later segment's label was kept",
                stacklevel=2,
            )
        return out


def _norm(text: str) -> str:
    """Lower-case name with British/American spelling differences removed."""
    text = text.lower().replace("tumour", "tumor").replace("oedema", "edema").replace("_", " ").replace("-", " ")
    return " ".join(text.split())


def segment_names(task: Task) -> list[str]:
    """Segment names of a task's classes (index = class): ``"Peritumoral edema (ED)"``, as CLDLSegmentationLib."""
    names = []
    for index, name in enumerate(task.class_names):
        abbreviation = task.abbreviations[index] if index < len(task.abbreviations) else ""
        names.append(f"{name} ({abbreviation})" if abbreviation and abbreviation != name else name)
    return names


def _segment_values(segments: list[Segment], task: Task, path: str | Path) -> list[int]:
    """The task label value of each segment: by the CLDL class tag, then by name, then by label value."""
    keys: dict[str, int] = {}
    for index in range(1, task.num_classes):
        value = task.label_values[index]
        candidates = [task.class_names[index], segment_names(task)[index]]
        if index < len(task.abbreviations):
            candidates.append(task.abbreviations[index])
        for candidate in candidates:
            keys.setdefault(_norm(candidate), value)
    out: list[int | None] = []
    for segment in segments:
        tag = segment.tags.get(CLASS_TAG)
        value = keys.get(_norm(tag)) if tag else None
        if value is None:
            value = keys.get(_norm(segment.name))
        if value is None and segment.name.endswith(")") and "(" in segment.name:
            value = keys.get(_norm(segment.name.rsplit("(", 1)[1][:-1]))
        out.append(value)
    unmatched = [s for s, v in zip(segments, out) if v is None]
    if unmatched:
        if all(s.label_value in task.label_values[1:] for s in segments) and len(
            {s.label_value for s in segments}
        ) == len(segments):
            warnings.warn(
                f"{path}: segment names do not name {task.name} classes; using their label values "
                f"{[s.label_value for s in segments]}",
                stacklevel=3,
            )
            return [s.label_value for s in segments]
        names = ", ".join(repr(s.name) for s in unmatched)
        raise ImageError(
            f"{path}: segment(s) {names} match no class of task {task.name!r} "
            f"(expected names such as {', '.join(repr(n) for n in segment_names(task)[1:])})"
        )
    return [int(v) for v in out]  # type: ignore[arg-type]


def read_segmentation(path: str | Path) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (3D, or 4D with one layer per set of overlapping segments)."""
    image = read_sitk(path)
    check_3d(path, image)
    array = sitk.GetArrayFromImage(image)
    array = np.moveaxis(array, -1, 0) if image.GetNumberOfComponentsPerPixel() > 1 else array[np.newaxis]
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageError(f"{path}: a segmentation must hold integer voxels, not {array.dtype}")
    fields: dict[int, dict[str, str]] = {}
    for key in image.GetMetaDataKeys():
        if key.startswith("Segment") and "_" in key and key[7:].split("_", 1)[0].isdigit():
            index, name = key[7:].split("_", 1)
            fields.setdefault(int(index), {})[name] = image.GetMetaData(key)
    segments = []
    for index in sorted(fields):
        f = fields[index]
        try:
            color = tuple(float(c) for c in f.get("Color", "0.5 0.5 0.5").split()[:3])
            tags = {}
            for item in f.get("Tags", "").split("|"):
                if ":" in item:
                    key, value = item.split(":", 1)
                    tags[key] = value
            segments.append(
                Segment(
                    id=f.get("ID", f"Segment_{index + 1}"),
                    name=f.get("Name", f.get("ID", f"Segment_{index + 1}")),
                    label_value=int(f.get("LabelValue", index + 1)),
                    layer=int(f.get("Layer", 0)),
                    color=color,  # type: ignore[arg-type]
                    tags=tags,
                )
            )
        except ValueError:
            raise ImageError(f"{path}: damaged metadata of segment {index}") from None
    if not segments:  # a plain label map saved as .seg.nrrd: one segment per value
        segments = [Segment(id=f"Segment_{v}", name=str(v), label_value=int(v)) for v in np.unique(array[0]) if v != 0]
    return Segmentation(layers=array, geometry=Geometry.of(image), segments=segments)


def _as_label_array(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Integer label values, or an ImageError for fractional values."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
        raise ImageError(f"{path}: not a label map (it holds non-integer values)")
    top = float(np.abs(array).max()) if array.size else 0.0
    return array.astype(np.uint8 if array.min() >= 0 and top <= 255 else np.int32)


def read_labels(path: str | Path, task: Task | None = None) -> tuple[np.ndarray, Geometry]:
    """A label map ``(z, y, x)`` in label values: any label image, or a ``.seg.nrrd`` whose segments are matched to
    the task's classes by their CLDL class tag or name."""
    if lower_name(path).endswith(SEG_SUFFIX):
        segmentation = read_segmentation(path)
        return segmentation.to_labels(task, path), segmentation.geometry
    array, geometry = read_image(path)
    return _as_label_array(path, array), geometry


def write_segmentation(labels: np.ndarray, geometry: Geometry, path: str | Path, task: Task) -> Path:
    """Write a label map (task label values) as a Slicer ``.seg.nrrd``: one segment per class of the task, with
    the task's names, colours and a ``CLDL.Class`` tag, voxel values = the task's label values."""
    path = Path(path)
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {labels.shape} does not match the geometry {geometry.shape}")
    stray = sorted(set(np.unique(labels).tolist()) - set(task.label_values))
    if stray:
        raise ValueError(f"label values {stray} are not part of task {task.name!r}")
    dtype = np.uint8 if max(task.label_values) <= 255 else np.int16
    ensure_writable(path)
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(dtype, copy=False))))
    names = segment_names(task)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for number, index in enumerate(range(1, task.num_classes)):
        value = task.label_values[index]
        abbreviation = task.abbreviations[index] if index < len(task.abbreviations) else f"Class{index}"
        mask = labels == value
        extent = "0 -1 0 -1 0 -1"
        if mask.any():
            ranges = []
            for axis in (2, 1, 0):  # x, y, z
                hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                ranges += [str(int(hits[0])), str(int(hits[-1]))]
            extent = " ".join(ranges)
        prefix = f"Segment{number}_"
        image.SetMetaData(prefix + "ID", abbreviation)
        image.SetMetaData(prefix + "Name", names[index])
        image.SetMetaData(prefix + "NameAutoGenerated", "0")
        image.SetMetaData(prefix + "Color", " ".join(f"{c:.6g}" for c in task.colors[index]))
        image.SetMetaData(prefix + "ColorAutoGenerated", "0")
        image.SetMetaData(prefix + "LabelValue", str(value))
        image.SetMetaData(prefix + "Layer", "0")
        image.SetMetaData(prefix + "Extent", extent)
        image.SetMetaData(prefix + "Tags", f"{CLASS_TAG}:{abbreviation}|Segmentation.Status:completed|")
    with image_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
        copy_nrrd_space(geometry, tmp)
    return path


def write_labels(labels: np.ndarray, geometry: Geometry, path: str | Path, task: Task | None = None) -> Path:
    """Write a label map: a ``.seg.nrrd`` with segment names and colours (needs the task), else a label image."""
    if lower_name(path).endswith(SEG_SUFFIX):
        if task is None:
            raise ValueError(f"{path}: writing a .seg.nrrd needs the task (segment names and colours)")
        return write_segmentation(labels, geometry, path, task)
    return write_image(labels, geometry, path)

"""Reading one case: its images on one grid, checked for mix-ups (one file given twice, a label map given as an image,
two channels of the same contrast), and its label map in task values; :func:`load_case` also preprocesses it.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..files.geometry import Geometry, labels_on_grid
from ..files.images import SEG_SUFFIX, ImageError, read_channels, strip_image_suffix
from ..files.label_maps import read_labels
from ..tasks import Task, modality_aliases
from .layouts import CaseFiles
from .preprocess import InputError, PreprocessConfig, Preprocessed, align, preprocess, stack_channels

LABEL_LIKE_VALUES = 12  # an image with at most this many distinct integer values looks like a label map
SAME_CONTRAST_CORRELATION = 0.99  # two modalities correlated above this look like the same contrast
MIXUP_SAMPLE = 1 << 20  # voxels per channel the mix-up checks look at


def modality_from_name(path: str | Path, task: Task) -> str | None:
    """The task modality a file name ends with (``..._t1ce.nii.gz``, ``...-t1c.nrrd``, ``T2.mha``), or None."""
    stem = strip_image_suffix(Path(path).name)
    token = re.split(r"[_\-. ]", stem)[-1].lower()
    return modality_aliases(task.modalities).get(token)


def check_modality_order(paths: list[str | Path], task: Task) -> None:
    """Refuse one file given for two modalities, and images given in another order than the task's when their
    file names say so."""
    check_distinct_files(paths, task.modalities)
    if len(paths) != task.num_modalities or task.num_modalities < 2:
        return
    named = [modality_from_name(p, task) for p in paths]
    if None in named or sorted(named) != sorted(task.modalities) or named == list(task.modalities):
        return
    given = ", ".join(f"{Path(p).name} ({m})" for p, m in zip(paths, named))
    raise InputError(f"the images are in the wrong order: {given}; give them as {', '.join(task.modalities)}")


def check_distinct_files(paths: Sequence[str | Path], modalities: Sequence[str]) -> None:
    """Refuse the same file given for two modalities (by path, symbolic link or hard link)."""
    seen: dict[object, str] = {}
    for path, modality in zip(paths, modalities):
        try:
            stat = os.stat(path)
            key: object = (stat.st_dev, stat.st_ino)
        except OSError:  # missing: the read says so
            key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{path} is given for both {seen[key]} and {modality}; each modality needs its own image")
        seen[key] = modality


def mixup_problems(images: np.ndarray, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Signs of mixed-up inputs in ``images`` (C x z x y x): errors (two channels with identical voxels) and
    warnings (a channel that looks like a label map, two channels that look like the same contrast). Measured on
    a regular sample of at most ~1M voxels per channel."""
    errors, notes = [], []
    step = max(1, images[0].size // MIXUP_SAMPLE)
    samples = [np.ravel(channel)[::step].astype(np.float64) for channel in images]
    for sample, name in zip(samples, names):
        values = np.unique(sample)
        # (a constant channel is refused by image_problems, not reported here)
        if 2 <= values.size <= LABEL_LIKE_VALUES and np.array_equal(values, np.round(values)):
            listed = ", ".join(f"{v:g}" for v in values)
            notes.append(f"{name} looks like a label map (only the values {listed}), not an image")
    for i, j in itertools.combinations(range(len(samples)), 2):
        a, b = samples[i], samples[j]
        if np.array_equal(a, b) and np.array_equal(images[i], images[j]):
            errors.append(f"{names[i]} and {names[j]} hold identical voxels: the same image is given twice")
            continue
        inside = (a != 0) | (b != 0)
        if np.count_nonzero(inside) < 2 or a[inside].std() == 0 or b[inside].std() == 0:
            continue
        correlation = float(np.corrcoef(a[inside], b[inside])[0, 1])
        if correlation > SAME_CONTRAST_CORRELATION:
            notes.append(
                f"{names[i]} and {names[j]} look like the same contrast (voxel correlation {correlation:.3f}); "
                "is one image given twice?"
            )
    return errors, notes


def check_mixups(images: np.ndarray, names: Sequence[str]) -> None:
    """Refuse identical channels (InputError) and warn about channels that look mixed up (see mixup_problems)."""
    errors, notes = mixup_problems(images, names)
    if errors:
        raise InputError(errors[0])
    for note in notes:
        warnings.warn(note, stacklevel=2)


# --------------------------------------------------------------------------------------------------------------
# reading cases


def modality_arrays(case: CaseFiles, task: Task) -> tuple[list[np.ndarray], list[Geometry], list[str]]:
    """One float32 array per task modality with its geometry and a display name."""
    arrays, geometries, names = [], [], []
    if case.channels is not None:
        if len(case.images) != 1:
            raise InputError(f"case {case.case_id}: channels are given for {len(case.images)} files; expected one")
        data, geometry = read_channels(case.images[0], np.float32)
        if data.shape[0] <= max(case.channels) or data.shape[0] != task.num_modalities:
            raise InputError(
                f"case {case.case_id}: {case.images[0].name} has {data.shape[0]} channel(s); task {task.name} "
                f"needs {task.num_modalities} ({', '.join(task.modalities)})"
            )
        for index, modality in zip(case.channels, task.modalities):
            arrays.append(data[index])
            geometries.append(geometry)
            names.append(f"{modality} (channel {index} of {case.images[0].name})")
        return arrays, geometries, names
    if len(case.images) != task.num_modalities:
        raise InputError(
            f"case {case.case_id}: {len(case.images)} image(s) for task {task.name}, which needs "
            f"{task.num_modalities} ({', '.join(task.modalities)})"
        )
    try:
        check_distinct_files(case.images, task.modalities)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None
    for path, modality in zip(case.images, task.modalities):
        data, geometry = read_channels(path, np.float32)
        if data.shape[0] != 1:
            raise InputError(
                f"case {case.case_id}: {path.name} has {data.shape[0]} channels; expected one ({modality})"
            )
        arrays.append(data[0])
        geometries.append(geometry)
        names.append(f"{modality} ({path.name})")
    return arrays, geometries, names


def map_label_values(labels: np.ndarray, mapping: Iterable[tuple[int, int]]) -> np.ndarray:
    """Replace source label values by target values (all at once, so 1->2 and 2->1 swap correctly)."""
    mapping = dict(mapping)
    if not mapping:
        return labels
    values, inverse = np.unique(labels, return_inverse=True)
    mapped = np.array([mapping.get(int(v), int(v)) for v in values], dtype=np.int32)
    dtype = np.uint8 if mapped.size and mapped.min() >= 0 and mapped.max() <= 255 else np.int16
    return mapped.astype(dtype)[inverse.reshape(labels.shape)]


def mapped_label_values(case: CaseFiles, task: Task, raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Mapped label values and warnings about stray values (or an InputError for values outside the task)."""
    mapping = dict(case.label_map)
    values, counts = np.unique(raw, return_counts=True)
    notes = []
    for value, count in zip(values.tolist(), counts.tolist()):
        if value in mapping and case.unknown_labels == "background" and value not in task.label_values:
            notes.append(f"label value {value} ({count} voxels) read as {mapping[value]}")
    mapped = map_label_values(raw, mapping.items())
    stray = sorted(set(np.unique(mapped).tolist()) - set(task.label_values))
    if stray:
        if case.unknown_labels != "background":
            raise InputError(
                f"case {case.case_id}: label values {stray} are not part of task {task.name!r} "
                f"(expected {list(task.label_values)})"
            )
        counts_by_value = dict(zip(*np.unique(mapped, return_counts=True)))
        listed = ", ".join(f"{v} ({int(counts_by_value[v])} voxels)" for v in stray)
        notes.append(f"label values {listed} are not {task.name} labels; read as background")
    return mapped, notes


def read_case(
    case: CaseFiles, task: Task, image_kind: str = "mr"
) -> tuple[np.ndarray, Geometry, np.ndarray | None, list[str]]:
    """Images ``C x z x y x`` (float32, on the first modality's grid), their geometry, the label map in task values
    (or None) and notes on stray label values; modalities or labels on another grid are resampled with a warning."""
    arrays, geometries, names = modality_arrays(case, task)
    images, geometry = stack_channels(arrays, geometries, names, image_kind)
    try:
        check_mixups(images, names)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None
    labels, notes = None, []
    if case.label is not None:
        try:
            raw, label_geometry = read_labels(case.label, task)
        except ImageError as exc:
            raise InputError(f"case {case.case_id}: {exc}") from None
        placed = raw if label_geometry.matches(geometry) else None
        if placed is None and case.label.name.lower().endswith(SEG_SUFFIX):  # Slicer crops to the segments
            placed = labels_on_grid(raw, label_geometry, geometry)
        if placed is None:
            placed = align(raw, label_geometry, geometry, f"label map {case.label.name}", names[0], "nearest")
        raw = placed
        labels, notes = mapped_label_values(case, task, raw)
        for note in notes:
            warnings.warn(f"case {case.case_id}: {note}", stacklevel=2)
    return images, geometry, labels, notes


def load_case(case: CaseFiles, task: Task, config: PreprocessConfig) -> Preprocessed:
    """Read and preprocess one case; labels become class indices (uint8)."""
    images, geometry, labels, _ = read_case(case, task, config.image_kind)
    classes = None if labels is None else task.labels_to_classes(labels, unknown="background")
    try:
        return preprocess(images, config, task.modalities, classes, geometry=geometry)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None
